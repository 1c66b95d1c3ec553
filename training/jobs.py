"""Launching and steering queued work: training runs (create queued + enqueue), cancel, resume/retry, stale
detection, and the non-training jobs (a new annotation round, an RM check on new rankings).

Requests call these; nothing here trains. The worker (`manage.py db_worker`) executes what is enqueued.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from training import roots
from training.models import Job, TrainingRun
from training.services import create_run, default_output_dir, request_cancel
from training.tasks import execute_job, execute_training_run, run_log_path

logger = logging.getLogger("training.jobs")

OUTPUT_DIR_FIELD = "output_dir"
RESUME_FIELD = "resume"


class LaunchError(ValueError):
    """The launch cannot go ahead (bad source, nothing to resume…); the message is for the user."""


def _config_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


# --- Training runs ---------------------------------------------------------------------------------------


def launch_run(
    *,
    kind: str,
    config: Any,
    created_by=None,
    name: str = "",
    project=None,
    snapshot=None,
    reward_model_run: TrainingRun | None = None,
    resumed_from: TrainingRun | None = None,
    output_dir: str | Path | None = None,
) -> TrainingRun:
    """Create a queued TrainingRun and enqueue its execution; return the run.

    `config` is the trainer's config (a dataclass, already validated, or its dict). The output directory is
    generated under WORKBENCH_RUNS_ROOT (`<kind>-<id>`) unless `output_dir` names one there already (a resume
    continues in its parent's directory); it is written into the config so the trainer and the run agree.
    """
    values = _config_dict(config)
    with transaction.atomic():
        run = create_run(
            kind=kind, config=values, name=name, created_by=created_by, project=project, snapshot=snapshot,
            reward_model_run=reward_model_run, resumed_from=resumed_from,
        )
        if output_dir is None:
            out = default_output_dir(run=run).resolve()
        else:
            out = roots.resolve_inside(output_dir, [roots.runs_root()], must_exist=False)
        if OUTPUT_DIR_FIELD in values:
            values[OUTPUT_DIR_FIELD] = str(out)
        run.config = values
        run.output_dir = str(out)
        run.log_path = str(run_log_path(run=run))
        result = execute_training_run.enqueue(run.pk)
        run.task_id = str(result.id)
        run.save(update_fields=["config", "output_dir", "log_path", "task_id"])
    logger.info("launched %s run %s (task %s) into %s", kind, run.pk, run.task_id, out)
    return run


def _validated(config_cls: type, values: dict[str, Any]) -> dict[str, Any]:
    from training.rlhf.configs import ConfigError

    try:
        return dataclasses.asdict(config_cls(**values))
    except ConfigError as exc:
        raise LaunchError(str(exc)) from exc


def launch_rm_run(
    *,
    config: Any,
    snapshot=None,
    project=None,
    export_options: dict[str, Any] | None = None,
    name: str = "",
    created_by=None,
) -> TrainingRun:
    """Queue a reward-model run on a recorded snapshot, or on `project` exported now (a new snapshot under
    WORKBENCH_DATA_ROOT/snapshots/, recorded in the database like any other)."""
    from training.rlhf.rm_config import RewardModelConfig

    if (snapshot is None) == (project is None):
        raise LaunchError("Choose a snapshot, or a project to export now (not both).")
    if project is not None:
        from annotate.services.exporting import ExportError, export_snapshot, snapshot_dir_for

        stamp = timezone.now().strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        try:
            snapshot = export_snapshot(
                project=project, out_dir=snapshot_dir_for(project=project, name=f"rm-{stamp}"),
                created_by=created_by, **(export_options or {}),
            )
        except ExportError as exc:
            raise LaunchError(str(exc)) from exc
    values = _config_dict(config)
    values["dataset"] = snapshot.path
    values = _validated(RewardModelConfig, values)
    return launch_run(
        kind=TrainingRun.Kind.RM, config=values, name=name, created_by=created_by, project=snapshot.project,
        snapshot=snapshot,
    )


def write_project_prompts(*, project) -> Path:
    """The project's prompts (distinct texts, every round) as a JSONL prompt file under the data root."""
    import json

    out_dir = roots.data_root() / "prompts"
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
    path = out_dir / f"{project.pk}-{stamp}.jsonl"
    seen: set[str] = set()
    lines = []
    for prompt in project.prompts.order_by("pk").iterator(chunk_size=2000):
        if prompt.text_hash in seen:
            continue
        seen.add(prompt.text_hash)
        record = {"id": prompt.external_id or str(prompt.pk), "prompt": prompt.text, "metadata": prompt.metadata}
        lines.append(json.dumps(record, ensure_ascii=False))
    if not lines:
        raise LaunchError(f"Project {project} has no prompts.")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def launch_ppo_run(
    *, config: Any, reward_model_run: TrainingRun, project=None, name: str = "", created_by=None
) -> TrainingRun:
    """Queue a PPO run scored by `reward_model_run`; with `project`, its prompts are written to a prompt file
    under WORKBENCH_DATA_ROOT/prompts/ first."""
    from training.rlhf.ppo_config import PPOConfig

    if reward_model_run.kind != TrainingRun.Kind.RM or reward_model_run.status != TrainingRun.Status.SUCCEEDED:
        raise LaunchError("The reward model must come from a reward-model run that succeeded.")
    values = _config_dict(config)
    if project is not None:
        values["prompts"] = str(write_project_prompts(project=project))
    values = _validated(PPOConfig, values)
    return launch_run(
        kind=TrainingRun.Kind.PPO, config=values, name=name, created_by=created_by,
        project=project or reward_model_run.project, reward_model_run=reward_model_run,
    )


def cancel_run(*, run: TrainingRun) -> TrainingRun:
    """Graceful stop: the trainer sees `should_stop()`, writes a checkpoint and ends as cancelled. A queued
    run that no worker has picked up is cancelled at once."""
    if not run.is_active:
        raise LaunchError(f"Run {run.pk} has already ended ({run.get_status_display().lower()}).")
    request_cancel(run=run)
    return run


def can_resume(run: TrainingRun) -> bool:
    return run.status in (TrainingRun.Status.FAILED, TrainingRun.Status.CANCELLED) and run.checkpoints.exists()


def resume_run(*, run: TrainingRun, created_by=None) -> TrainingRun:
    """A new run that continues `run`: same config and output directory with resume on, so the trainer
    loads the last checkpoint there. Without a checkpoint it is a retry from scratch in a fresh directory."""
    if run.is_active:
        raise LaunchError(f"Run {run.pk} is still {run.get_status_display().lower()}; cancel it first.")
    config = dict(run.config or {})
    resuming = run.checkpoints.exists()
    textual = isinstance(config.get(RESUME_FIELD), str)  # RM: "last" / a directory; a flag otherwise
    if resuming:
        config[RESUME_FIELD] = "last" if textual else True
        output_dir: str | None = run.output_dir
    else:
        if RESUME_FIELD in config:
            config[RESUME_FIELD] = "" if textual else False
        output_dir = None
    verb = "resume" if resuming else "retry"
    return launch_run(
        kind=run.kind, config=config, created_by=created_by, name=(run.name or f"run {run.pk}") + f" ({verb})",
        project=run.project, snapshot=run.snapshot, reward_model_run=run.reward_model_run, resumed_from=run,
        output_dir=output_dir,
    )


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
) -> Job:
    """Queue sampling K responses per prompt from a policy into the project's next round (see
    `training.rounds.sample_new_round`). Model paths must lie under a model root or the runs root."""
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
    return enqueue_job(
        kind=Job.Kind.NEW_ROUND, params=params, project=project, training_run=training_run, created_by=created_by
    )


def launch_rm_check(*, project, rm_run: TrainingRun, created_by=None) -> Job:
    """Queue scoring the project's rankings that `rm_run` did not train on with its reward model."""
    if rm_run.kind != TrainingRun.Kind.RM or rm_run.status != TrainingRun.Status.SUCCEEDED:
        raise LaunchError("Pick a reward-model run that succeeded.")
    return enqueue_job(kind=Job.Kind.RM_EVAL, params={}, project=project, training_run=rm_run, created_by=created_by)


def _new_round_body(*, job: Job) -> dict[str, Any]:
    from training.rounds import next_round, sample_new_round

    params = dict(job.params)
    if job.project is None:
        raise LaunchError("The project of this job was deleted.")
    if not params.get("round"):
        # Fixed on first execution and kept, so the job's page (and a re-run) name the same round.
        params["round"] = next_round(project=job.project)
        Job.objects.filter(pk=job.pk).update(params=params)
    return sample_new_round(
        project=job.project, model_path=params["model_path"], training_run=job.training_run, k=params.get("k"),
        sampling=params.get("sampling") or {}, from_round=params.get("from_round"),
        max_prompts=params.get("max_prompts"), baseline_model_path=params.get("baseline_model_path"),
        baseline_k=params.get("baseline_k") or 0, target_round=params["round"],
    )


def _rm_eval_body(*, job: Job) -> dict[str, Any]:
    from training.rounds import rm_accuracy_on_new_rankings

    if job.project is None or job.training_run is None:
        raise LaunchError("The project or the reward-model run of this job was deleted.")
    return rm_accuracy_on_new_rankings(project=job.project, rm_run=job.training_run)


JOB_BODIES = {Job.Kind.NEW_ROUND: _new_round_body, Job.Kind.RM_EVAL: _rm_eval_body}
