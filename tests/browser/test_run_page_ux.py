"""In real Chromium, the run page's live feedback (issue 16, item 6): a phase + progress + ETA line fed by
what the RunReporter recorded (on_start, the progress metric), and a log panel that follows new lines unless
the user scrolled up in it. The run is a row the test writes (no worker): the page only reads rows and the
log file, so the test drives the page, not a trainer."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

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
    page.goto(f"{live_server.url}/login/?next={next_url}")
    page.fill("#id_username", "staffer")
    page.fill("#id_password", "browser-pw-1")
    page.click("button[type=submit]")
    page.wait_for_url(f"**{next_url}")


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
    TrainingRun.objects.filter(pk=run.pk).update(kind="ppo", summary={
        "total_steps": 8, "step": 0, "progress": {"start_step": 0, "started_at": timezone.now().timestamp()}})
    login(page, live_server, f"/dashboard/runs/{run.pk}/")
    line = page.inner_text("#run-progress")
    assert "Evaluating the start policy" in line and "Step – / 8" not in line, line
