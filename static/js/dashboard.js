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
    smoothing: 0,        // EMA weight of the smoothing slider (0 = raw)
    zoom: null,          // {min, max} of the step axis shared by every chart, or null
  };

  function readJson(id) {
    var el = document.getElementById(id);
    if (!el) return null;
    try { return JSON.parse(el.textContent); } catch (e) { return null; }
  }

  function color(i) { return PALETTE[i % PALETTE.length]; }

  // A series keeps its colour in every panel: the colour is a hash of its prefix ("train/loss" and
  // "train/accuracy" → "train"; a name without "/" is the training series), and a second series of the
  // same prefix in one panel is told apart by its dash pattern.
  function hashOf(text) {
    var h = 2166136261;  // FNV-1a
    for (var i = 0; i < text.length; i++) { h ^= text.charCodeAt(i); h = Math.imul(h, 16777619); }
    return h >>> 0;
  }

  function seriesKey(name) {
    var cut = name.lastIndexOf("/");
    return cut === -1 ? "train" : name.slice(0, cut);
  }

  function seriesColor(name) { return PALETTE[hashOf(seriesKey(name)) % PALETTE.length]; }

  // Exponential moving average with the start-up bias removed (TensorBoard's smoothing; W&B's default
  // "exponential moving average"): s_t = w·s_{t−1} + (1 − w)·y_t, shown as s_t / (1 − w^(t+1)).
  function smooth(points, weight) {
    if (!weight) return points.slice();
    var last = 0, out = [];
    points.forEach(function (p, i) {
      last = last * weight + (1 - weight) * p.y;
      out.push({ x: p.x, y: last / (1 - Math.pow(weight, i + 1)) });
    });
    return out;
  }

  function refreshData(ds) { ds.data = smooth(ds.raw || ds.data, state.smoothing); }

  // Points are drawn where a series has few of them (one evaluation point is visible).
  function pointRadius(ctx) { return ctx.dataset.data.length <= 30 ? 3 : 0; }
  function baseOptions(yTitle) {
    return {
      animation: false,
      parsing: false,
      normalized: true,
      responsive: true,
      maintainAspectRatio: false,
      interaction: { mode: "step", axis: "x", intersect: false },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } }, decimation: { enabled: false },
                 tooltip: { mode: "step", intersect: false, position: "nearest" } },
      onHover: shareHover,
      scales: {
        x: { type: "linear", title: { display: true, text: "step" }, ticks: { precision: 0 },
             min: state.zoom ? state.zoom.min : undefined, max: state.zoom ? state.zoom.max : undefined },
        y: { title: { display: !!yTitle, text: yTitle || "" } },
      },
      elements: { point: { radius: pointRadius, hitRadius: 6 }, line: { borderWidth: 2, tension: 0 } },
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
    var c = seriesColor(name);
    var same = sets.filter(function (other) { return seriesKey(other.label) === seriesKey(name); }).length;
    var ds = { label: name, data: [], raw: [], borderColor: c, backgroundColor: c,
               borderDash: [[], [6, 3], [2, 2], [8, 3, 2, 3]][same % 4] };
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
      var ds = ensureDataset(chart, name);
      mergePoints(ds.raw, series[name]);
      refreshData(ds);
      touched[id] = chart;
    });
    Object.keys(touched).forEach(function (id) { touched[id].update("none"); });
  }

  // --- Shared hover, smoothing and drag-to-zoom across the panels ---------------------------------------

  function allCharts() { return Object.keys(state.charts).map(function (k) { return state.charts[k]; }); }

  function nearestIndex(data, x) {
    var best = -1, gap = Infinity;
    for (var i = 0; i < data.length; i++) {
      var d = Math.abs(data[i].x - x);
      if (d < gap) { gap = d; best = i; }
    }
    return best;
  }

  // Every series' point at the step nearest to x (within 2 % of the step, at least 1 step): one read-out line
  // per series, not two neighbouring points of one series.
  function pointsAtStep(chart, x) {
    var els = [];
    chart.data.datasets.forEach(function (ds, di) {
      if (!chart.isDatasetVisible(di)) return;
      var i = nearestIndex(ds.data, x);
      if (i >= 0 && Math.abs(ds.data[i].x - x) <= Math.max(1, Math.abs(x) * 0.02)) els.push({ datasetIndex: di, index: i });
    });
    return els;
  }

  function registerStepMode() {
    if (!window.Chart || window.Chart.Interaction.modes.step) return;
    window.Chart.Interaction.modes.step = function (chart, event) {
      if (!chart.scales.x) return [];
      var x = Math.round(chart.scales.x.getValueForPixel(event.x));
      return pointsAtStep(chart, x).map(function (e) {
        return { element: chart.getDatasetMeta(e.datasetIndex).data[e.index], datasetIndex: e.datasetIndex, index: e.index };
      });
    };
  }

  // Hovering a step in one panel shows the read-out of every series at that step in every panel.
  function shareHover(event, active, source) {
    if (!source || !source.scales || !source.scales.x || !event) return;
    var x = Math.round(source.scales.x.getValueForPixel(event.x));
    if (active && active.length) x = source.data.datasets[active[0].datasetIndex].data[active[0].index].x;
    allCharts().forEach(function (chart) {
      if (chart === source || !chart.scales || !chart.scales.x || chart.config.type !== "line") return;
      var els = pointsAtStep(chart, x);
      chart.setActiveElements(els);
      if (chart.tooltip) {
        chart.tooltip.setActiveElements(els, { x: chart.scales.x.getPixelForValue(x), y: chart.chartArea.top + 10 });
      }
      chart.update("none");
    });
  }

  function clearHover() {
    allCharts().forEach(function (chart) {
      if (!chart.setActiveElements) return;
      chart.setActiveElements([]);
      if (chart.tooltip) chart.tooltip.setActiveElements([], { x: 0, y: 0 });
      chart.update("none");
    });
  }

  function applyZoom() {
    allCharts().forEach(function (chart) {
      if (chart.config.type !== "line") return;
      chart.options.scales.x.min = state.zoom ? state.zoom.min : undefined;
      chart.options.scales.x.max = state.zoom ? state.zoom.max : undefined;
      chart.update("none");
    });
    var reset = document.getElementById("chart-reset-zoom");
    if (reset) reset.hidden = !state.zoom;
    var root = document.getElementById("chart-controls");
    if (root) root.dataset.zoom = state.zoom ? state.zoom.min + "-" + state.zoom.max : "";
  }

  function chartOfCanvas(canvas) {
    var found = null;
    allCharts().forEach(function (chart) { if (chart.canvas === canvas) found = chart; });
    return found;
  }

  // Drag across a panel to zoom every panel to that range of steps; double-click or "Reset zoom" to undo.
  function initZoom() {
    var drag = null;
    document.addEventListener("mousedown", function (event) {
      var chart = event.target.tagName === "CANVAS" ? chartOfCanvas(event.target) : null;
      if (!chart || chart.config.type !== "line") return;
      drag = { chart: chart, from: event.offsetX };
    });
    document.addEventListener("mouseup", function (event) {
      if (!drag) return;
      var chart = drag.chart, to = event.target === chart.canvas ? event.offsetX : drag.from;
      var a = Math.min(drag.from, to), b = Math.max(drag.from, to);
      drag = null;
      if (b - a < 8) return;  // a click, not a drag
      var min = chart.scales.x.getValueForPixel(a), max = chart.scales.x.getValueForPixel(b);
      if (max > min) { state.zoom = { min: min, max: max }; applyZoom(); }
    });
    document.addEventListener("dblclick", function (event) {
      if (event.target.tagName === "CANVAS" && chartOfCanvas(event.target)) { state.zoom = null; applyZoom(); }
    });
    var reset = document.getElementById("chart-reset-zoom");
    if (reset) reset.addEventListener("click", function () { state.zoom = null; applyZoom(); });
  }

  function initSmoothing() {
    var slider = document.getElementById("chart-smoothing");
    var shown = document.getElementById("chart-smoothing-value");
    if (!slider) return;
    slider.addEventListener("input", function () {
      state.smoothing = Math.min(0.999, Math.max(0, Number(slider.value) || 0));
      if (shown) shown.textContent = state.smoothing.toFixed(2);
      allCharts().forEach(function (chart) {
        if (chart.config.type !== "line") return;
        chart.data.datasets.forEach(function (ds) { if (ds.raw) refreshData(ds); });
        chart.update("none");
      });
    });
  }

  function initChartTools() {
    initSmoothing();
    initZoom();
    document.addEventListener("mouseout", function (event) {
      if (event.target.tagName === "CANVAS" && chartOfCanvas(event.target)) clearHover();
    });
  }

  function initRunPage() {
    registerStepMode();
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
    registerStepMode();
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
        var points = toPoints(perRun[run.id]);
        return { label: labels[run.id], data: points.slice(), raw: points, borderColor: colors[run.id],
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
      barChart("chart-position", data.position.map(function (p) {
        return "shown #" + p.position + (p.rankings !== undefined ? " (n = " + p.rankings + ")" : "");
      }), [
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
    initChartTools();
    followLog();
    document.addEventListener("scroll", onLogScroll, true);  // scroll does not bubble; capture sees it
    document.body.addEventListener("htmx:oobAfterSwap", followLog);
    initCompare();
    initStats();
    initLaunchForm();
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

  // --- Launch forms ---------------------------------------------------------------------------------------

  // Picking another model or data source brings suggested options over htmx (out-of-band field swaps, see
  // _launch_defaults.html). A field the user typed in keeps the user's value: the suggestion line still says
  // what would fit.
  function initLaunchForm() {
    var form = document.querySelector("form.launch-form");
    if (!form) return;
    // htmx settles "style" by setting the attribute, which this page's CSP refuses (style-src-attr): the
    // swapped inputs have the same ids as the old ones, so leave style out of the settled attributes here.
    if (window.htmx) window.htmx.config.attributesToSettle = ["class", "width", "height"];
    form.addEventListener("input", function (event) {
      if (event.target.closest(".field") && !event.target.hasAttribute("hx-get")) event.target.dataset.edited = "1";
    });
    document.body.addEventListener("htmx:oobBeforeSwap", function (event) {
      var target = event.detail && event.detail.target;
      if (!target || !target.id || target.id.indexOf("field-") !== 0) return;
      var input = target.querySelector("input, select, textarea");
      if (input && input.dataset.edited) event.detail.shouldSwap = false;
    });
  }

  window.workbench = {
    charts: state.charts,
    smooth: smooth,
    seriesColor: seriesColor,
    zoom: function () { return state.zoom; },
    cursor: function () { return state.cursor === null || state.cursor === undefined ? "" : state.cursor; },
    samplesStep: function () { return state.samplesStep === null || state.samplesStep === undefined ? "" : state.samplesStep; },
  };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
