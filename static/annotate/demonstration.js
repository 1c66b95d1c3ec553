// The demonstration editor: live character and token counts, autosave with revisions and the conflict box,
// "start from a sampled response", time spent, and keys (Ctrl+Enter submit, Alt+1..9 start from, Alt+G guidelines).
(function () {
  "use strict";
  const SAVE_DELAY_MS = 800;
  // GPT-2's pre-tokenisation pattern: words, numbers, punctuation runs and spaces. A BPE tokenizer splits text
  // into at least these pieces, so the count is an estimate from below (exact counts need the model's tokenizer).
  const PIECES = /'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

  function tokenEstimate(text) {
    const found = text.match(PIECES);
    return found ? found.length : 0;
  }

  function csrf(form) {
    const input = form.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function init(root) {
    const config = JSON.parse(document.getElementById("demo-config").textContent);
    const form = root.querySelector("[data-demo-form]");
    if (!form) return;
    const area = root.querySelector("[data-demo-text]");
    const counts = root.querySelector("[data-counts]");
    const status = root.querySelector("[data-draft-status]");
    const seconds = root.querySelector("[data-seconds]");
    const conflictBox = root.querySelector("[data-conflict]");
    let revision = config.revision;
    let startedFrom = config.started_from;
    let dirty = false;
    let saving = false;
    let conflict = null;
    let timer = null;
    let spent = Number(config.seconds_spent) || 0;
    let since = document.visibilityState === "visible" ? Date.now() : null;
    let submitting = false;

    function elapsed() {
      const now = Date.now();
      if (since !== null) { spent += (now - since) / 1000; since = now; }
      return Math.round(spent * 10) / 10;
    }

    function showCounts() {
      const text = area.value;
      const chars = [...text].length;
      const tokens = tokenEstimate(text);
      counts.textContent = chars + " character" + (chars === 1 ? "" : "s") + " · ≈ " + tokens + " token" + (tokens === 1 ? "" : "s") +
        (chars > config.max_chars * 0.9 ? " (limit " + config.max_chars + ")" : "");
    }

    function say(text) { status.textContent = text; }

    function schedule() {
      dirty = true;
      say("Unsaved changes…");
      clearTimeout(timer);
      timer = setTimeout(save, SAVE_DELAY_MS);
    }

    async function save() {
      if (!dirty || saving || conflict || submitting) return;
      saving = true;
      dirty = false;
      const body = { revision: revision, text: area.value, started_from: startedFrom, seconds_spent: elapsed() };
      try {
        const response = await fetch(config.urls.draft, {
          method: "POST", credentials: "same-origin", keepalive: true, // survives the page being closed
          headers: { "Content-Type": "application/json", "X-CSRFToken": csrf(form), Accept: "application/json" },
          body: JSON.stringify(body),
        });
        const data = await response.json().catch(() => ({}));
        if (response.ok) {
          revision = data.revision;
          say(dirty ? "Unsaved changes…" : "Draft saved " + new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) + ".");
        } else if (response.status === 409 && data.code === "stale_draft") {
          dirty = true;
          showConflict(data);
        } else if (response.status === 409) {
          say(data.message || "This task can no longer be saved.");
        } else if (response.status === 400) {
          dirty = true;
          say("Not saved: " + Object.entries(data.errors || {}).map(([k, v]) => k + ": " + v.join(" ")).join("; "));
        } else {
          throw new Error("HTTP " + response.status);
        }
      } catch (err) {
        dirty = true;
        say("Not saved (offline?). Retrying…");
        clearTimeout(timer);
        timer = setTimeout(save, 5000);
      } finally {
        saving = false;
        if (dirty && !conflict && !timer) timer = setTimeout(save, SAVE_DELAY_MS);
      }
    }

    function showConflict(data) {
      conflict = data.draft;
      conflictBox.querySelector("[data-conflict-message]").textContent = data.message;
      conflictBox.querySelector("[data-conflict-text]").textContent = conflict.text;
      conflictBox.hidden = false;
      say("Not saved: changed elsewhere.");
      conflictBox.querySelector("[data-conflict-load]").focus();
    }

    function closeConflict() {
      conflict = null;
      conflictBox.hidden = true;
    }

    conflictBox.querySelector("[data-conflict-load]").addEventListener("click", () => {
      area.value = conflict.text;
      revision = conflict.revision;
      dirty = false;
      closeConflict();
      showCounts();
      say("Loaded the other version.");
      area.focus();
    });
    conflictBox.querySelector("[data-conflict-keep]").addEventListener("click", () => {
      revision = conflict.revision; // an explicit, informed overwrite
      closeConflict();
      dirty = true;
      save();
      area.focus();
    });

    function startFrom(id) {
      const text = config.responses[String(id)];
      if (text === undefined) return;
      area.focus();
      area.select();
      // insertText keeps the browser's undo history (Ctrl+Z brings the old text back).
      if (!document.execCommand || !document.execCommand("insertText", false, text)) area.value = text;
      startedFrom = Number(id);
      showCounts();
      schedule();
    }

    root.querySelectorAll("[data-start-from]").forEach((button) => {
      button.addEventListener("click", () => startFrom(button.dataset.startFrom));
    });
    area.addEventListener("input", () => { showCounts(); schedule(); });
    form.addEventListener("submit", () => {
      submitting = true;
      clearTimeout(timer);
      seconds.value = elapsed();
    });
    document.addEventListener("keydown", (event) => {
      if ((event.ctrlKey || event.metaKey) && event.key === "Enter") {
        event.preventDefault();
        form.requestSubmit();
      } else if (event.altKey && /^[1-9]$/.test(event.key)) {
        const button = root.querySelectorAll("[data-start-from]")[Number(event.key) - 1];
        if (button) { event.preventDefault(); startFrom(button.dataset.startFrom); }
      } else if (event.altKey && (event.key === "g" || event.key === "G")) {
        event.preventDefault();
        document.getElementById("guidelines").showModal();
      }
    });
    const link = root.querySelector("[data-open-guidelines]");
    if (link) link.addEventListener("click", (e) => { e.preventDefault(); document.getElementById("guidelines").showModal(); });
    // Leaving the page (reload, close, navigate): send what is not saved yet.
    window.addEventListener("pagehide", () => { if (dirty) { clearTimeout(timer); save(); } });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") { since = Date.now(); } else { elapsed(); since = null; save(); }
    });
    showCounts();
  }

  document.addEventListener("DOMContentLoaded", () => {
    const root = document.querySelector("[data-demo-task]");
    if (root) init(root);
  });
})();
