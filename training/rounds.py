"""Closing the loop, run inside the worker (never in a request):

- `sample_new_round`: copy a round's prompts into the project's next round (`annotate.services.rounds`) and
  sample K responses per prompt from a policy (a finished PPO run's, or any model under the roots), optionally
  mixing in responses of a
  second "baseline" policy so annotators rank new against old blind (each prompt's responses are inserted
  together in a random order, and the display order is shuffled per annotator by the queue);
- `rm_accuracy_on_new_rankings`: a reward model's pairwise accuracy on the rankings it did not train on
  (created after the data snapshot it was trained from).

Both read prompts in the project's prompt format (`Project.prompt_format`, `system_prompt`): the sampling
service applies it, and a policy or reward model trained on another format is refused with both named.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from django.utils import timezone

from annotate.models import Project
from annotate.services.rounds import copy_prompts_to_round, latest_round, next_round
from training.models import TrainingRun
from training.rlhf.chat_format import PromptFormat, check_same_format, format_of_project

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "max_new_tokens", "batch_size", "seed")


def sample_new_round(
    *,
    project: Project,
    model_path: str,
    training_run: TrainingRun | None = None,
    k: int | None = None,
    sampling: dict[str, Any] | None = None,
    from_round: int | None = None,
    max_prompts: int | None = None,
    baseline_model_path: str | None = None,
    baseline_k: int = 0,
    target_round: int | None = None,
) -> dict[str, Any]:
    """Create the next round of `project` and fill it with responses sampled from `model_path`.

    With `baseline_model_path` and `baseline_k` > 0, each prompt gets K − baseline_k responses from the new
    policy and baseline_k from the baseline (blind A/B within one ranking). Returns a summary for the job.
    """
    from annotate.services.sampling import PolicyShare, sample_mixed_responses, sample_project_responses

    sampling = {key: value for key, value in (sampling or {}).items() if key in SAMPLING_KEYS and value is not None}
    if training_run is not None and training_run.config:  # the policy answers prompts in the format it trained on
        check_same_format(trained=PromptFormat.from_dict({"kind": training_run.config.get("prompt_format"),
                                                          "system_prompt": training_run.config.get("system_prompt")}),
                          requested=project_format(project), what=f"the policy of {training_run}")
    k = project.k_min if k is None else k
    if not 0 <= baseline_k < k:
        raise ValueError(f"baseline_k must be between 0 and k − 1 ({k - 1}), got {baseline_k}")
    if from_round is None:
        from_round = latest_round(project=project)
        if from_round is None:
            raise ValueError(f"Project {project} has no prompts to sample a new round for.")
    round_number = target_round or next_round(project=project)
    note = f"round {round_number}: copied from round {from_round} to sample {Path(model_path).name}"
    prompts = copy_prompts_to_round(
        project=project, from_round=from_round, to_round=round_number, max_prompts=max_prompts, note=note
    )
    if baseline_model_path and baseline_k:
        # Blind A/B: both policies' responses of a prompt are sampled first, then inserted together in a
        # random order (contiguous ids, the baseline's rank among them uniform), so nothing tells them apart.
        summary = sample_mixed_responses(
            project=project, round=round_number, **sampling,
            shares=[PolicyShare(model=model_path, k=k - baseline_k, training_run=training_run),
                    PolicyShare(model=baseline_model_path, k=baseline_k)],
        )
        policy_part, baseline_part = summary.shares
        result: dict[str, Any] = {"round": round_number, "from_round": from_round, "prompts": prompts,
                                  "policy": policy_part, "baseline": baseline_part, "sampling": summary.as_dict()}
    else:
        summary = sample_project_responses(
            project=project, model=model_path, k=k, round=round_number, training_run=training_run, **sampling
        )
        result = {"round": round_number, "from_round": from_round, "prompts": prompts, "policy": summary.as_dict()}
    result["responses"] = sum(part.get("responses_created", 0) for key, part in result.items()
                              if key in ("policy", "baseline") and isinstance(part, dict))
    return result


def project_format(project: Project) -> PromptFormat:
    """The prompt format of a project (its two columns; a plain project's leftover system prompt is unused)."""
    return format_of_project(kind=project.prompt_format, system_prompt=project.system_prompt)


# --- Reward model on rankings it has not seen -------------------------------------------------------------


def rm_accuracy_on_new_rankings(*, project: Project, rm_run: TrainingRun, batch_size: int = 16) -> dict[str, Any]:
    """Pairwise accuracy of the RM on every strict preference in the rankings it has not seen (created after
    the snapshot it was trained on, or after the run when it names none), overall and by round and by ranking
    source (reward ties count ½). Through the two contracts: the rankings are exported to a K-wise file
    (`annotate.services.exporting.export_rankings_since`) and scored by the core
    (`training.rlhf.rm_eval.evaluate_rankings_file`)."""
    from annotate.services.exporting import export_rankings_since
    from training.rlhf.rm_eval import evaluate_rankings_file

    since = rm_run.snapshot.created_at if rm_run.snapshot_id else rm_run.created_at
    model_dir = rm_run.output("reward_model")
    if model_dir is None:
        raise FileNotFoundError(f"{rm_run} left no reward model in {rm_run.output_dir or '(no output directory)'}")
    result: dict[str, Any] = {
        "rm_run": rm_run.pk, "since": since.isoformat(), "rankings": 0, "pairs": 0, "accuracy": None,
        "computed_at": timezone.now().isoformat(), "by_round": {}, "by_source": {},
    }
    with tempfile.TemporaryDirectory(prefix="rm-check-") as tmp:
        exported = export_rankings_since(project=project, created_after=since, path=Path(tmp) / "rankings.jsonl")
        if not exported.rankings:
            return result
        report = evaluate_rankings_file(reward_model=model_dir, dataset=exported.path, by=("round", "source"),
                                        batch_size=batch_size, prompt_format=project_format(project))
    result.update(rankings=report["rankings"], pairs=report["pairs"],
                  accuracy=report["accuracy"] if report["pairs"] else None,
                  by_round=_pairs_and_accuracy(report["per_round"]), by_source=_pairs_and_accuracy(report["per_source"]))
    return result


def _pairs_and_accuracy(groups: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {key: {"pairs": group["pairs"], "accuracy": group["accuracy"]} for key, group in groups.items()}
