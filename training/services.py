"""Run lifecycle services: create a run row, execute it in this process with the RunReporter, record success,
failure (with its traceback) or cancellation, request a cancel. Used by the launch pipeline, the train_rm /
train_ppo commands and the worker.
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

from training.models import TrainingRun
from training.reporting import RunReporter
from training.rlhf.configs import ConfigError, config_from_dict, config_to_dict
from training.rlhf.reporter import NullReporter
from training.runkinds import run_kind
from training.selectors import find_reward_model_run

logger = logging.getLogger("training.runs")


class RunCancelled(Exception):
    """Raised inside a run's body when a graceful stop finished; the run is marked cancelled."""


class NotExecutable(ValueError):
    """A queued run that cannot be executed (missing, of another kind, ended, invalid config); for the user."""


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


@contextmanager
def executing(
    *, run: TrainingRun, echo: Callable[[str], None] | None = None, progress: bool = False
) -> Iterator[RunReporter]:
    """Mark the run running, hand the body a RunReporter, then record how it ended.

    Success → succeeded (or cancelled when a stop was requested and honoured); an exception → failed with
    the traceback stored on the run, and re-raised so commands exit non-zero.
    """
    mark_running(run=run)
    reporter = RunReporter(run, echo=echo, progress=progress)
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
    finally:
        reporter.close()


def execute_run(*, run: TrainingRun, config: Any, echo: Callable[[str], None] | None = None,
                progress: bool = False) -> Any:
    """Train `run` in this process with its kind's trainer, recorded through `executing`; returns the trainer's
    result. A graceful stop ends the run as cancelled."""
    trainer = run_kind(run.kind).load_trainer()
    with executing(run=run, echo=echo, progress=progress) as reporter:
        reporter.install_signal_handlers()  # the first Ctrl+C / SIGTERM stops gracefully, with a checkpoint
        result = trainer(config, reporter=reporter)
        if result.stopped:
            raise RunCancelled(f"stopped; checkpoint {result.checkpoint}")
    return result


def execute_without_record(*, kind: str, config: Any) -> Any:
    """Train on a non-main process (under `accelerate launch`): the same trainer, reporting nowhere."""
    return run_kind(kind).load_trainer()(config, reporter=NullReporter())


def queued_run(*, run_id: int, kind: str, main: bool = True) -> tuple[TrainingRun, Any]:
    """The queued run `run_id` and its stored config, as the worker's `<command> --run-id N` executes it.

    The stored config is the one the launch pipeline built; a run recorded by other means gets its output
    directory here (`output_dir_of`) and its reward-model run linked by the directory. Only the main process
    (`main`) writes: an invalid config marks the run failed."""
    spec = run_kind(kind)
    run = TrainingRun.objects.filter(pk=run_id).select_related("snapshot", "reward_model_run").first()
    if run is None:
        raise NotExecutable(f"No training run with id {run_id}.")
    if run.kind != kind:
        raise NotExecutable(f"Run {run.pk} is a {run.get_kind_display()} run, not a {spec.noun} run.")
    if run.status not in TrainingRun.ACTIVE_STATUSES:
        raise NotExecutable(f"Run {run.pk} has already ended ({run.status}); resume or retry it from the "
                            "dashboard, which queues this run again.")
    values = {**(run.config or {})}
    values["output_dir"] = values.get("output_dir") or str(output_dir_of(run))
    try:
        config = config_from_dict(spec.config_class, values)
    except (ConfigError, TypeError) as exc:
        if main:
            mark_finished(run=run, status=TrainingRun.Status.FAILED, error=f"Invalid config: {exc}")
        raise NotExecutable(f"Run {run.pk} has an invalid config: {exc}") from exc
    if main:
        updates: dict[str, Any] = {}
        if run.output_dir != config.output_dir or run.config != config_to_dict(config):
            updates.update(output_dir=config.output_dir, config=config_to_dict(config))
        if getattr(config, "reward_model", "") and run.reward_model_run is None:
            updates["reward_model_run"] = find_reward_model_run(config.reward_model)
        if updates:
            TrainingRun.objects.filter(pk=run.pk).update(**updates)
            run.refresh_from_db()
    return run, config


def output_dir_of(run: TrainingRun) -> Path:
    """Where a run writes: its recorded directory, else <WORKBENCH_RUNS_ROOT>/<kind>-<id> (the one default)."""
    if run.output_dir:
        return Path(run.output_dir)
    return (Path(settings.WORKBENCH_RUNS_ROOT) / f"{run.kind}-{run.pk}").resolve()
