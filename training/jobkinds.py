"""The registry of job kinds: what the worker runs for each kind of `Job` (training runs are not jobs; see
training/runkinds.py). `tasks.run_job` looks the body up here; `jobs` queues them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from annotate.services.rounds import next_round
from training.models import Job
from training.rounds import rm_accuracy_on_new_rankings, sample_new_round


class JobInputMissing(RuntimeError):
    """What a queued job was about (its project, its run) was deleted before it ran."""


def new_round(*, job: Job) -> dict[str, Any]:
    params = dict(job.params)
    if job.project is None:
        raise JobInputMissing("The project of this job was deleted.")
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


def rm_eval(*, job: Job) -> dict[str, Any]:
    if job.project is None or job.training_run is None:
        raise JobInputMissing("The project or the reward-model run of this job was deleted.")
    return rm_accuracy_on_new_rankings(project=job.project, rm_run=job.training_run)


JOB_BODIES: dict[str, Callable[..., dict[str, Any]]] = {Job.Kind.NEW_ROUND: new_round, Job.Kind.RM_EVAL: rm_eval}
