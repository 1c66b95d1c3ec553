"""Run lifecycle services: create a run, execute it with a database reporter, record success, failure
(with its traceback) or cancellation. Used by the train_rm / train_ppo commands and the job worker.
"""

from __future__ import annotations

import logging
import os
import socket
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from training.models import Checkpoint, Metric, Sample, TrainingRun

logger = logging.getLogger("training.runs")


class RunCancelled(Exception):
    """Raised inside a run's body when a graceful stop finished; the run is marked cancelled."""


def create_run(
    *,
    kind: str,
    config: dict[str, Any],
    name: str = "",
    created_by=None,
    project=None,
    snapshot=None,
    reward_model_run: TrainingRun | None = None,
    resumed_from: TrainingRun | None = None,
    output_dir: str = "",
) -> TrainingRun:
    if kind not in TrainingRun.Kind.values:
        raise ValueError(f"kind must be one of {TrainingRun.Kind.values}, got {kind!r}")
    return TrainingRun.objects.create(
        kind=kind,
        name=name,
        config=config,
        created_by=created_by,
        project=project,
        snapshot=snapshot,
        reward_model_run=reward_model_run,
        resumed_from=resumed_from,
        output_dir=output_dir,
        status=TrainingRun.Status.QUEUED,
    )


def mark_running(*, run: TrainingRun) -> None:
    now = timezone.now()
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.Status.RUNNING,
        started_at=now,
        heartbeat_at=now,
        finished_at=None,
        error="",
        host=socket.gethostname(),
        pid=os.getpid(),
    )
    run.refresh_from_db()


def mark_finished(*, run: TrainingRun, status: str, error: str = "") -> None:
    TrainingRun.objects.filter(pk=run.pk).update(status=status, finished_at=timezone.now(), error=error)
    run.refresh_from_db()


def request_cancel(*, run: TrainingRun) -> None:
    """Ask a run to stop gracefully (it checkpoints and ends as cancelled); a queued run is cancelled at once."""
    with transaction.atomic():
        locked = TrainingRun.objects.select_for_update().get(pk=run.pk)
        locked.cancel_requested = True
        if locked.status == TrainingRun.Status.QUEUED:
            locked.status = TrainingRun.Status.CANCELLED
            locked.finished_at = timezone.now()
        locked.save(update_fields=["cancel_requested", "status", "finished_at"])
    run.refresh_from_db()


class DatabaseReporter:
    """The Reporter protocol (training.rlhf.reporter) written to the database.

    Heartbeats ride on every call (at most every WORKBENCH_HEARTBEAT_SECONDS); `should_stop` re-reads the
    cancel flag at most once a second so a fast loop doesn't hammer the database.
    """

    def __init__(self, run: TrainingRun, *, echo: Callable[[str], None] | None = None) -> None:
        self.run = run
        self.echo = echo
        self._last_heartbeat = 0.0
        self._last_stop_check = 0.0
        self._stop = False

    def _now(self) -> float:
        return timezone.now().timestamp()

    def heartbeat(self, *, force: bool = False) -> None:
        now = self._now()
        if force or now - self._last_heartbeat >= settings.WORKBENCH_HEARTBEAT_SECONDS:
            TrainingRun.objects.filter(pk=self.run.pk).update(heartbeat_at=timezone.now())
            self._last_heartbeat = now

    def on_start(self, *, total_steps: int, start_step: int = 0) -> None:
        """The planned number of steps (RM optimizer steps, PPO iterations), for progress displays."""
        summary = dict(self.run.summary or {})
        summary["total_steps"] = int(total_steps)
        summary.setdefault("step", int(start_step))
        self.run.summary = summary
        TrainingRun.objects.filter(pk=self.run.pk).update(summary=summary)
        self.heartbeat(force=True)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        rows = [
            Metric(run=self.run, step=step, name=name, value=float(value))
            for name, value in metrics.items()
            if value is not None and value == value  # drop None and NaN
        ]
        # update_conflicts: a resumed run may report a step again; the newer value wins.
        Metric.objects.bulk_create(
            rows, update_conflicts=True, unique_fields=["run", "name", "step"], update_fields=["value"]
        )
        summary = dict(self.run.summary or {})
        summary.update({name: float(value) for name, value in metrics.items() if value is not None})
        summary["step"] = step
        self.run.summary = summary
        TrainingRun.objects.filter(pk=self.run.pk).update(summary=summary)
        self.heartbeat()

    def on_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        known = {"prompt", "response", "reward", "score", "kl"}
        Sample.objects.bulk_create(
            [
                Sample(
                    run=self.run,
                    step=step,
                    prompt=str(row.get("prompt", "")),
                    response=str(row.get("response", "")),
                    reward=row.get("reward"),
                    score=row.get("score"),
                    kl=row.get("kl"),
                    extra={k: v for k, v in row.items() if k not in known},
                )
                for row in samples
            ]
        )
        self.heartbeat()

    def on_checkpoint(self, step: int, path: str) -> None:
        Checkpoint.objects.create(run=self.run, step=step, path=str(path))
        self.heartbeat(force=True)

    def on_evaluation(self, results: dict[str, Any]) -> None:
        with transaction.atomic():
            run = TrainingRun.objects.select_for_update().get(pk=self.run.pk)
            evaluation = dict(run.evaluation or {})
            evaluation.update(results)
            run.evaluation = evaluation
            run.save(update_fields=["evaluation"])
        self.run.evaluation = evaluation

    def on_outputs(self, outputs: dict[str, str]) -> None:
        """What the trainer wrote (recording it on the run is helper A's follow-up)."""

    def on_log(self, message: str) -> None:
        logger.info("run %s: %s", self.run.pk, message)
        if self.echo:
            self.echo(message)
        self.heartbeat()

    def should_stop(self) -> bool:
        if self._stop:
            return True
        now = self._now()
        if now - self._last_stop_check >= 1.0:
            self._last_stop_check = now
            self._stop = TrainingRun.objects.filter(pk=self.run.pk, cancel_requested=True).exists()
            self.heartbeat()
        return self._stop


@contextmanager
def executing(*, run: TrainingRun, echo: Callable[[str], None] | None = None) -> Iterator[DatabaseReporter]:
    """Mark the run running, hand the body a DatabaseReporter, then record how it ended.

    Success → succeeded (or cancelled when a stop was requested and honoured); an exception → failed with
    the traceback stored on the run, and re-raised so commands exit non-zero.
    """
    mark_running(run=run)
    reporter = DatabaseReporter(run, echo=echo)
    try:
        yield reporter
    except RunCancelled:
        mark_finished(run=run, status=TrainingRun.Status.CANCELLED)
    except BaseException:
        mark_finished(run=run, status=TrainingRun.Status.FAILED, error=traceback.format_exc())
        raise
    else:
        stopped = TrainingRun.objects.filter(pk=run.pk, cancel_requested=True).exists()
        mark_finished(run=run, status=TrainingRun.Status.CANCELLED if stopped else TrainingRun.Status.SUCCEEDED)


def default_output_dir(*, run: TrainingRun) -> Path:
    """Where a run writes when no output directory was given: <WORKBENCH_RUNS_ROOT>/<kind>-<id>."""
    return Path(settings.WORKBENCH_RUNS_ROOT) / f"{run.kind}-{run.pk}"
