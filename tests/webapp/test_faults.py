"""Faults, tested: the database going away answers 503 + Retry-After (never 500) and recovers; a trainer
SIGKILLed mid-run is marked failed at once and Resume reaches the same final weights as an uninterrupted run;
a SIGKILLed db_worker leaves its run detected as stale, not "running"; a gunicorn worker SIGKILLed in the
middle of a submit and a PostgreSQL restart, both with a real process tree, are bench/bench_faults.py (run here
on a throwaway cluster of its own when the PostgreSQL server binaries are there)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.contrib.auth.decorators import login_not_required
from django.contrib.sessions.backends.db import SessionStore
from django.db import OperationalError, connection
from django.http import HttpResponse
from django.urls import path, reverse

from tests.conftest import IN_CI, REPO_ROOT
from tests.training.helpers import use_file_sqlite_test_database, write_kwise_snapshot
from webapp.middleware import is_database_outage

use_file_sqlite_test_database()  # the worker and trainer processes below open the test database

FAKE_TRAINER = REPO_ROOT / "tests" / "training" / "fake_trainer.py"


# --- The database is unavailable: 503 + Retry-After --------------------------------------------------------


def _lost(request):
    raise OperationalError("server closed the connection unexpectedly\n\tThis probably means the server terminated")


def _broken_query(request):
    raise OperationalError("no such table: annotate_nothing")


def _fine(request):
    return HttpResponse("ok")


urlpatterns = [
    path("api/lost/", login_not_required(_lost)),
    path("page/lost/", login_not_required(_lost)),
    path("page/broken/", login_not_required(_broken_query)),
    path("page/fine/", login_not_required(_fine)),
]


def test_outage_classification():
    assert is_database_outage(OperationalError("connection to server at \"127.0.0.1\", port 5432 failed"))
    assert is_database_outage(OperationalError("database is locked"))
    assert not is_database_outage(OperationalError("no such table: x"))
    assert not is_database_outage(ValueError("connection refused"))


@pytest.mark.urls(__name__)
def test_a_lost_database_in_a_view_is_a_503_with_retry_after(client, settings):
    settings.DATABASE_UNAVAILABLE_RETRY_AFTER = 7
    api = client.get("/api/lost/")
    assert api.status_code == 503 and api["Retry-After"] == "7" and api["Cache-Control"] == "no-store"
    assert api.json()["code"] == "database_unavailable" and "nothing was saved" in api.json()["detail"]
    page = client.get("/page/lost/", HTTP_ACCEPT="text/html")
    assert page.status_code == 503 and page["Retry-After"] == "7"
    assert page["Content-Type"].startswith("text/html") and b"Temporarily unavailable" in page.content
    assert "Content-Security-Policy" in page  # still under the security headers
    htmx = client.get("/page/lost/", HTTP_HX_REQUEST="true")
    assert htmx.status_code == 503 and htmx.json()["code"] == "database_unavailable"


@pytest.mark.urls(__name__)
def test_a_broken_query_stays_a_500(client):
    client.raise_request_exception = False
    assert client.get("/page/broken/").status_code == 500
    assert client.get("/page/fine/").status_code == 200


@pytest.mark.django_db
def test_a_lost_database_while_loading_the_session_is_a_503_too(client, monkeypatch, django_user_model):
    """The outage hits first where the session and the user are loaded (middleware, before any view)."""
    user = django_user_model.objects.create_user("outage", password="pw")
    client.force_login(user)
    client.raise_request_exception = False

    def down(self):
        raise OperationalError('connection to server at "127.0.0.1", port 5432 failed: Connection refused')

    monkeypatch.setattr(SessionStore, "load", down)
    page = client.get(reverse("annotate:home"), HTTP_ACCEPT="text/html")
    assert page.status_code == 503 and page["Retry-After"] and b"Temporarily unavailable" in page.content
    api = client.get(reverse("api-projects"))
    assert api.status_code == 503 and api.json()["code"] == "database_unavailable"
    monkeypatch.undo()
    assert client.get(reverse("annotate:home")).status_code == 200  # back: the next request works


# --- Trainer and worker processes --------------------------------------------------------------------------


@pytest.fixture
def roots(settings, tmp_path):
    models, data, runs = tmp_path / "models", tmp_path / "data", tmp_path / "runs"
    for directory in (models, data, runs):
        directory.mkdir()
    settings.WORKBENCH_MODEL_ROOTS = [models.resolve()]
    settings.WORKBENCH_DATA_ROOT = data.resolve()
    settings.WORKBENCH_RUNS_ROOT = runs.resolve()
    return {"models": models.resolve(), "data": data.resolve(), "runs": runs.resolve()}


def _final_weights(run) -> dict:
    """The trained model's tensors (every safetensors file outside checkpoints/), by file and name."""
    from safetensors.torch import load_file

    out = Path(run.output_dir)
    files = sorted(p for p in out.rglob("*.safetensors") if "checkpoints" not in p.relative_to(out).parts)
    assert files, f"no weights in {out}"
    return {str(p.relative_to(out)): load_file(p) for p in files}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_sigkilled_trainer_fails_at_once_and_resume_reaches_the_uninterrupted_weights(roots, tiny_model_dir,
                                                                                       settings):
    import torch

    from training import launching, tasks
    from training.models import Checkpoint, Metric, TrainingRun

    settings.WORKBENCH_HEARTBEAT_SECONDS = 1
    dataset = roots["data"] / "snap"
    write_kwise_snapshot(dataset, train=32, test=8)
    steps, every = 48, 4  # one epoch of 32 rankings / 2 = 16 steps; max_steps only caps

    def config():
        return {"model": str(tiny_model_dir), "dataset": str(dataset), "batch_size": 2, "learning_rate": 1e-3,
                "log_every": 1, "checkpoint_every": every, "max_steps": steps, "seed": 3}

    straight = launching.launch_run(kind="rm", options=config())
    tasks.execute_training_run.call(straight.pk)
    straight.refresh_from_db()
    assert straight.status == TrainingRun.Status.SUCCEEDED, straight.error

    killed = launching.launch_run(kind="rm", options=config())
    seen: dict = {}

    def kill_after_a_checkpoint():
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                run = TrainingRun.objects.filter(pk=killed.pk).values("pid", "status").first()
                if run["pid"] and Checkpoint.objects.filter(run_id=killed.pk).exists():
                    seen["killed_at"] = time.monotonic()
                    os.kill(run["pid"], signal.SIGKILL)
                    return
                time.sleep(0.05)
        finally:
            connection.close()

    killer = threading.Thread(target=kill_after_a_checkpoint, daemon=True)
    killer.start()
    tasks.execute_training_run.call(killed.pk)
    marked_at = time.monotonic()
    killer.join(timeout=10)
    killed.refresh_from_db()
    assert "killed_at" in seen, "the trainer finished before a checkpoint was seen"
    assert killed.status == TrainingRun.Status.FAILED, (killed.status, killed.error)
    assert "SIGKILL" in killed.error or "signal 9" in killed.error, killed.error
    # The worker's supervisor notices within one heartbeat interval (plus process teardown).
    assert marked_at - seen["killed_at"] < settings.WORKBENCH_HEARTBEAT_SECONDS + 5
    last = Checkpoint.objects.filter(run=killed).order_by("-step").first()
    assert 0 < last.step < 16

    resumed = launching.resume_run(run=killed)
    tasks.execute_training_run.call(resumed.pk)
    resumed.refresh_from_db()
    assert resumed.status == TrainingRun.Status.SUCCEEDED, resumed.error
    # One run page per training: the same row continues from its checkpoint, so its loss curve holds every step
    # once — the killed part up to the checkpoint, then the resumed part — exactly the uninterrupted run's steps.
    assert resumed.pk == killed.pk and resumed.summary["resumes"][-1]["from_step"] == last.step
    resumed_steps = list(Metric.objects.filter(run=resumed, name="loss").order_by("step")
                         .values_list("step", flat=True))
    straight_steps = list(Metric.objects.filter(run=straight, name="loss").order_by("step")
                          .values_list("step", flat=True))
    assert resumed_steps == straight_steps  # continued, not restarted, and nothing reported twice
    expected, got = _final_weights(straight), _final_weights(resumed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert expected[name].keys() == got[name].keys()
        for tensor in expected[name]:
            assert torch.equal(expected[name][tensor], got[name][tensor]), f"{name}:{tensor} differs"


WORKER = """
import os, sys
sys.path.insert(0, {repo!r})
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
import django
django.setup()
from django.core.management import call_command
from training import tasks
tasks.build_command = lambda *, run: [sys.executable, {trainer!r}, "--run-id", str(run.pk), "--mode", "ignore-cancel"]
call_command("db_worker", "--no-startup-delay", "--no-reload", verbosity=0)
"""


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_sigkilled_db_worker_leaves_a_stale_run_not_a_running_one(roots, settings):
    """A real `db_worker` process runs the fake trainer. SIGKILL the worker alone: its orphaned trainer still
    reports (heartbeats), so the run is rightly not stale; SIGKILL the trainer too: within the stale window
    `reap_stale_runs` marks the run failed ("worker lost"), instead of leaving it "running" for ever."""
    from training import jobs, launching, tasks
    from training.models import TrainingRun

    settings.WORKBENCH_HEARTBEAT_SECONDS = 1
    settings.WORKBENCH_STALE_AFTER_SECONDS = 4
    run = launching.launch_run(kind="rm", options={"model": "fake", "dataset": "fake"})
    env = {**tasks.child_environment(), "WORKBENCH_HEARTBEAT_SECONDS": "1"}
    worker = subprocess.Popen([sys.executable, "-c", WORKER.format(repo=str(REPO_ROOT), trainer=str(FAKE_TRAINER))],
                              env=env, cwd=str(REPO_ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    trainer_pid = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            row = TrainingRun.objects.filter(pk=run.pk).values("status", "pid").first()
            if row["status"] == "running" and row["pid"]:
                trainer_pid = row["pid"]
                break
            assert worker.poll() is None, worker.stdout.read().decode()[-3000:]
            time.sleep(0.2)
        assert trainer_pid, "the worker never started the run"
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        time.sleep(settings.WORKBENCH_STALE_AFTER_SECONDS + 2)
        assert jobs.reap_stale_runs() == []  # the orphaned trainer is still working and reporting
        assert TrainingRun.objects.get(pk=run.pk).status == TrainingRun.Status.RUNNING

        os.kill(trainer_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        marked = []
        while not marked and time.monotonic() < killed_at + 30:
            marked = jobs.reap_stale_runs()
            time.sleep(0.5)
        detected_after = time.monotonic() - killed_at
        assert [r.pk for r in marked] == [run.pk]
        run.refresh_from_db()
        assert run.status == TrainingRun.Status.FAILED and run.error.startswith("worker lost")
        assert detected_after < settings.WORKBENCH_STALE_AFTER_SECONDS + 2 * settings.WORKBENCH_HEARTBEAT_SECONDS + 3
    finally:
        for pid in (worker.pid, trainer_pid):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        worker.wait(timeout=10)


# --- A real process tree: gunicorn + a throwaway PostgreSQL ------------------------------------------------


@pytest.mark.slow
def test_gunicorn_sigkill_mid_submit_and_a_postgres_restart(tmp_path):
    """bench/bench_faults.py: a gunicorn worker SIGKILLed inside the submit transaction stores nothing and the
    retry stores the ranking once; a PostgreSQL restart answers 503 + Retry-After while it is down and loses
    nothing. Bounded: the script's own timeouts, and this one."""
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        import bench_faults
    finally:
        sys.path.pop(0)
    if bench_faults.postgres_bindir() is None:
        if IN_CI:
            pytest.fail("CI=true and no PostgreSQL server binaries (initdb, pg_ctl)", pytrace=False)
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    out = tmp_path / "faults.json"
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "WORKBENCH_SQLITE_PATH")}
    done = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "bench_faults.py"), "--json", str(out)],
                          cwd=str(REPO_ROOT), env=env, capture_output=True, text=True, timeout=400)
    assert out.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    failed = [name for name, ok in results["checks"].items() if not ok]
    assert not failed and done.returncode == 0, (failed, done.stdout[-3000:], done.stderr[-2000:])
    assert results["kill_mid_submit"]["rankings_after_kill"] == 0
    assert results["kill_mid_submit"]["rankings_after_retry"] == 1
    assert set(results["postgres_restart"]["statuses_while_down"].values()) == {503}
