/* Dashboard charts (Chart.js, vendored): a run's live curves, the compare overlay and the annotation
 * statistics. Data comes from <script type="application/json"> blocks the server renders; while a run is
 * live, htmx polls its page region and each answer carries the metric rows written since the last poll
 * (a cursor), which are appended here. Polling stops when the server answers 286 (the run has ended). */
(function () {
  "use strict";

  var PALETTE = ["#2457c5", "#c2410c", "#15803d", "#9333ea", "#b91c1c", "#0e7490", "#a16207", "#be185d",
                 "#4d7c0f", "#1e40af", "#7c2d12", "#0f766e"];

  var state = {
    charts: {},          // chart id -> Chart
    groups: [],          // [{id, title, patterns}]
    groupOf: {},         // metric name -> chart id
    cursor: null,        // largest Metric id seen
    samplesStep: null,   // latest sample-table step seen
  };

  function readJson(id) {
    var el = document.getElementById(id);
    if (!el) return null;
    try { return JSON.parse(el.textContent); } catch (e) { return null; }
  }

  function color(i) { return PALETTE[i % PALETTE.length]; }

  function baseOptions(yTitle) {
    return {
      animation: false,
      parsing: false,
      normalized: true,
      responsive: true,
      maintainAspectRatio: false,
      interaction: { mode: "nearest", axis: "x", intersect: false },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } }, decimation: { enabled: false } },
      scales: {
        x: { type: "linear", title: { display: true, text: "step" }, ticks: { precision: 0 } },
        y: { title: { display: !!yTitle, text: yTitle || "" } },
      },
      elements: { point: { radius: 0, hitRadius: 6 }, line: { borderWidth: 2, tension: 0 } },
    };
  }

  function toPoints(pairs) {
    return pairs.map(function (p) { return { x: p[0], y: p[1] }; });
  }

  // Insert or replace points in a step-sorted dataset (a resumed run may report a step again).
  function mergePoints(data, pairs) {
    pairs.forEach(function (p) {
      var point = { x: p[0], y: p[1] };
      var n = data.length;
      if (!n || data[n - 1].x < point.x) { data.push(point); return; }
      for (var i = n - 1; i >= 0; i--) {
        if (data[i].x === point.x) { data[i] = point; return; }
        if (data[i].x < point.x) { data.splice(i + 1, 0, point); return; }
      }
      data.unshift(point);
    });
  }

  function groupFor(name) {
    if (state.groupOf[name]) return state.groupOf[name];
    // The rule of training.selectors.chart_group_of: words of the name after its last "/", split on "_";
    // a pattern with a "_" matches anywhere in it.
    var leaf = name.split("/").pop().toLowerCase();
    var words = leaf.split("_");
    var found = "other";
    for (var i = 0; i < state.groups.length; i++) {
      var g = state.groups[i];
      var hit = g.patterns.some(function (p) {
        return p.indexOf("_") !== -1 ? leaf.indexOf(p) !== -1 : words.indexOf(p) !== -1;
      });
      if (hit) { found = g.id; break; }
    }
    state.groupOf[name] = found;
    return found;
  }

  function groupTitle(id) {
    for (var i = 0; i < state.groups.length; i++) if (state.groups[i].id === id) return state.groups[i].title;
    return "Other";
  }

  function chartCard(container, id, title) {
    var card = document.createElement("figure");
    card.className = "chart-card";
    card.dataset.chart = id;
    var caption = document.createElement("figcaption");
    caption.textContent = title;
    var box = document.createElement("div");
    box.className = "chart-box";
    var canvas = document.createElement("canvas");
    canvas.id = "chart-" + id;
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", title + " by step");
    box.appendChild(canvas);
    card.appendChild(caption);
    card.appendChild(box);
    var empty = container.querySelector(".charts-empty");
    if (empty) empty.remove();
    // Keep the cards in the order of the configured groups.
    var order = state.groups.map(function (g) { return g.id; }).concat(["other"]);
    var before = null;
    Array.prototype.forEach.call(container.querySelectorAll(".chart-card"), function (other) {
      if (!before && order.indexOf(other.dataset.chart) > order.indexOf(id)) before = other;
    });
    container.insertBefore(card, before);
    return canvas;
  }

  function ensureDataset(chart, name) {
    var sets = chart.data.datasets;
    for (var i = 0; i < sets.length; i++) if (sets[i].label === name) return sets[i];
    var ds = { label: name, data: [], borderColor: color(sets.length), backgroundColor: color(sets.length) };
    sets.push(ds);
    return ds;
  }

  function addSeries(series) {
    var container = document.getElementById("run-charts");
    if (!container || !window.Chart) return;
    var touched = {};
    Object.keys(series).sort().forEach(function (name) {
      var id = groupFor(name);
      var chart = state.charts[id];
      if (!chart) {
        var canvas = chartCard(container, id, groupTitle(id));
        chart = new window.Chart(canvas, { type: "line", data: { datasets: [] }, options: baseOptions(groupTitle(id)) });
        state.charts[id] = chart;
      }
      mergePoints(ensureDataset(chart, name).data, series[name]);
      touched[id] = chart;
    });
    Object.keys(touched).forEach(function (id) { touched[id].update("none"); });
  }

  function initRunPage() {
    var data = readJson("run-chart-data");
    if (!data) return;
    state.groups = data.groups || [];
    state.cursor = data.cursor;
    addSeries(data.series || {});
    var live = readJson("run-live-data");
    if (live) state.samplesStep = live.samples_step;
  }

  // --- The log follows new lines unless the user scrolled up in it --------------------------------------

  var logFollow = { follow: true, top: 0 };

  function followLog() {
    var log = document.getElementById("log-tail");
    if (!log) return;
    if (logFollow.follow) log.scrollTop = log.scrollHeight;
    else log.scrollTop = logFollow.top;
    log.dataset.following = logFollow.follow ? "true" : "false";
  }

  function onLogScroll(event) {
    var log = event.target;
    if (!log || log.id !== "log-tail") return;
    logFollow.follow = log.scrollHeight - log.scrollTop - log.clientHeight < 24;
    logFollow.top = log.scrollTop;
    log.dataset.following = logFollow.follow ? "true" : "false";
  }

  function onLiveSwap() {
    followLog();
    var live = readJson("run-live-data");
    if (!live) return;
    if (live.cursor !== null && live.cursor !== undefined) state.cursor = live.cursor;
    addSeries(live.series || {});
    if (live.samples_step !== null && live.samples_step !== undefined) state.samplesStep = live.samples_step;
    var region = document.getElementById("run-live");
    if (region) region.dataset.status = live.status;
  }

  // --- Compare --------------------------------------------------------------------------------------------

  function initCompare() {
    var data = readJson("compare-data");
    var container = document.getElementById("compare-charts");
    if (!data || !container || !window.Chart) return;
    var colors = {};
    data.runs.forEach(function (run, i) { colors[run.id] = color(i); });
    document.querySelectorAll(".legend .swatch").forEach(function (el) {
      el.style.background = color(Number(el.dataset.index));
    });
    var labels = {};
    data.runs.forEach(function (run) { labels[run.id] = run.label; });
    Object.keys(data.metrics).forEach(function (name) {
      var perRun = data.metrics[name];
      var datasets = data.runs.filter(function (run) { return perRun[run.id]; }).map(function (run) {
        return { label: labels[run.id], data: toPoints(perRun[run.id]), borderColor: colors[run.id],
                 backgroundColor: colors[run.id] };
      });
      var canvas = chartCard(container, "cmp-" + name.replace(/[^a-zA-Z0-9_-]/g, "_"), name);
      canvas.closest(".chart-card").dataset.metric = name;
      state.charts[name] = new window.Chart(canvas, { type: "line", data: { datasets: datasets },
                                                       options: baseOptions(name) });
    });
    document.querySelectorAll(".metric-toggle").forEach(function (box) {
      box.addEventListener("change", function () {
        container.querySelectorAll(".chart-card").forEach(function (card) {
          if (card.dataset.metric === box.value) card.hidden = !box.checked;
        });
      });
    });
  }

  // --- Annotation statistics ------------------------------------------------------------------------------

  function barChart(id, labels, datasets, yOptions) {
    var canvas = document.getElementById(id);
    if (!canvas || !window.Chart) return null;
    var chart = new window.Chart(canvas, {
      type: "bar",
      data: { labels: labels, datasets: datasets },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
        scales: { y: Object.assign({ beginAtZero: true }, yOptions || {}) },
      },
    });
    state.charts[id] = chart;
    return chart;
  }

  function initStats() {
    var data = readJson("stats-data");
    if (!data) return;
    var t = data.throughput;
    if (t && t.annotators.length) {
      barChart("chart-throughput", t.days.map(function (d) { return d.slice(5); }), t.annotators.map(function (a, i) {
        return { label: a.label, data: a.daily, backgroundColor: color(i), stack: "rankings" };
      }), { stacked: true, title: { display: true, text: "rankings per day" }, ticks: { precision: 0 } });
      var chart = state.charts["chart-throughput"];
      if (chart) { chart.options.scales.x = { stacked: true }; chart.update("none"); }
    }
    var c = data.consensus;
    if (c && c.labels.length) {
      barChart("chart-consensus", c.labels, [
        { label: "agreement with consensus", data: c.agreement, backgroundColor: color(0) },
        { label: "tau-b", data: c.tau_b, backgroundColor: color(1) },
      ], { max: 1, min: -1 });
    }
    if (data.position && data.position.length) {
      barChart("chart-position", data.position.map(function (p) { return "shown #" + p.position; }), [
        { label: "mean normalised rank score", data: data.position.map(function (p) { return p.mean_score; }),
          backgroundColor: color(2) },
        { label: "no bias", type: "line", data: data.position.map(function () { return 0.5; }),
          borderColor: "#888", borderDash: [4, 4], pointRadius: 0 },
      ], { max: 1 });
    }
    if (data.length && data.length.longer_preferred !== null && data.length.longer_preferred !== undefined) {
      barChart("chart-length", ["longer preferred", "shorter preferred"], [
        { label: "share of " + data.length.pairs + " pairs",
          data: [data.length.longer_preferred, 1 - data.length.longer_preferred],
          backgroundColor: [color(3), color(5)] },
      ], { max: 1 });
    }
  }

  function init() {
    initRunPage();
    followLog();
    document.addEventListener("scroll", onLogScroll, true);  // scroll does not bubble; capture sees it
    document.body.addEventListener("htmx:oobAfterSwap", followLog);
    initCompare();
    initStats();
    document.body.addEventListener("htmx:afterSwap", function (event) {
      if (event.detail && event.detail.target && event.detail.target.id === "run-live") onLiveSwap();
    });
    // Each poll of the live region asks only for what is new (instead of hx-vals="js:…", which needs eval and
    // so breaks under the Content-Security-Policy).
    document.body.addEventListener("htmx:configRequest", function (event) {
      const elt = event.detail && event.detail.elt;
      if (!elt || !elt.hasAttribute || !elt.hasAttribute("data-live-cursor")) return;
      event.detail.parameters["after_id"] = window.workbench.cursor();
      event.detail.parameters["samples_step"] = window.workbench.samplesStep();
    });
  }

  window.workbench = {
    charts: state.charts,
    cursor: function () { return state.cursor === null || state.cursor === undefined ? "" : state.cursor; },
    samplesStep: function () { return state.samplesStep === null || state.samplesStep === undefined ? "" : state.samplesStep; },
  };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
