"""Queued work that is not a training run — a new annotation round, an RM check on new rankings (their bodies
are in training/jobkinds.py) — and stale detection for runs and jobs whose worker went silent. Training runs
are launched by training/launching.py.

Requests call these; nothing here trains. The worker (`manage.py db_worker`) executes what is enqueued.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from training import roots
from training.launching import LaunchError
from training.models import Job, TrainingRun
from training.tasks import execute_job

logger = logging.getLogger("training.jobs")

def _stale_cutoff(now) -> Any:
    return now - timedelta(seconds=settings.WORKBENCH_STALE_AFTER_SECONDS)


def reap_stale_runs(*, now=None) -> list[TrainingRun]:
    """Mark runs (and jobs) whose worker went silent as failed; return the runs marked.

    A run is stale when it is running (or was picked up by a worker) and its heartbeat is older than
    WORKBENCH_STALE_AFTER_SECONDS. A queued run whose queue task ended without executing it is failed too,
    with the task's error. Cheap enough to call on every dashboard load.
    """
    now = now or timezone.now()
    cutoff = _stale_cutoff(now)
    marked: list[TrainingRun] = []
    stale_q = Q(status=TrainingRun.Status.RUNNING) & (
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
    )
    candidates = list(TrainingRun.objects.filter(stale_q).values_list("pk", flat=True))
    for pk in candidates:
        with transaction.atomic():
            run = TrainingRun.objects.select_for_update().filter(stale_q, pk=pk).first()
            if run is None:
                continue
            since = run.heartbeat_at or run.started_at
            where = f" on {run.host}" + (f" (pid {run.pid})" if run.pid else "") if run.host else ""
            run.status = TrainingRun.Status.FAILED
            run.finished_at = now
            run.error = (
                f"worker lost (no heartbeat since {timezone.localtime(since):%Y-%m-%d %H:%M:%S %Z}){where}. "
                f"The worker or the machine stopped without recording how the run ended; resume it from its "
                f"last checkpoint." + (f"\n\n{run.error}" if run.error else "")
            )
            run.save(update_fields=["status", "finished_at", "error"])
            marked.append(run)
            logger.warning("run %s: %s", run.pk, run.error.splitlines()[0])
    marked += _reap_orphaned_queued_runs(now=now)
    _reap_stale_jobs(now=now)
    return marked


def _reap_orphaned_queued_runs(*, now) -> list[TrainingRun]:
    from django_tasks_db.models import DBTaskResult

    queued = {
        run.task_id: run for run in TrainingRun.objects.filter(status=TrainingRun.Status.QUEUED).exclude(task_id="")
    }
    if not queued:
        return []
    ended = DBTaskResult.objects.filter(id__in=list(queued), status__in=["FAILED", "SUCCESSFUL"])
    marked = []
    for task in ended:
        run = queued[str(task.id)]
        detail = task.traceback or "the task finished without starting the run"
        updated = TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.QUEUED).update(
            status=TrainingRun.Status.FAILED, finished_at=now,
            error=f"The queued task ended without running the trainer:\n{detail}",
        )
        if updated:
            run.refresh_from_db()
            marked.append(run)
    return marked


def _reap_stale_jobs(*, now) -> int:
    cutoff = _stale_cutoff(now)
    stale = Job.objects.filter(status=Job.Status.RUNNING).filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
    )
    count = 0
    for job in stale:
        since = job.heartbeat_at or job.started_at
        count += Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(
            status=Job.Status.FAILED, finished_at=now,
            error=f"worker lost (no heartbeat since {timezone.localtime(since):%Y-%m-%d %H:%M:%S %Z}) on {job.host}.",
        )
    return count


# --- Jobs (run inside the worker) ------------------------------------------------------------------------


def enqueue_job(
    *, kind: str, params: dict[str, Any], project=None, training_run: TrainingRun | None = None, created_by=None
) -> Job:
    with transaction.atomic():
        job = Job.objects.create(
            kind=kind, params=params, project=project, training_run=training_run, created_by=created_by
        )
        job.task_id = str(execute_job.enqueue(job.pk).id)
        job.save(update_fields=["task_id"])
    return job


def launch_new_round(
    *,
    project,
    model_path: str | Path,
    training_run: TrainingRun | None = None,
    k: int | None = None,
    sampling: dict[str, Any] | None = None,
    from_round: int | None = None,
    max_prompts: int | None = None,
    baseline_model_path: str | Path | None = None,
    baseline_k: int = 0,
    created_by=None,
    round: int | None = None,  # noqa: A002
) -> Job:
    """Queue sampling K responses per prompt from a policy into the project's next round (see
    `training.rounds.sample_new_round`). Model paths must lie under a model root or the runs root. With
    `round` = `from_round` an existing round is sampled in place (the project wizard: nothing is copied)."""
    allowed = [*roots.model_roots(), roots.runs_root()]
    try:
        model = roots.resolve_inside(model_path, allowed)
        baseline = roots.resolve_inside(baseline_model_path, allowed) if baseline_model_path else None
    except roots.OutsideRoots as exc:
        raise LaunchError(str(exc)) from exc
    k = project.k_min if k is None else k
    if not project.k_min <= k <= project.k_max:
        raise LaunchError(f"K must be within the project's range {project.k_min}–{project.k_max}.")
    if baseline is not None and not 0 < baseline_k < k:
        raise LaunchError(f"Responses from the baseline must be between 1 and K − 1 ({k - 1}).")
    if not project.prompts.exists():
        raise LaunchError(f"Project {project} has no prompts yet.")
    params = {
        "model_path": str(model), "k": k, "sampling": dict(sampling or {}), "from_round": from_round,
        "max_prompts": max_prompts, "baseline_model_path": str(baseline) if baseline else None,
        "baseline_k": baseline_k if baseline else 0,
    }
    if round is not None:
        params["round"] = round
    return enqueue_job(
        kind=Job.Kind.NEW_ROUND, params=params, project=project, training_run=training_run, created_by=created_by
    )


def launch_rm_check(*, project, rm_run: TrainingRun, created_by=None) -> Job:
    """Queue scoring the project's rankings that `rm_run` did not train on with its reward model."""
    if rm_run.kind != TrainingRun.Kind.RM or rm_run.status != TrainingRun.Status.SUCCEEDED:
        raise LaunchError("Pick a reward-model run that succeeded.")
    return enqueue_job(kind=Job.Kind.RM_EVAL, params={}, project=project, training_run=rm_run, created_by=created_by)
