"""The job worker: a queued run executed as a child process, with heartbeat, log, crash and cancel handling,
and stale-run detection. The child is tests/training/fake_trainer.py (the real run services, no training)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from training import jobs, launching, tasks
from training.models import Checkpoint, Metric, TrainingRun
from training.services import request_cancel

pytestmark = pytest.mark.django_db(transaction=True)


def queued_run(**fields) -> TrainingRun:
    return launching.launch_run(kind="rm", options={"model": "fake", "dataset": "fake"}, **fields)


def test_a_run_succeeds_with_host_pid_log_and_metrics(roots_in_tmp, fake_trainer):
    fake_trainer("succeed", steps=4)
    run = queued_run(name="ok")
    result = tasks.execute_training_run.call(run.pk)
    run.refresh_from_db()
    assert result == {"run_id": run.pk, "status": "succeeded", "exit_code": 0}
    assert run.status == TrainingRun.Status.SUCCEEDED
    assert run.exit_code == 0 and run.pid and run.host
    assert run.started_at and run.finished_at and run.heartbeat_at
    assert "fake_trainer.py" in " ".join(run.command)
    assert Path(run.log_path).is_relative_to(roots_in_tmp["runs"])
    log = Path(run.log_path).read_text()
    assert "step 4 loss 0.250" in log and "done" in log and "the trainer exited with status 0" in log
    assert sorted(Metric.objects.filter(run=run, name="loss").values_list("step", flat=True)) == [1, 2, 3, 4]
    assert run.evaluation == {"accuracy": 0.75}


def test_a_crash_marks_the_run_failed_with_the_traceback(roots_in_tmp, fake_trainer):
    fake_trainer("crash")
    run = queued_run()
    tasks.execute_training_run.call(run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED
    assert run.exit_code not in (0, None)
    assert "Traceback (most recent call last)" in run.error
    assert "RuntimeError: boom: the fake trainer crashed at step 2" in run.error
    assert "RuntimeError: boom" in Path(run.log_path).read_text()  # the child's stderr reached the log


def test_a_child_that_dies_without_a_word_is_marked_failed_with_its_log_tail(roots_in_tmp, fake_trainer):
    fake_trainer("die")
    run = queued_run()
    tasks.execute_training_run.call(run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED
    assert run.exit_code == 3
    assert "exited with status 3 without recording a result" in run.error
    assert "about to vanish" in run.error  # the log tail
    assert run.finished_at is not None


def _cancel_when_running(run_id: int, *, after_steps: int = 2) -> threading.Thread:
    def cancel():
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if Metric.objects.filter(run_id=run_id, name="loss", step__gte=after_steps).exists():
                    request_cancel(run=TrainingRun.objects.get(pk=run_id))
                    return
                time.sleep(0.1)
        finally:
            connection.close()

    thread = threading.Thread(target=cancel, daemon=True)
    thread.start()
    return thread


def test_cancel_stops_the_run_gracefully_and_keeps_a_checkpoint(roots_in_tmp, fake_trainer):
    fake_trainer("until-cancel")
    run = queued_run()
    canceller = _cancel_when_running(run.pk)
    tasks.execute_training_run.call(run.pk)
    canceller.join(timeout=5)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.CANCELLED
    assert run.exit_code == 0
    checkpoint = Checkpoint.objects.get(run=run)
    assert Path(checkpoint.path, "state.json").is_file()
    assert Path(checkpoint.path).is_relative_to(Path(run.output_dir))
    assert "stopped at step" in Path(run.log_path).read_text()
    # …and it can be resumed from that checkpoint: same directory, resume "last".
    resumed = launching.resume_run(run=run)
    assert resumed.pk == run.pk and resumed.output_dir == run.output_dir
    assert resumed.config["resume"] == "last" and resumed.status == TrainingRun.Status.QUEUED


def test_a_trainer_that_ignores_the_cancel_is_terminated_after_the_grace_period(roots_in_tmp, fake_trainer, settings):
    settings.WORKBENCH_CANCEL_GRACE_SECONDS = 1
    settings.WORKBENCH_HEARTBEAT_SECONDS = 1
    fake_trainer("ignore-cancel")
    run = queued_run()
    canceller = _cancel_when_running(run.pk)
    started = time.monotonic()
    tasks.execute_training_run.call(run.pk)
    canceller.join(timeout=5)
    run.refresh_from_db()
    assert time.monotonic() - started < 60
    assert run.status == TrainingRun.Status.CANCELLED
    assert run.exit_code == -15  # SIGTERM
    assert "did not stop by itself" in run.error
    assert "sending SIGTERM" in Path(run.log_path).read_text()


def test_a_run_cancelled_while_queued_is_never_started(roots_in_tmp, fake_trainer):
    fake_trainer("succeed")
    run = queued_run()
    launching.cancel_run(run=run)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.CANCELLED
    result = tasks.execute_training_run.call(run.pk)
    assert result["skipped"] is True
    run.refresh_from_db()
    assert run.pid is None and run.started_at is None


def test_a_stale_heartbeat_marks_the_run_failed(roots_in_tmp, settings):
    settings.WORKBENCH_STALE_AFTER_SECONDS = 120
    run = queued_run()
    old = timezone.now() - timedelta(seconds=600)
    fresh = queued_run()
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.RUNNING, started_at=old, heartbeat_at=old, host="gpu-7", pid=4242
    )
    TrainingRun.objects.filter(pk=fresh.pk).update(
        status=TrainingRun.Status.RUNNING, started_at=old, heartbeat_at=timezone.now() - timedelta(seconds=30)
    )
    marked = jobs.reap_stale_runs()
    assert [r.pk for r in marked] == [run.pk]
    run.refresh_from_db()
    fresh.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED
    assert run.error.startswith("worker lost (no heartbeat since ")
    assert "on gpu-7 (pid 4242)" in run.error
    assert run.finished_at is not None
    assert fresh.status == TrainingRun.Status.RUNNING  # heartbeat within the limit: left alone


def test_reap_stale_runs_command_and_dashboard_load_mark_stale_runs(roots_in_tmp, settings, staff_client, capsys):
    old = timezone.now() - timedelta(hours=1)
    first, second = queued_run(), queued_run()
    TrainingRun.objects.filter(pk__in=[first.pk, second.pk]).update(
        status=TrainingRun.Status.RUNNING, started_at=old, heartbeat_at=old
    )
    call_command("reap_stale_runs")
    assert "2 stale runs marked failed." in capsys.readouterr().out
    assert TrainingRun.objects.filter(status=TrainingRun.Status.FAILED).count() == 2

    third = queued_run()
    TrainingRun.objects.filter(pk=third.pk).update(status=TrainingRun.Status.RUNNING, started_at=old, heartbeat_at=old)
    assert staff_client.get("/dashboard/").status_code == 200
    third.refresh_from_db()
    assert third.status == TrainingRun.Status.FAILED and "worker lost" in third.error


def test_the_worker_keeps_the_heartbeat_fresh_while_the_child_lives(roots_in_tmp, fake_trainer, settings):
    """Heartbeats come from the worker thread too, not only from the trainer's reports."""
    settings.WORKBENCH_HEARTBEAT_SECONDS = 1
    fake_trainer("ignore-cancel")
    run = queued_run()
    seen = []

    def watch():
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(seen) < 3:
                beat = TrainingRun.objects.filter(pk=run.pk).values_list("heartbeat_at", flat=True).first()
                if beat and (not seen or beat > seen[-1]):
                    seen.append(beat)
                time.sleep(0.3)
            request_cancel(run=TrainingRun.objects.get(pk=run.pk))
        finally:
            connection.close()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    settings.WORKBENCH_CANCEL_GRACE_SECONDS = 0
    tasks.execute_training_run.call(run.pk)
    watcher.join(timeout=5)
    assert len(seen) >= 3


def test_a_queued_run_whose_task_failed_is_marked_failed(roots_in_tmp):
    run = queued_run()
    DBTaskResult.objects.filter(id=run.task_id).update(
        status="FAILED", traceback="Traceback …\nImportError: no module named trainer"
    )
    marked = jobs.reap_stale_runs()
    assert [r.pk for r in marked] == [run.pk]
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED
    assert "ImportError: no module named trainer" in run.error


def test_the_trainer_command_uses_the_launcher_and_the_same_database(settings, roots_in_tmp):
    run = queued_run()
    settings.WORKBENCH_LAUNCHER = ""
    command = tasks.build_command(run=run)
    assert command[1:] == [str(Path(settings.BASE_DIR) / "manage.py"), "train_rm", "--run-id", str(run.pk)]
    settings.WORKBENCH_LAUNCHER = "accelerate launch --num_processes 2"
    command = tasks.build_command(run=run)
    assert Path(command[0]).name == "accelerate"
    assert command[1:4] == ["launch", "--num_processes", "2"]
    assert command[-3:] == ["train_rm", "--run-id", str(run.pk)]
    env = tasks.child_environment()
    if connection.vendor == "sqlite":
        assert env["WORKBENCH_SQLITE_PATH"] == str(connection.settings_dict["NAME"])
    else:
        assert env["DATABASE_URL"].rsplit("/", 1)[-1].split("?")[0] == connection.settings_dict["NAME"]
    assert env["WORKBENCH_RUNS_ROOT"] == str(roots_in_tmp["runs"])
    assert env["PYTHONUNBUFFERED"] == "1"
