"""Queued jobs, executed by `python manage.py db_worker` (django-tasks, database backend).

`execute_training_run` supervises one training run: it runs `manage.py train_rm|train_ppo --run-id N` as a
child process (behind `settings.WORKBENCH_LAUNCHER`, e.g. "accelerate launch", when configured), records
host, pid and the argv, streams the child's stdout and stderr into the run's log file, keeps the run's
heartbeat fresh while the child lives, escalates a cancel that the trainer does not honour in time, and
marks the run failed with the tail of its log when the child dies without recording how it ended.

`execute_job` runs a non-training job in the worker itself: sampling a new annotation round from a policy,
or scoring the newest rankings with a reward model.

Task functions live at module level (django-tasks requires it) and take only ids: the database row is the
state, the task is the trigger.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.db import close_old_connections, connection, connections
from django.utils import timezone
from django_tasks import task

from training.jobkinds import JOB_BODIES
from training.logs import run_log_path, tail_text
from training.models import Job, TrainingRun
from training.runkinds import run_kind

logger = logging.getLogger("training.worker")

# After a cancel, the trainer has settings.WORKBENCH_CANCEL_GRACE_SECONDS (default 300) to checkpoint and stop
# before the worker sends SIGTERM, then another TERMINATE_GRACE_SECONDS before SIGKILL.
DEFAULT_CANCEL_GRACE_SECONDS = 300
TERMINATE_GRACE_SECONDS = 30


def cancel_grace_seconds() -> float:
    return float(getattr(settings, "WORKBENCH_CANCEL_GRACE_SECONDS", DEFAULT_CANCEL_GRACE_SECONDS))


# --- The child process ---------------------------------------------------------------------------------


def build_command(*, run: TrainingRun) -> list[str]:
    """The argv that trains `run`: `[python] manage.py train_rm --run-id N`, behind the launcher if any."""
    manage = str(Path(settings.BASE_DIR) / "manage.py")
    args = [manage, run_kind(run.kind).command, "--run-id", str(run.pk)]
    launcher = shlex.split(settings.WORKBENCH_LAUNCHER or "")
    if not launcher:
        return [sys.executable, *args]
    # "accelerate launch …": prefer the accelerate installed beside this interpreter (the project's venv).
    beside = Path(sys.executable).parent / launcher[0]
    if "/" not in launcher[0] and beside.exists():
        launcher[0] = str(beside)
    return [*launcher, *args]


def database_environment() -> dict[str, str]:
    """Environment variables that point a child process at the database this process is using.

    The child re-reads settings from the environment; in tests (or with several databases on one host) the
    database in use can differ from the configured one, so name it explicitly.
    """
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        if connection.is_in_memory_db():
            raise RuntimeError(
                "The worker's SQLite database is in memory, so a trainer process cannot reach it; use a file "
                "(tests: set WORKBENCH_TEST_SQLITE_PATH)."
            )
        return {"WORKBENCH_SQLITE_PATH": str(db["NAME"])}
    url = os.environ.get("DATABASE_URL", "")
    if url:
        parts = urlsplit(url)
        return {"DATABASE_URL": urlunsplit(parts._replace(path="/" + str(db["NAME"])))}
    return {}


def child_environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(database_environment())
    env["PYTHONUNBUFFERED"] = "1"  # log lines reach the file (and the dashboard) as they are printed
    env["DJANGO_SETTINGS_MODULE"] = os.environ.get("DJANGO_SETTINGS_MODULE") or settings.SETTINGS_MODULE
    # Same roots as this worker, so paths the run names resolve the same way in the child.
    env["WORKBENCH_MODEL_ROOTS"] = ",".join(str(p) for p in settings.WORKBENCH_MODEL_ROOTS)
    env["WORKBENCH_DATA_ROOT"] = str(settings.WORKBENCH_DATA_ROOT)
    env["WORKBENCH_RUNS_ROOT"] = str(settings.WORKBENCH_RUNS_ROOT)
    return env


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class _Supervisor:
    """Watches one child: heartbeat, cancel escalation, worker shutdown."""

    def __init__(self, run_id: int, child: subprocess.Popen, log) -> None:
        self.run_id = run_id
        self.child = child
        self.log = log
        self.cancel_seen_at: float | None = None
        self.terminated_at: float | None = None
        self.killed = False

    def note(self, message: str) -> None:
        stamp = timezone.now().strftime("%Y-%m-%d %H:%M:%S")
        self.log.write(f"[worker {stamp}] {message}\n".encode())
        self.log.flush()

    def beat(self) -> bool:
        """Refresh the heartbeat; return whether a cancel was requested."""
        TrainingRun.objects.filter(pk=self.run_id, status__in=TrainingRun.ACTIVE_STATUSES).update(
            heartbeat_at=timezone.now()
        )
        return TrainingRun.objects.filter(pk=self.run_id, cancel_requested=True).exists()

    def watch(self) -> int:
        interval = max(1, settings.WORKBENCH_HEARTBEAT_SECONDS)
        next_beat = 0.0
        while True:
            try:
                return self.child.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + interval
                try:
                    cancel = self.beat()
                except Exception:  # a busy database must not kill the supervision of a live child
                    logger.exception("run %s: heartbeat failed", self.run_id)
                    cancel = False
                    close_old_connections()
                if cancel and self.cancel_seen_at is None:
                    self.cancel_seen_at = now
                    self.note("cancel requested; waiting for the trainer to checkpoint and stop")
            self.escalate(now)

    def escalate(self, now: float) -> None:
        if self.cancel_seen_at is not None and self.terminated_at is None:
            grace = cancel_grace_seconds()
            if now - self.cancel_seen_at > grace:
                self.note(f"the trainer did not stop within {grace:g}s of the cancel; sending SIGTERM")
                self.terminate()
        if self.terminated_at is not None and not self.killed and now - self.terminated_at > TERMINATE_GRACE_SECONDS:
            self.note("the trainer ignored SIGTERM; sending SIGKILL")
            self.child.kill()
            self.killed = True

    def terminate(self) -> None:
        self.terminated_at = time.monotonic()
        self.child.terminate()

    def stop_now(self) -> None:
        """The worker itself is going away: stop the child, wait briefly, then kill it."""
        if self.child.poll() is not None:
            return
        self.note("the worker is stopping; sending SIGTERM to the trainer")
        self.terminate()
        try:
            self.child.wait(timeout=TERMINATE_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait()


def _finish_after_exit(*, run_id: int, code: int, log_path: Path, supervisor: _Supervisor) -> TrainingRun:
    """Record the exit status; if the child died without marking the run, mark it here."""
    TrainingRun.objects.filter(pk=run_id).update(exit_code=code, heartbeat_at=timezone.now())
    run = TrainingRun.objects.get(pk=run_id)
    if run.status in TrainingRun.ACTIVE_STATUSES:
        how = _describe_exit(code)
        if run.cancel_requested and supervisor.terminated_at is not None:
            status = TrainingRun.Status.CANCELLED
            error = f"Cancelled: the trainer did not stop by itself and {how}; no checkpoint was written at the stop."
        else:
            status = TrainingRun.Status.FAILED
            error = f"The trainer process {how} without recording a result."
        tail = tail_text(log_path, max_bytes=8000)
        if tail:
            error += "\n\nLast lines of its log:\n" + tail
        TrainingRun.objects.filter(pk=run_id, status__in=TrainingRun.ACTIVE_STATUSES).update(
            status=status, error=error, finished_at=timezone.now()
        )
    elif run.status == TrainingRun.Status.FAILED and not run.error:
        error = f"The trainer process {_describe_exit(code)}.\n\n" + tail_text(log_path, max_bytes=8000)
        TrainingRun.objects.filter(pk=run_id).update(error=error)
    run.refresh_from_db()
    return run


def supervise_training_run(*, run_id: int) -> dict[str, Any]:
    """Execute one queued run as a child process and stay with it until it ends (see the module docstring)."""
    run = TrainingRun.objects.get(pk=run_id)
    if run.status != TrainingRun.Status.QUEUED:
        # Cancelled while queued, or executed already (a task re-delivered after a worker restart).
        return {"run_id": run_id, "status": run.status, "skipped": True}
    output_dir = Path(run.output_dir)  # set by the launch pipeline (training.launching)
    log_path = Path(run.log_path) if run.log_path else run_log_path(kind=run.kind, run_id=run.pk,
                                                                    output_dir=output_dir)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = build_command(run=run)
    host = socket.gethostname()
    now = timezone.now()
    claimed = TrainingRun.objects.filter(pk=run_id, status=TrainingRun.Status.QUEUED).update(
        status=TrainingRun.Status.RUNNING, started_at=now, heartbeat_at=now, finished_at=None, host=host,
        pid=None, command=command, log_path=str(log_path), exit_code=None, error="",
    )
    if not claimed:
        run.refresh_from_db()
        return {"run_id": run_id, "status": run.status, "skipped": True}

    with open(log_path, "ab", buffering=0) as log:
        supervisor = None
        try:
            env = child_environment()
            log.write(f"[worker {now:%Y-%m-%d %H:%M:%S}] {host}: {shlex.join(command)}\n".encode())
            child = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=str(settings.BASE_DIR),
            )
        except Exception:
            error = "The worker could not start the trainer:\n" + traceback.format_exc()
            log.write(error.encode())
            TrainingRun.objects.filter(pk=run_id).update(
                status=TrainingRun.Status.FAILED, error=error, finished_at=timezone.now()
            )
            return {"run_id": run_id, "status": TrainingRun.Status.FAILED, "exit_code": None}
        TrainingRun.objects.filter(pk=run_id).update(pid=child.pid)
        logger.info("run %s: started pid %s on %s (%s)", run_id, child.pid, host, output_dir)
        supervisor = _Supervisor(run_id, child, log)
        try:
            code = supervisor.watch()
        except BaseException:
            # The worker was interrupted (a second Ctrl+C, SIGTERM while forced…): don't leave an orphan.
            supervisor.stop_now()
            close_old_connections()
            TrainingRun.objects.filter(pk=run_id, status__in=TrainingRun.ACTIVE_STATUSES).update(
                status=TrainingRun.Status.FAILED,
                error="The worker was stopped while the run was in progress; resume it from its last checkpoint.",
                finished_at=timezone.now(), exit_code=child.poll(),
            )
            raise
        supervisor.note(f"the trainer {_describe_exit(code)}")
    run = _finish_after_exit(run_id=run_id, code=code, log_path=log_path, supervisor=supervisor)
    logger.info("run %s: %s (exit %s)", run_id, run.status, code)
    return {"run_id": run_id, "status": run.status, "exit_code": code}


@task()
def execute_training_run(run_id: int) -> dict[str, Any]:
    """django-tasks entry point: train run `run_id` in a child process (see `supervise_training_run`)."""
    return supervise_training_run(run_id=run_id)


# --- Jobs that run inside the worker --------------------------------------------------------------------


class _JobHeartbeat(threading.Thread):
    """Refreshes a job's heartbeat from a side thread while the job's body runs in the worker's thread."""

    def __init__(self, job_id: int) -> None:
        super().__init__(name=f"job-{job_id}-heartbeat", daemon=True)
        self.job_id = job_id
        self.stopped = threading.Event()

    def run(self) -> None:
        interval = max(1, settings.WORKBENCH_HEARTBEAT_SECONDS)
        try:
            while not self.stopped.wait(interval):
                try:
                    Job.objects.filter(pk=self.job_id, status=Job.Status.RUNNING).update(heartbeat_at=timezone.now())
                except Exception:  # pragma: no cover - a busy database; try again next beat
                    logger.exception("job %s: heartbeat failed", self.job_id)
        finally:
            connections.close_all()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)


def run_job(*, job_id: int) -> dict[str, Any]:
    """Execute one queued Job in this process, recording its result or its traceback."""
    now = timezone.now()
    claimed = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED).update(
        status=Job.Status.RUNNING, started_at=now, heartbeat_at=now, host=socket.gethostname(), pid=os.getpid()
    )
    job = Job.objects.get(pk=job_id)
    if not claimed:
        return {"job_id": job_id, "status": job.status, "skipped": True}
    heartbeat = _JobHeartbeat(job_id)
    heartbeat.start()
    try:
        result = JOB_BODIES[job.kind](job=job)
    except Exception:
        error = traceback.format_exc()
        logger.error("job %s failed:\n%s", job_id, error)
        Job.objects.filter(pk=job_id).update(status=Job.Status.FAILED, error=error, finished_at=timezone.now())
        return {"job_id": job_id, "status": Job.Status.FAILED}
    finally:
        heartbeat.stop()
    Job.objects.filter(pk=job_id).update(status=Job.Status.SUCCEEDED, result=result, finished_at=timezone.now())
    return {"job_id": job_id, "status": Job.Status.SUCCEEDED}


@task()
def execute_job(job_id: int) -> dict[str, Any]:
    """django-tasks entry point: run Job `job_id` (a new round, an RM check) in the worker process."""
    return run_job(job_id=job_id)
