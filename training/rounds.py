"""Closing the loop, run inside the worker (never in a request):

- `sample_new_round`: copy a round's prompts into the project's next round and sample K responses per prompt
  from a policy (a finished PPO run's, or any model under the roots), optionally mixing in responses of a
  second "baseline" policy so annotators rank new against old blind (each prompt's responses are inserted
  together in a random order, and the display order is shuffled per annotator by the queue);
- `rm_accuracy_on_new_rankings`: a reward model's pairwise accuracy on the rankings it did not train on
  (created after the data snapshot it was trained from).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from annotate.agreement import ordered_pairs
from annotate.models import Project, Prompt, Ranking
from training.models import TrainingRun

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "max_new_tokens", "batch_size", "seed")


def next_round(*, project: Project) -> int:
    return (project.prompts.aggregate(last=Max("round"))["last"] or 0) + 1


@transaction.atomic
def copy_prompts_to_round(
    *, project: Project, from_round: int, to_round: int, max_prompts: int | None = None, note: str = ""
) -> int:
    """Copy the prompts of `from_round` (distinct texts, in id order) into `to_round`; returns how many are
    in `to_round` afterwards. Prompts already there are kept, so a re-run continues instead of duplicating."""
    source = project.prompts.filter(round=from_round).order_by("pk")
    existing = set(project.prompts.filter(round=to_round).values_list("text_hash", flat=True))
    wanted = max_prompts if max_prompts is not None else None
    copies = []
    seen = set(existing)
    for prompt in source.iterator(chunk_size=2000):
        if wanted is not None and len(seen) >= wanted:
            break
        if prompt.text_hash in seen:
            continue
        seen.add(prompt.text_hash)
        copies.append(
            Prompt(
                project=project, text=prompt.text, text_hash=prompt.text_hash, external_id=prompt.external_id,
                metadata=prompt.metadata, round=to_round,
                source=(note or f"copied from round {from_round}")[:500],
            )
        )
    Prompt.objects.bulk_create(copies)
    return project.prompts.filter(round=to_round).count()


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
    k = project.k_min if k is None else k
    if not 0 <= baseline_k < k:
        raise ValueError(f"baseline_k must be between 0 and k − 1 ({k - 1}), got {baseline_k}")
    if from_round is None:
        from_round = project.prompts.aggregate(last=Max("round"))["last"]
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


# --- Reward model on rankings it has not seen -------------------------------------------------------------


def rm_model_dir(run: TrainingRun) -> Path:
    from training.selectors import run_model_dir

    found = run_model_dir(run)
    if found is None:
        raise FileNotFoundError(f"{run} left no reward model in {run.output_dir or '(no output directory)'}")
    return found


def unseen_rankings(*, project: Project, rm_run: TrainingRun):
    """Rankings of `project` created after the data the RM was trained on was exported (after the run was
    created when it names no snapshot)."""
    since = rm_run.snapshot.created_at if rm_run.snapshot_id else rm_run.created_at
    return since, Ranking.objects.filter(prompt__project=project, created_at__gt=since).select_related("prompt")


def rm_accuracy_on_new_rankings(*, project: Project, rm_run: TrainingRun, batch_size: int = 16) -> dict[str, Any]:
    """Pairwise accuracy of the RM on every strict preference in the unseen rankings (ties skipped): the
    share of (winner, loser) pairs the RM scores winner > loser, equal scores counting one half. Broken
    down by round and by ranking source."""
    from annotate.models import Response
    from training.rlhf.reward_model import RewardModel

    since, rankings = unseen_rankings(project=project, rm_run=rm_run)
    rankings = list(rankings)
    result: dict[str, Any] = {
        "rm_run": rm_run.pk, "since": since.isoformat(), "rankings": len(rankings), "pairs": 0, "accuracy": None,
        "computed_at": timezone.now().isoformat(), "by_round": {}, "by_source": {},
    }
    if not rankings:
        return result
    response_ids = {rid for ranking in rankings for tier in ranking.tiers for rid in tier}
    responses = {r.pk: r for r in Response.objects.filter(pk__in=response_ids).select_related("prompt")}
    keys = sorted(responses)
    model = RewardModel.from_pretrained(rm_model_dir(rm_run))
    scores_list = model.score_texts(
        [responses[pk].prompt.text for pk in keys], [responses[pk].text for pk in keys], batch_size=batch_size
    )
    scores = dict(zip(keys, scores_list))
    totals: dict[str, dict[str, dict[str, float]]] = {"by_round": defaultdict(lambda: {"pairs": 0, "correct": 0.0}),
                                                       "by_source": defaultdict(lambda: {"pairs": 0, "correct": 0.0})}
    pairs = 0
    correct = 0.0
    for ranking in rankings:
        for winner, loser, _ in ordered_pairs(ranking.tiers):
            if winner not in scores or loser not in scores:
                continue
            hit = 1.0 if scores[winner] > scores[loser] else 0.5 if scores[winner] == scores[loser] else 0.0
            pairs += 1
            correct += hit
            for group, key in (("by_round", str(ranking.prompt.round)), ("by_source", ranking.source)):
                totals[group][key]["pairs"] += 1
                totals[group][key]["correct"] += hit
    result["pairs"] = pairs
    result["accuracy"] = correct / pairs if pairs else None
    for group in ("by_round", "by_source"):
        result[group] = {
            key: {"pairs": int(v["pairs"]), "accuracy": v["correct"] / v["pairs"] if v["pairs"] else None}
            for key, v in sorted(totals[group].items())
        }
    return result
