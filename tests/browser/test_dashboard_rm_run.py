"""In real Chromium: staff launch a tiny reward-model run from the dashboard form, a worker started by the test
(`manage.py db_worker --batch` in a subprocess, on the same database) runs the real train_rm on a tiny K-wise
dataset with the tiny model, and the run page — polling with htmx — shows it finished with its curves.

Why a subprocess worker: that is how runs execute in production (and the worker itself starts train_rm as a
child process), so the test covers the queue, the supervisor, the trainer and the page together. Both
processes must open the test database, so on SQLite it is made a file (tests.training.helpers) and the
worker's environment names it (training.tasks.child_environment, the same function the worker uses for its
trainer children).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from tests.training.helpers import use_file_sqlite_test_database, write_kwise_snapshot

use_file_sqlite_test_database()

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

WORKER_TIMEOUT = 420


@pytest.fixture
def dashboard_world(settings, tmp_path, tiny_model_dir, django_user_model):
    from annotate.models import DatasetSnapshot, Project

    settings.WORKBENCH_MODEL_ROOTS = [Path(tiny_model_dir).resolve().parent]
    settings.WORKBENCH_DATA_ROOT = (tmp_path / "data").resolve()
    settings.WORKBENCH_RUNS_ROOT = (tmp_path / "runs").resolve()
    settings.WORKBENCH_HEARTBEAT_SECONDS = 2
    snapshot_dir = settings.WORKBENCH_DATA_ROOT / "snapshots" / "1-tiny"
    counts = write_kwise_snapshot(snapshot_dir)
    project = Project.objects.create(name="Tiny reviews")
    snapshot = DatasetSnapshot.objects.create(project=project, path=str(snapshot_dir), format="jsonl",
                                              content_hash="d" * 64, counts=counts)
    django_user_model.objects.create_user("staffer", password="browser-pw-1", is_staff=True)
    return {"snapshot": snapshot, "model": str(Path(tiny_model_dir).resolve())}


def start_worker() -> subprocess.Popen:
    from training.tasks import child_environment

    return subprocess.Popen(
        [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "db_worker", "--batch", "--no-startup-delay",
         "--no-reload"],
        env=child_environment(), cwd=str(settings.BASE_DIR), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )


def test_staff_launch_a_tiny_rm_run_and_watch_it_finish(page, live_server, dashboard_world, artifacts_dir):
    from training.models import Metric, TrainingRun

    page.set_default_timeout(20_000)
    page.goto(f"{live_server.url}/login/?next=/dashboard/launch/rm/")
    page.fill("#id_username", "staffer")
    page.fill("#id_password", "browser-pw-1")
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/launch/rm/")

    # The form offers what is under the roots and the recorded snapshot; the options come with their help.
    page.select_option("#id_snapshot", str(dashboard_world["snapshot"].pk))
    page.select_option("#id_base_model", dashboard_world["model"])
    # The options derived from the model arrive over htmx; type over them once they are in.
    page.wait_for_function("() => document.getElementById('launch-suggestion').textContent.includes('parameters')")
    assert "Peak AdamW learning rate" in page.inner_text("form.launch-form")
    page.fill("#id_name", "browser tiny rm")
    page.fill("#id_max_steps", "6")
    page.fill("#id_batch_size", "4")
    page.fill("#id_learning_rate", "0.001")
    page.click("text=Queue the run")
    page.wait_for_url("**/dashboard/runs/*/")
    run = TrainingRun.objects.get(name="browser tiny rm")
    assert page.get_attribute("#run-status", "data-status") == "queued"
    assert "Waiting for a worker" in page.inner_text("#run-live")

    polls: list[str] = []
    page.on("request", lambda request: polls.append(request.url) if "/live/" in request.url else None)

    worker = start_worker()
    try:
        output, _ = worker.communicate(timeout=WORKER_TIMEOUT)
    except subprocess.TimeoutExpired:
        worker.kill()
        output, _ = worker.communicate()
        pytest.fail(f"the worker did not finish within {WORKER_TIMEOUT}s:\n{output[-4000:]}")
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, f"{run.status}: {run.error}\n{output[-3000:]}"

    # The page, still polling, shows the end: status, curves, evaluation, log; then it stops polling (286).
    page.wait_for_selector('#run-status[data-status="succeeded"]', timeout=30_000)
    assert polls, "the run page never polled"
    losses = page.evaluate(
        """() => {
            const chart = Chart.getChart(document.querySelector('#chart-losses'));
            const loss = chart.data.datasets.find(d => d.label === 'loss');
            return loss.data.map(p => [p.x, p.y]);
        }"""
    )
    expected = list(Metric.objects.filter(run=run, name="loss").order_by("step").values_list("step", "value"))
    assert len(expected) == 6
    assert [(x, pytest.approx(y)) for x, y in losses] == expected
    accuracy_labels = page.evaluate(
        "() => Chart.getChart(document.querySelector('#chart-accuracy')).data.datasets.map(d => d.label)"
    )
    assert "eval/accuracy" in accuracy_labels
    live_text = page.inner_text("#run-live")
    assert "held-out accuracy" in live_text
    assert "saved the reward model" in page.inner_text("#log-tail")
    assert Path(run.output_dir, "reward_model.json").is_file()

    page.screenshot(path=str(artifacts_dir / "dashboard-run.png"), full_page=True)

    seen = len(polls)
    page.wait_for_timeout(7_000)  # two poll periods: htmx stopped polling after the 286
    assert len(polls) == seen
    # The runs list shows the finished run with its headline figure.
    page.goto(f"{live_server.url}/dashboard/")
    row = page.locator(f'tr[data-run="{run.pk}"]')
    assert "Succeeded" in row.inner_text() and "held-out accuracy" in row.inner_text()
