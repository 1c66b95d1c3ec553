"""In real Chromium, the run page's live feedback (issue 16, item 6): a phase + progress + ETA line fed by
what the RunReporter recorded (on_start, the progress metric), and a log panel that follows new lines unless
the user scrolled up in it. The run is a row the test writes (no worker): the page only reads rows and the
log file, so the test drives the page, not a trainer."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.browser.helpers import log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def running_run(settings, tmp_path, django_user_model):
    from training.models import TrainingRun

    settings.WORKBENCH_RUNS_ROOT = (tmp_path / "runs").resolve()
    django_user_model.objects.create_user("staffer", password="browser-pw-1", is_staff=True)
    log = tmp_path / "runs" / "rm-1" / "logs" / "rm.log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {i}: step output\n" for i in range(200)))
    now = timezone.now()
    started = now.timestamp() - 20
    run = TrainingRun.objects.create(
        kind="rm", name="ux rm", status="running", started_at=now - timedelta(seconds=30), heartbeat_at=now,
        output_dir=str(log.parent.parent), log_path=str(log),
        summary={"total_steps": 40, "step": 10, "progress": {"start_step": 0, "started_at": started - 5,
                                                            "first_step": 1, "first_at": started,
                                                            "step": 10, "at": now.timestamp()}},
    )
    return run, log


def login(page, live_server, next_url):
    log_in(page, live_server, username="staffer", password="browser-pw-1", next_url=next_url)


def _at_bottom(page) -> bool:
    return page.evaluate("() => { const l = document.getElementById('log-tail');"
                         " return l.scrollHeight - l.scrollTop - l.clientHeight < 24; }")


@pytest.mark.parametrize("width", [1280, 390])
def test_progress_line_and_a_following_log(page, live_server, running_run, artifacts_dir, width):
    run, log = running_run
    page.set_viewport_size({"width": width, "height": 800})
    page.set_default_timeout(20_000)
    login(page, live_server, f"/dashboard/runs/{run.pk}/")
    line = page.inner_text("#run-progress")
    # 9 steps in 20 s: 0.45 step/s, 30 steps left: about 67 s (minus the seconds since the last report).
    assert "Training" in line and "step 10 / 40" in line and "25 %" in line, line
    assert "0.45 step/s" in line and "left" in line, line
    assert page.get_attribute("#run-progress progress", "value") == "10"
    assert _at_bottom(page)  # the newest line is in view on load
    page.screenshot(path=str(artifacts_dir / f"run-page-progress-{width}.png"), full_page=True)

    # New lines arrive: the panel follows them.
    with log.open("a") as handle:
        handle.write("".join(f"new line {i}\n" for i in range(50)))
    page.wait_for_function("() => document.getElementById('log-tail').textContent.includes('new line 49')")
    assert _at_bottom(page)

    # The user scrolls up to read: later lines do not pull the panel down.
    page.evaluate("() => { const l = document.getElementById('log-tail'); l.scrollTop = 40;"
                  " l.dispatchEvent(new Event('scroll')); }")
    with log.open("a") as handle:
        handle.write("".join(f"later line {i}\n" for i in range(50)))
    page.wait_for_function("() => document.getElementById('log-tail').textContent.includes('later line 49')")
    assert not _at_bottom(page)
    assert page.evaluate("() => document.getElementById('log-tail').scrollTop") == 40


def test_the_phase_before_the_first_step_is_named(page, live_server, running_run):
    from training.models import TrainingRun

    run, _ = running_run
    warnings = []
    page.on("console", lambda msg: warnings.append(msg.text) if msg.type in ("warning", "error") else None)
    TrainingRun.objects.filter(pk=run.pk).update(kind="ppo", summary={
        "total_steps": 8, "step": 0, "progress": {"start_step": 0, "started_at": timezone.now().timestamp()}})
    login(page, live_server, f"/dashboard/runs/{run.pk}/")
    line = page.inner_text("#run-progress")
    assert "Evaluating the start policy" in line and "Step – / 8" not in line, line
    page.evaluate("() => document.body.dispatchEvent(new Event('samples-updated'))")
    page.wait_for_timeout(500)
    assert not [w for w in warnings if "sample-step" in w], warnings  # htmx found what hx-include names


@pytest.fixture
def finished_run(settings, tmp_path, django_user_model):
    from training.models import Metric, TrainingRun

    settings.WORKBENCH_RUNS_ROOT = (tmp_path / "runs").resolve()
    django_user_model.objects.create_user("staffer", password="browser-pw-1", is_staff=True)
    run = TrainingRun.objects.create(kind="rm", name="curves", status="succeeded")
    rows = []
    for step in range(1, 41):
        rows += [Metric(run=run, step=step, name="loss", value=1.0 / step + (0.3 if step % 2 else 0.0)),
                 Metric(run=run, step=step, name="accuracy", value=0.5 + step / 100),
                 Metric(run=run, step=step, name="margin", value=step / 10)]
    rows += [Metric(run=run, step=40, name="eval/accuracy", value=0.8),  # one point
             Metric(run=run, step=40, name="eval/loss", value=0.4), Metric(run=run, step=20, name="eval/loss", value=0.6)]
    Metric.objects.bulk_create(rows)
    return run


CHARTS = "Object.values(window.workbench.charts)"


def _datasets(page):
    return page.evaluate("() => " + CHARTS + ".flatMap(c => c.data.datasets.map((d, i) => ({chart: c.canvas.id,"
                         " label: d.label, color: d.borderColor, n: d.data.length,"
                         " radius: c.getDatasetMeta(i).data[0].options.radius, y0: d.data[0].y,"
                         " y1: d.data[1] && d.data[1].y})))")


@pytest.mark.parametrize("width", [1280, 390])
def test_curves_colours_points_smoothing_zoom_and_shared_hover(page, live_server, finished_run, artifacts_dir, width):
    page.set_viewport_size({"width": width, "height": 900})
    page.set_default_timeout(20_000)
    login(page, live_server, f"/dashboard/runs/{finished_run.pk}/")
    page.wait_for_function(f"() => window.Chart && {CHARTS}.length >= 3")
    sets = {d["label"]: d for d in _datasets(page)}
    # One colour per series across panels: train under Accuracy, Margin and Losses; eval under two panels.
    assert sets["loss"]["color"] == sets["accuracy"]["color"] == sets["margin"]["color"]
    assert sets["eval/accuracy"]["color"] == sets["eval/loss"]["color"] != sets["loss"]["color"]
    assert sets["eval/accuracy"]["chart"] != sets["eval/loss"]["chart"]
    assert sets["eval/accuracy"]["n"] == 1 and sets["eval/accuracy"]["radius"] > 0  # a single point is drawn

    # Smoothing: the debiased EMA (TensorBoard's): with w = 0.5, s1 = y1, s2 = (0.25·y1 + 0.5·y2) / 0.75.
    y1, y2 = 1.0 + 0.3, 0.5
    page.evaluate("() => { const s = document.getElementById('chart-smoothing'); s.value = '0.5';"
                  " s.dispatchEvent(new Event('input')); }")
    smoothed = {d["label"]: d for d in _datasets(page)}["loss"]
    assert smoothed["y0"] == pytest.approx(y1) and smoothed["y1"] == pytest.approx((0.25 * y1 + 0.5 * y2) / 0.75)
    assert page.inner_text("#chart-smoothing-value") == "0.50"

    # Shared hover: pointing at a step in one panel shows the read-out in the others too.
    canvases = page.locator("#run-charts canvas")
    canvases.nth(0).scroll_into_view_if_needed()
    box = canvases.nth(0).bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.5)
    page.wait_for_function(f"() => {CHARTS}.filter(c => c.tooltip && c.tooltip.getActiveElements().length).length >= 2")
    per_chart = page.evaluate(f"() => {CHARTS}.map(c => c.tooltip.getActiveElements().map(e => e.datasetIndex))")
    assert all(len(ids) == len(set(ids)) for ids in per_chart), per_chart  # one read-out line per series
    steps = page.evaluate(f"() => {CHARTS}.flatMap(c => c.tooltip.getActiveElements().map(e =>"
                          " [c.data.datasets[e.datasetIndex].label, c.data.datasets[e.datasetIndex].data[e.index].x]))")
    train_steps = {step for label, step in steps if not label.startswith("eval/")}
    assert len(train_steps) == 1 and len(steps) >= 3, steps  # the same step in every panel
    page.screenshot(path=str(artifacts_dir / f"run-page-curves-hover-{width}.png"), full_page=False)

    # Drag-to-zoom on one panel zooms every panel to the same steps; Reset zoom undoes it.
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=5)
    page.mouse.up()
    ranges = page.evaluate(f"() => {CHARTS}.map(c => [c.scales.x.min, c.scales.x.max])")
    assert len({tuple(r) for r in ranges}) == 1 and ranges[0][1] - ranges[0][0] < 39, ranges
    assert page.is_visible("#chart-reset-zoom")
    page.click("#chart-reset-zoom")
    assert page.evaluate(f"() => {CHARTS}.every(c => c.options.scales.x.min === undefined)")
