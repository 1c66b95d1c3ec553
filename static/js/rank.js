/* The ranking page: response cards start "not ranked yet" and are placed into tiers (best first) by dragging
 * (SortableJS) or by keyboard, rated 1–7 and flagged, autosaved as a server-side draft, submitted with htmx.
 *
 * State of one task: {tiers: [[id, …], …], unplaced: [id, …], ratings: {id: 1..7}, flags: {id: [key, …]},
 * rationale, all_bad, seconds_spent}. The tiers hold the placed responses; the unplaced ones are every other
 * displayed response, in display order (a draft stores the tiers only; the server derives the rest the same
 * way). A submit needs every response placed (ties allowed). The DOM is rebuilt from the state after every
 * change, reusing the card elements.
 */
(function () {
  "use strict";

  const SAVE_DELAY_MS = 700;
  const RETRY_MS = 5000;
  let current = null; // the RankTask on the page (one at a time)
  let lastSubmitted = null; // {reopenUrl, historyUrl, prompt, leaseUntil} of the task whose submit is in flight

  // Back after a submit must never show the submitted task as an editable copy: the ranking page keeps no
  // htmx history snapshot (hx-history="false" on #task), so going back is a history miss, which reloads the
  // page from the server (no-store), which then says "already submitted" and offers "Edit" or "Next".
  if (window.htmx) window.htmx.config.refreshOnHistoryMiss = true;
  window.addEventListener("pageshow", (e) => {
    if (e.persisted && document.querySelector("[data-rank-task]")) window.location.reload();
  });

  function storageGet(key) {
    try { return window.localStorage.getItem(key); } catch (err) { return null; }
  }

  function storageSet(key, value) {
    try { window.localStorage.setItem(key, value); } catch (err) { /* storage unavailable */ }
  }

  function csrfToken(root) {
    const input = root.querySelector("input[name=csrfmiddlewaretoken]");
    if (input) return input.value;
    try {
      return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"] || "";
    } catch (e) {
      return "";
    }
  }

  function ordinal(n) {
    const s = ["th", "st", "nd", "rd"], v = n % 100;
    return n + (s[(v - 20) % 10] || s[v] || s[0]);
  }

  class RankTask {
    constructor(el) {
      this.el = el;
      const config = JSON.parse(el.querySelector("script[type='application/json']").textContent);
      this.config = config;
      this.displayOrder = config.display_order;
      this.labels = config.labels;
      this.revision = config.revision;
      this.state = this.normalise(config.state);
      this.baseSeconds = Number(this.state.seconds_spent) || 0;
      this.activeMs = 0;
      this.activeSince = document.visibilityState === "visible" ? Date.now() : null;
      this.ranker = el.querySelector("[data-ranker]");
      this.list = el.querySelector("[data-tier-list]");
      this.unplacedSection = el.querySelector("[data-unplaced-section]");
      this.unplacedZone = el.querySelector("[data-drop=unplaced]");
      this.unplacedCount = el.querySelector("[data-unplaced-count]");
      this.placeHint = el.querySelector("[data-place-hint]");
      this.submitStatus = el.querySelector(".rank-form + .submit-status");
      this.form = el.querySelector("form.rank-form");
      this.statusEl = el.querySelector("[data-draft-status]");
      this.cards = new Map();
      el.querySelectorAll(".resp-card").forEach((card) => this.cards.set(Number(card.dataset.responseId), card));
      this.sortables = [];
      this.saveTimer = null;
      this.saving = false;
      this.dirty = false;
      this.conflict = null;
      this.submitting = false;
      this.bind();
      this.render();
      // The keys panel is closed unless the annotator left it open (one key away: "?").
      const shortcuts = el.querySelector("[data-shortcuts]");
      if (shortcuts) {
        shortcuts.open = storageGet("rank.shortcuts") === "open";
        shortcuts.addEventListener("toggle", () => storageSet("rank.shortcuts", shortcuts.open ? "open" : "closed"));
      }
      // Ratings and flags can be hidden for annotators who only rank (the keys 1–7 still rate).
      const extras = el.querySelector("[data-toggle-extras]");
      if (extras) {
        this.setExtras(storageGet("rank.extras") !== "hidden", extras);
        extras.addEventListener("click", () => {
          const shown = !this.ranker.classList.contains("no-extras");
          this.setExtras(!shown, extras);
          storageSet("rank.extras", shown ? "hidden" : "shown");
        });
      }
      el.querySelectorAll("time[data-lease-until]").forEach((t) => {
        t.textContent = new Date(t.getAttribute("datetime")).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      });
    }

    normalise(state) {
      const shown = new Set(this.displayOrder);
      const seen = new Set();
      let tiers = Array.isArray(state && state.tiers) ? state.tiers.filter(Array.isArray) : [];
      tiers = tiers.map((t) => t.filter((id) => shown.has(id) && !seen.has(id) && seen.add(id))).filter((t) => t.length);
      return {
        tiers: tiers,
        unplaced: this.displayOrder.filter((id) => !seen.has(id)),
        ratings: Object.assign({}, state && state.ratings),
        flags: Object.assign({}, state && state.flags),
        rationale: (state && state.rationale) || "",
        all_bad: Boolean(state && state.all_bad),
        seconds_spent: Number(state && state.seconds_spent) || 0,
      };
    }

    // --- wiring -------------------------------------------------------------------------------------------------

    bind() {
      this.ranker.addEventListener("keydown", (e) => this.onKey(e));
      this.ranker.addEventListener("click", (e) => {
        const button = e.target.closest("button[data-move]");
        if (button) {
          const id = Number(button.closest(".resp-card").dataset.responseId);
          this.move(id, button.dataset.move, true);
        }
        const toggle = e.target.closest("button.toggle-long");
        if (toggle) this.toggleLong(toggle.closest(".resp-card"));
        const raw = e.target.closest("button.toggle-raw");
        if (raw) this.toggleRaw(raw.closest(".resp-card"));
      });
      this.ranker.addEventListener("change", (e) => {
        const card = e.target.closest(".resp-card");
        if (!card) return;
        const id = Number(card.dataset.responseId);
        if (e.target.matches("[data-rating]")) {
          this.setRating(id, Number(e.target.value), false);
        } else if (e.target.matches("[data-flag]")) {
          const keys = Array.from(card.querySelectorAll("[data-flag]:checked")).map((c) => c.value);
          if (keys.length) this.state.flags[id] = keys;
          else delete this.state.flags[id];
          this.updateCard(card);
          this.changed();
        }
      });
      const rationale = this.el.querySelector("[data-rationale]");
      if (rationale) rationale.addEventListener("input", () => { this.state.rationale = rationale.value; this.changed(); });
      const allBad = this.el.querySelector("[data-all-bad]");
      if (allBad) allBad.addEventListener("change", () => {
        this.state.all_bad = allBad.checked;
        this.changed();
        this.announce(allBad.checked ? "Marked: all responses are bad." : "Unmarked: all responses are bad.");
      });
      const load = this.el.querySelector("[data-conflict-load]");
      const keep = this.el.querySelector("[data-conflict-keep]");
      if (load) load.addEventListener("click", () => this.resolveConflict(true));
      if (keep) keep.addEventListener("click", () => this.resolveConflict(false));

      if (this.form) {
        this.form.addEventListener("htmx:confirm", (e) => this.confirmSubmit(e));
        this.form.addEventListener("htmx:configRequest", (e) => {
          e.detail.parameters.payload = JSON.stringify(this.payload());
        });
        this.form.addEventListener("htmx:beforeRequest", () => {
          this.submitting = true;
          clearTimeout(this.saveTimer);
          const lease = this.el.querySelector("time[data-lease-until]");
          lastSubmitted = {
            reopenUrl: this.el.dataset.reopenUrl,
            historyUrl: this.el.dataset.historyUrl,
            prompt: this.el.dataset.prompt,
            leaseUntil: lease ? new Date(lease.getAttribute("datetime")) : null,
          };
        });
        this.form.addEventListener("htmx:afterRequest", () => { this.submitting = false; });
      }
    }

    // --- rendering ------------------------------------------------------------------------------------------------

    render(focusId) {
      this.sortables.forEach((s) => s.destroy());
      this.sortables = [];
      const items = [];
      const gap = () => {
        const li = document.createElement("li");
        li.className = "tier-gap";
        li.setAttribute("aria-hidden", "true");
        const zone = document.createElement("div");
        zone.className = "tier-cards";
        zone.dataset.drop = "gap";
        li.appendChild(zone);
        return li;
      };
      const total = this.state.tiers.length;
      this.state.tiers.forEach((tier, index) => {
        items.push(gap());
        const li = document.createElement("li");
        li.className = "tier" + (tier.length > 1 ? " tied" : "");
        const rankText = tier.length > 1 ? `Rank ${index + 1}, a tie of ${tier.length}` : `Rank ${index + 1}`;
        li.setAttribute("aria-label", rankText);
        const head = document.createElement("div");
        head.className = "tier-head";
        head.innerHTML = `<span class="tier-rank">${index + 1}</span>` + (tier.length > 1 ? '<span class="tie-mark">tie</span>' : "");
        const zone = document.createElement("div");
        zone.className = "tier-cards";
        zone.dataset.drop = "tier";
        tier.forEach((id) => {
          const card = this.cards.get(id);
          card.dataset.tier = String(index);
          const badge = card.querySelector("[data-rank-badge]");
          badge.textContent = tier.length > 1 ? `${ordinal(index + 1)}, tied` : ordinal(index + 1);
          zone.appendChild(card);
          this.updateCard(card, index, total, tier.length);
        });
        li.appendChild(head);
        li.appendChild(zone);
        items.push(li);
      });
      items.push(gap());
      this.list.replaceChildren(...items);
      this.list.classList.toggle("empty", total === 0);
      const unplaced = this.state.unplaced.map((id) => this.cards.get(id));
      unplaced.forEach((card) => {
        delete card.dataset.tier;
        card.querySelector("[data-rank-badge]").textContent = "";
      });
      if (this.unplacedZone) this.unplacedZone.replaceChildren(...unplaced);
      unplaced.forEach((card) => this.updateCard(card));
      if (this.unplacedSection) this.unplacedSection.hidden = unplaced.length === 0;
      if (this.unplacedCount) this.unplacedCount.textContent = String(unplaced.length);
      this.updatePlaceHint();
      if (window.Sortable) {
        this.ranker.querySelectorAll(".tier-cards").forEach((zone) => {
          this.sortables.push(new window.Sortable(zone, {
            group: "rank-cards-" + this.config.assignment,
            draggable: ".resp-card",
            handle: ".drag-handle",
            forceFallback: true,
            fallbackOnBody: true,
            animation: 120,
            emptyInsertThreshold: 24,
            onStart: () => document.body.classList.add("rank-dragging"),
            onEnd: (evt) => {
              document.body.classList.remove("rank-dragging");
              const id = Number(evt.item.dataset.responseId);
              this.readDom();
              this.render(id);
              this.changed();
              this.announcePosition(id);
            },
          }));
        });
      }
      if (focusId !== undefined) {
        const card = this.cards.get(focusId);
        if (card) card.focus();
      }
    }

    updateCard(card, index, total, size) {
      const id = Number(card.dataset.responseId);
      const label = this.labels[id] || "";
      if (index === undefined) {
        const pos = this.locate(id);
        index = pos[0];
        total = this.state.tiers.length;
        size = index >= 0 ? this.state.tiers[index].length : 0;
      }
      const placed = index >= 0;
      card.classList.toggle("placed", placed);
      card.classList.toggle("unplaced", !placed);
      const rating = this.state.ratings[id];
      const flags = this.state.flags[id] || [];
      const where = !placed ? "not ranked yet" : size > 1 ? `rank ${index + 1} of ${total}, tied` : `rank ${index + 1} of ${total}`;
      const parts = [`Response ${label}`, where];
      if (rating) parts.push(`rated ${rating} of 7`);
      if (flags.length) parts.push(`${flags.length} flag${flags.length > 1 ? "s" : ""}`);
      card.setAttribute("aria-label", parts.join(", "));
      const count = card.querySelector("[data-flag-count]");
      if (count) count.textContent = flags.length ? `(${flags.length})` : "";
      card.querySelectorAll("[data-rating]").forEach((r) => { r.checked = Number(r.value) === rating; });
      card.querySelectorAll("[data-flag]").forEach((c) => { c.checked = flags.includes(c.value); });
      const up = card.querySelector("[data-move=up]");
      const down = card.querySelector("[data-move=down]");
      const tie = card.querySelector("[data-move=tie]");
      const untie = card.querySelector("[data-move=untie]");
      if (up) up.disabled = index === 0 && size === 1;
      if (down) down.disabled = index === total - 1 && size === 1;
      if (tie) {
        tie.disabled = placed ? index === 0 : total === 0;
        tie.title = placed ? "Tie with the rank above (T)" : "Add it to the last rank, as a tie (T)";
        tie.setAttribute("aria-label", placed ? `Tie response ${label} with the rank above`
          : `Add response ${label} to the last rank, as a tie`);
      }
      if (untie) untie.disabled = size <= 1;
    }

    updatePlaceHint() {
      if (!this.placeHint) return;
      const left = this.state.unplaced.length;
      const all = this.displayOrder.length;
      this.placeHint.textContent = left
        ? `${left} of ${all} response${all > 1 ? "s" : ""} still to place.`
        : `All ${all} placed.`;
      this.placeHint.classList.toggle("ready", left === 0);
      if (!left && this.submitStatus && this.submitStatus.querySelector("[data-unplaced-problem]")) {
        this.submitStatus.textContent = "";
      }
    }

    setExtras(shown, button) {
      this.ranker.classList.toggle("no-extras", !shown);
      button.textContent = shown ? "Hide ratings" : "Show ratings";
      button.setAttribute("aria-pressed", String(!shown));
    }

    readDom() {
      const tiers = [];
      this.list.querySelectorAll(":scope > li > .tier-cards").forEach((zone) => {
        const ids = Array.from(zone.querySelectorAll(":scope > .resp-card")).map((c) => Number(c.dataset.responseId));
        if (ids.length) tiers.push(ids);
      });
      this.state.tiers = tiers;
      const placed = new Set(tiers.flat());
      // Unplaced cards keep the display order whatever order they were dropped back in.
      this.state.unplaced = this.displayOrder.filter((id) => !placed.has(id));
    }

    visualOrder() {
      return this.state.unplaced.concat(this.state.tiers.flat());
    }

    // --- moves ---------------------------------------------------------------------------------------------------------

    locate(id) {
      for (let t = 0; t < this.state.tiers.length; t++) {
        const i = this.state.tiers[t].indexOf(id);
        if (i >= 0) return [t, i];
      }
      return [-1, -1];
    }

    move(id, how, fromButton) {
      const tiers = this.state.tiers;
      const [t] = this.locate(id);
      const label = this.labels[id];
      if (t < 0) return this.moveUnplaced(id, how, fromButton);
      if (how === "place") return;
      if (how === "unplace") {
        tiers[t] = tiers[t].filter((x) => x !== id);
        if (!tiers[t].length) tiers.splice(t, 1);
        this.state.unplaced = this.displayOrder.filter((x) => x === id || this.state.unplaced.includes(x));
        this.render();
        const next = this.cards.get(id);
        if (next) next.focus();
        this.changed();
        return this.announce(`Response ${label} is not ranked any more.`);
      }
      const alone = tiers[t].length === 1;
      const take = () => { tiers[t] = tiers[t].filter((x) => x !== id); };
      if (how === "up") {
        if (!alone) { take(); tiers.splice(t, 0, [id]); }
        else if (t > 0) { [tiers[t - 1], tiers[t]] = [tiers[t], tiers[t - 1]]; }
        else return this.announce(`Response ${label} is already at the top.`);
      } else if (how === "down") {
        if (!alone) { take(); tiers.splice(t + 1, 0, [id]); }
        else if (t < tiers.length - 1) { [tiers[t], tiers[t + 1]] = [tiers[t + 1], tiers[t]]; }
        else return this.announce(`Response ${label} is already at the bottom.`);
      } else if (how === "tie") {
        if (t === 0) return this.announce(`Response ${label} is in the top rank: there is nothing above to tie with.`);
        take();
        tiers[t - 1].push(id);
        if (!tiers[t].length) tiers.splice(t, 1);
      } else if (how === "untie") {
        if (alone) return this.announce(`Response ${label} is not tied.`);
        take();
        tiers.splice(t + 1, 0, [id]);
      } else {
        return;
      }
      this.render(fromButton ? undefined : id);
      if (fromButton) {
        const button = this.cards.get(id).querySelector(`[data-move=${how}]`);
        (button && !button.disabled ? button : this.cards.get(id)).focus();
      }
      this.changed();
      this.announcePosition(id);
    }

    moveUnplaced(id, how, fromButton) {
      const tiers = this.state.tiers;
      const label = this.labels[id];
      if (how === "down") return this.announce(`Response ${label} is not ranked yet: press K to add it to the ranking.`);
      if (how === "untie" || how === "unplace") return this.announce(`Response ${label} is not ranked yet.`);
      if (how !== "up" && how !== "place" && how !== "tie") return;
      const following = this.state.unplaced[this.state.unplaced.indexOf(id) + 1];
      this.state.unplaced = this.state.unplaced.filter((x) => x !== id);
      if (how === "tie" && tiers.length) tiers[tiers.length - 1].push(id);
      else tiers.push([id]);
      this.render();
      // Placing goes on with the next card still to place (so that K K K … ranks them in reading order);
      // when none is left the focus stays with the card.
      const nextId = following !== undefined ? following : this.state.unplaced[0];
      const target = this.cards.get(nextId !== undefined ? nextId : id);
      if (fromButton && nextId === undefined) {
        const button = this.cards.get(id).querySelector("[data-move=up]");
        (button && !button.disabled ? button : this.cards.get(id)).focus();
      } else {
        target.focus();
      }
      this.changed();
      this.announcePosition(id);
    }

    announcePosition(id) {
      const [t] = this.locate(id);
      if (t < 0) return this.announce(`Response ${this.labels[id]}: not ranked yet.`);
      const tier = this.state.tiers[t];
      const label = this.labels[id];
      const left = this.state.unplaced.length;
      const rest = left ? ` ${left} still to place.` : "";
      if (tier.length > 1) {
        const others = tier.filter((x) => x !== id).map((x) => this.labels[x]).join(", ");
        this.announce(`Response ${label}: rank ${t + 1} of ${this.state.tiers.length}, tied with ${others}.${rest}`);
      } else {
        this.announce(`Response ${label}: rank ${t + 1} of ${this.state.tiers.length}.${rest}`);
      }
    }

    setRating(id, value, fromKey) {
      if (value >= 1 && value <= 7) this.state.ratings[id] = value;
      else delete this.state.ratings[id];
      const card = this.cards.get(id);
      this.updateCard(card);
      this.changed();
      const label = this.labels[id];
      if (fromKey) this.announce(value ? `Response ${label} rated ${value} of 7.` : `Rating of response ${label} cleared.`);
    }

    toggleLong(card) {
      const bodies = card.querySelectorAll(".resp-body.collapsible");
      const button = card.querySelector("button.toggle-long");
      if (!bodies.length || !button) return;
      const collapsed = !bodies[0].classList.contains("collapsed");
      bodies.forEach((b) => b.classList.toggle("collapsed", collapsed));
      button.setAttribute("aria-expanded", String(!collapsed));
      button.textContent = collapsed ? "Show the full response" : "Show less";
    }

    toggleRaw(card) {
      const rendered = card.querySelector("[data-body=rendered]");
      const raw = card.querySelector("[data-body=raw]");
      const button = card.querySelector("button.toggle-raw");
      if (!rendered || !raw || !button) return;
      const showRaw = raw.hidden;
      raw.hidden = !showRaw;
      rendered.hidden = showRaw;
      button.setAttribute("aria-pressed", String(showRaw));
      button.textContent = showRaw ? "Show formatted" : "Show raw";
      this.announce(`Response ${this.labels[card.dataset.responseId]}: ${showRaw ? "raw text" : "formatted text"}.`);
    }

    // --- keyboard ---------------------------------------------------------------------------------------------------------

    onKey(e) {
      const card = e.target.closest(".resp-card");
      if (!card || e.ctrlKey || e.metaKey) return;
      // On the card itself every shortcut works; on a control inside it (a rating, a flag, a button) the
      // letter and digit shortcuts work too, but arrows, Home and End keep their native meaning.
      const onCard = e.target === card;
      const onControl = e.target.matches("input[type=radio], input[type=checkbox], button, summary");
      if (!onCard && !onControl) return;
      const id = Number(card.dataset.responseId);
      const order = this.visualOrder();
      const index = order.indexOf(id);
      const key = e.key;
      let handled = true;
      if (e.altKey && key === "ArrowUp") this.move(id, "up");
      else if (e.altKey && key === "ArrowDown") this.move(id, "down");
      else if (e.altKey) handled = false;
      else if (!onCard && ["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "Home", "End", " ", "Enter"].includes(key)) {
        handled = false;
      }
      else if (key === "ArrowUp") this.focusCard(order[Math.max(0, index - 1)]);
      else if (key === "ArrowDown") this.focusCard(order[Math.min(order.length - 1, index + 1)]);
      else if (key === "Home") this.focusCard(order[0]);
      else if (key === "End") this.focusCard(order[order.length - 1]);
      else if (key === "k" || key === "K") this.move(id, "up");
      else if (key === "j" || key === "J") this.move(id, "down");
      else if (key === "t" || key === "T") this.move(id, "tie");
      else if (key === "u" || key === "U") this.move(id, "untie");
      else if (key === "x" || key === "X" || (onCard && (key === "Delete" || key === "Backspace"))) this.move(id, "unplace");
      else if (key === "e" || key === "E") this.toggleLong(card);
      else if (key === "r" || key === "R") this.toggleRaw(card);
      else if (/^[1-7]$/.test(key)) this.setRating(id, Number(key), true);
      else if (key === "0") this.setRating(id, 0, true);
      else handled = false;
      if (handled) e.preventDefault();
    }

    focusCard(id) {
      const card = this.cards.get(id);
      if (card) card.focus();
    }

    // --- drafts ---------------------------------------------------------------------------------------------------------------

    seconds() {
      const running = this.activeSince === null ? 0 : Date.now() - this.activeSince;
      return Math.round((this.baseSeconds + (this.activeMs + running) / 1000) * 10) / 10;
    }

    visibility(visible) {
      if (visible && this.activeSince === null) this.activeSince = Date.now();
      if (!visible && this.activeSince !== null) {
        this.activeMs += Date.now() - this.activeSince;
        this.activeSince = null;
        if (this.dirty) this.save(true);
      }
    }

    draftState() {
      return {
        tiers: this.state.tiers,
        ratings: this.state.ratings,
        flags: this.state.flags,
        rationale: this.state.rationale,
        all_bad: this.state.all_bad,
        seconds_spent: this.seconds(),
      };
    }

    payload() {
      return this.draftState();
    }

    changed() {
      this.dirty = true;
      this.setStatus("Unsaved changes…");
      clearTimeout(this.saveTimer);
      this.saveTimer = setTimeout(() => this.save(false), SAVE_DELAY_MS);
    }

    setStatus(text) {
      if (this.statusEl) this.statusEl.textContent = text;
    }

    attached() {
      return document.body.contains(this.el);
    }

    async save(keepalive) {
      if (!this.dirty || this.conflict || this.submitting || !this.attached()) return;
      if (this.saving) { this.saveAgain = true; return; }
      this.saving = true;
      this.dirty = false;
      const body = JSON.stringify({ revision: this.revision, state: this.draftState() });
      try {
        const response = await fetch(this.config.urls.draft, {
          method: "POST",
          credentials: "same-origin",
          keepalive: Boolean(keepalive) && body.length < 60000,
          headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken(this.el), Accept: "application/json" },
          body: body,
        });
        const isJson = (response.headers.get("Content-Type") || "").includes("application/json");
        if (response.redirected || !isJson) {
          // The session ended (the login page answered): keep the changes here and try again later.
          this.dirty = true;
          this.setStatus("Not saved: you seem to be logged out. Log in again in another tab; your changes are kept here.");
          clearTimeout(this.saveTimer);
          this.saveTimer = setTimeout(() => this.save(false), RETRY_MS * 3);
          return;
        }
        const data = await response.json().catch(() => ({}));
        if (response.ok) {
          this.revision = data.revision;
          const time = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
          this.setStatus(data.lease_live === false
            ? `Draft saved ${time}. Your reservation ran out: submitting still works unless others took this prompt.`
            : `Draft saved ${time}.`);
        } else if (response.status === 409 && data.code === "stale_draft") {
          this.showConflict(data);
        } else if (response.status === 409) {
          this.setStatus(data.message || "This task is finished; nothing more to save.");
        } else if (response.status === 400) {
          const messages = Object.entries(data.errors || {}).map(([k, v]) => `${k}: ${[].concat(v).join(" ")}`);
          this.setStatus("Draft not saved: " + (messages.join("; ") || "invalid"));
        } else {
          throw new Error("HTTP " + response.status);
        }
      } catch (err) {
        this.dirty = true;
        this.setStatus("Could not save the draft (offline?). Retrying…");
        clearTimeout(this.saveTimer);
        this.saveTimer = setTimeout(() => this.save(false), RETRY_MS);
      } finally {
        this.saving = false;
        if (this.saveAgain) {
          this.saveAgain = false;
          this.save(false);
        }
      }
    }

    showConflict(data) {
      this.conflict = data.draft;
      const box = this.el.querySelector("[data-conflict]");
      box.querySelector("[data-conflict-message]").textContent = data.message;
      box.hidden = false;
      this.setStatus("Not saved: this task changed elsewhere.");
      this.announce(data.message);
    }

    resolveConflict(loadTheirs) {
      const other = this.conflict;
      if (!other) return;
      this.conflict = null;
      this.el.querySelector("[data-conflict]").hidden = true;
      this.revision = other.revision;
      if (loadTheirs && other.state) {
        this.state = this.normalise(other.state);
        this.baseSeconds = this.state.seconds_spent;
        this.activeMs = 0;
        if (this.activeSince !== null) this.activeSince = Date.now();
        const rationale = this.el.querySelector("[data-rationale]");
        if (rationale) rationale.value = this.state.rationale;
        const allBad = this.el.querySelector("[data-all-bad]");
        if (allBad) allBad.checked = this.state.all_bad;
        this.render();
        this.dirty = false;
        this.setStatus("Loaded the version saved elsewhere.");
        this.announce("Loaded the version saved elsewhere.");
      } else {
        this.dirty = true;
        this.save(false);
      }
    }

    // --- submit ---------------------------------------------------------------------------------------------------------------

    // A submit needs every response placed (ties allowed): until then it is refused here, saying how many
    // are left and which (the server refuses an incomplete ranking too).
    confirmSubmit(e) {
      if (e.detail.elt !== this.form) return;
      const left = this.state.unplaced;
      if (!left.length) return;
      e.preventDefault();
      const names = left.map((id) => this.labels[id]).join(", ");
      const message = `${left.length} response${left.length > 1 ? "s are" : " is"} not ranked yet (${names}): ` +
        "place every response before submitting (ties are allowed).";
      if (this.submitStatus) {
        this.submitStatus.textContent = "";
        const box = document.createElement("div");
        box.className = "problem";
        box.setAttribute("role", "alert");
        box.dataset.unplacedProblem = "";
        box.textContent = message;
        this.submitStatus.appendChild(box);
      }
      this.announce(message);
      const first = this.cards.get(left[0]);
      if (first) {
        first.focus({ preventScroll: true });
        first.scrollIntoView({ block: "center" });
      }
    }

    submit() {
      if (this.form && !this.submitting) this.form.requestSubmit();
    }

    announce(text) {
      const live = document.getElementById("rank-live");
      if (!live) return;
      live.textContent = "";
      window.setTimeout(() => { live.textContent = text; }, 30);
    }
  }

  // --- page-level wiring ------------------------------------------------------------------------------------------------------

  function loginPath() {
    const holder = document.querySelector("[data-login-url]");
    return holder ? holder.dataset.loginUrl : "/login/";
  }

  function openGuidelines() {
    const dialog = document.getElementById("guidelines-dialog");
    if (dialog && typeof dialog.showModal === "function") {
      if (!dialog.open) dialog.showModal();
      return true;
    }
    return false;
  }

  function init(root) {
    const scope = root && root.querySelectorAll ? root : document;
    const taskEl = scope.matches && scope.matches("[data-rank-task]") ? scope : scope.querySelector("[data-rank-task]");
    const doneEl = scope.matches && scope.matches("[data-rank-done]") ? scope : scope.querySelector("[data-rank-done]");
    if (taskEl && !taskEl.dataset.ready && taskEl.querySelector("[data-tier-list]")) {
      taskEl.dataset.ready = "1";
      current = new RankTask(taskEl);
      window.rankTask = current; // for debugging and tests
    } else if (doneEl) {
      current = null;
    }
    const arrived = taskEl || doneEl;
    if (arrived && arrived.dataset.flash && root !== document.body) {
      showSubmitted(arrived, arrived.dataset.flash);
      const heading = arrived.querySelector("h1");
      if (heading) heading.focus();
      const live = document.getElementById("rank-live");
      if (live) live.textContent = arrived.dataset.flash + (taskEl ? " Next prompt loaded." : "");
    }
  }

  // After a submit the next task swaps in: a banner at its top says that the ranking was taken, with "Undo"
  // (it reopens the ranking as a draft, server-side, while the lease lasts) and a link to one's rankings.
  function showSubmitted(arrived, flash) {
    const done = lastSubmitted;
    lastSubmitted = null;
    const banner = document.createElement("div");
    banner.className = "submitted-banner";
    banner.setAttribute("role", "status");
    banner.dataset.submittedBanner = "";
    const text = document.createElement("span");
    const submitted = /submitted/i.test(flash) && done;
    text.textContent = submitted ? `✓ ${flash.replace(/\.$/, "")} (prompt #${done.prompt}).` : flash;
    banner.appendChild(text);
    if (submitted && done.reopenUrl && (!done.leaseUntil || done.leaseUntil > new Date())) {
      const form = document.createElement("form");
      form.method = "post";
      form.action = done.reopenUrl;
      form.className = "inline";
      const token = document.createElement("input");
      token.type = "hidden";
      token.name = "csrfmiddlewaretoken";
      token.value = csrfToken(document);
      const undo = document.createElement("button");
      undo.type = "submit";
      undo.className = "link-button";
      undo.textContent = "Undo";
      undo.title = "Take this ranking back and change it";
      form.append(token, undo);
      banner.appendChild(form);
      if (done.leaseUntil) {
        const until = done.leaseUntil.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
        const note = document.createElement("span");
        note.className = "muted";
        note.textContent = `(until ${until})`;
        banner.appendChild(note);
        const ms = done.leaseUntil - new Date();
        if (ms < 2 ** 31) window.setTimeout(() => { form.remove(); note.textContent = "(final now)"; }, ms);
      }
    }
    if (done && done.historyUrl) {
      const link = document.createElement("a");
      link.href = done.historyUrl;
      link.textContent = "My rankings";
      banner.appendChild(link);
    }
    const close = document.createElement("button");
    close.type = "button";
    close.className = "link-button banner-close";
    close.setAttribute("aria-label", "Dismiss");
    close.textContent = "×";
    close.addEventListener("click", () => banner.remove());
    banner.appendChild(close);
    arrived.prepend(banner);
  }

  function toggleShortcuts() {
    const panel = current && current.attached() ? current.el.querySelector("[data-shortcuts]") : null;
    if (!panel) return false;
    panel.open = !panel.open;
    if (panel.open) panel.querySelector("summary").focus();
    return true;
  }

  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter" && current && current.attached()) {
      e.preventDefault();
      current.submit();
      return;
    }
    const typing = e.target.matches &&
      e.target.matches("textarea, select, [contenteditable], input:not([type=radio]):not([type=checkbox])");
    if (!typing && !e.ctrlKey && !e.metaKey && !e.altKey && (e.key === "g" || e.key === "G")) {
      if (openGuidelines()) e.preventDefault();
    }
    if (!typing && !e.ctrlKey && !e.metaKey && e.key === "?") {
      if (toggleShortcuts()) e.preventDefault();
    }
  });

  // A refused submit or skip (400/409 fragment in its status box): bring it into view, with the focus on it.
  document.addEventListener("htmx:afterSwap", (e) => {
    const target = e.detail.target;
    if (!target || !target.classList || !target.classList.contains("submit-status")) return;
    const problem = target.querySelector("[data-problem]");
    if (problem) {
      problem.scrollIntoView({ block: "center" });
      problem.focus({ preventScroll: true });
    }
  });

  document.addEventListener("click", (e) => {
    const link = e.target.closest("[data-open-guidelines]");
    if (link && openGuidelines()) e.preventDefault();
  });

  document.addEventListener("visibilitychange", () => {
    if (current) current.visibility(document.visibilityState === "visible");
  });
  window.addEventListener("pagehide", () => {
    if (current && current.dirty) current.save(true);
  });

  // Validation (400) and conflict (409) answers carry a message fragment: let htmx swap it in.
  // A login page instead of a fragment means the session ended: go there rather than swap it into the task.
  document.addEventListener("htmx:beforeSwap", (e) => {
    const url = e.detail.xhr.responseURL ? new URL(e.detail.xhr.responseURL) : null;
    if (url && e.detail.xhr.getResponseHeader("Content-Type")?.startsWith("text/html") && url.pathname === loginPath()) {
      e.detail.shouldSwap = false;
      window.location.assign(url.pathname + url.search);
      return;
    }
    const status = e.detail.xhr.status;
    if (status === 400 || status === 409) {
      e.detail.shouldSwap = true;
      e.detail.isError = false;
    }
  });

  // The database is unavailable (503 with Retry-After, nothing was stored): nothing is swapped, the task stays
  // as it is; say so next to the button that was pressed, so the annotator submits again.
  document.addEventListener("htmx:responseError", (e) => {
    const xhr = e.detail.xhr;
    if (xhr.status !== 503) return;
    let message = "The server is unavailable right now; nothing was saved. Try again in a few seconds.";
    try { message = JSON.parse(xhr.responseText).detail || message; } catch (err) { /* keep the default */ }
    const holder = e.detail.elt.parentElement;
    const status = holder && holder.querySelector(".submit-status");
    if (status) {
      status.textContent = "";
      const p = document.createElement("p");
      p.className = "error";
      p.setAttribute("role", "alert");
      p.textContent = message;
      status.appendChild(p);
    }
  });

  htmx.onLoad(init);
})();
