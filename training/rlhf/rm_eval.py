"""Held-out evaluation of a reward model on ranking records: pairwise accuracy (overall, per annotator, per
K), mean margin, the K-wise loss, and — for demo-task records (`metadata.task == "demo"`) — agreement with
the demo oracle on the pairs the oracle orders.

The metric functions take rewards already computed (one list per record, aligned with its responses), so
they are plain Python and testable with hand-made numbers; `evaluate_reward_model` scores and evaluates;
`evaluate_rankings_file` does it for a reward-model directory and an exported rankings file (how a round's
new rankings are scored against an earlier reward model: through the file contract, not the database).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from training.rlhf.data import RankingRecord, load_ranking_records
from training.rlhf.rm_loss import kwise_ranking_loss

if TYPE_CHECKING:
    from training.rlhf.reward_model import RewardModel


def _pair_outcome(margin: float) -> float:
    """1 for a correctly ordered pair, ½ for a reward tie, 0 otherwise."""
    return 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0


def ranking_metrics(records: Sequence[RankingRecord], rewards: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Pairwise accuracy and margins of `rewards[i][j]` (record i, response j) against the records' rankings.

    accuracy: micro-average over every untied (winner, loser) pair of every record (ties in the reward
    count ½); mean_margin: mean r_w − r_l over those pairs; loss: the K-wise loss (mean per ranking);
    per_annotator / per_k: the same accuracy restricted to one annotator / one K.
    """
    if len(records) != len(rewards):
        raise ValueError(f"{len(records)} records but {len(rewards)} reward lists")
    total = correct = margin_sum = 0.0
    by_annotator: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # pairs, correct, rankings
    by_k: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    losses = []
    all_rewards: list[float] = []
    for record, values in zip(records, rewards):
        if len(values) != record.k:
            raise ValueError(f"{record.origin or 'record'}: {record.k} responses but {len(values)} rewards")
        all_rewards.extend(values)
        pairs = record.ordered_pairs()
        if not pairs:
            continue
        outcomes = [_pair_outcome(values[w] - values[loser]) for w, loser in pairs]
        margins = [values[w] - values[loser] for w, loser in pairs]
        total += len(pairs)
        correct += sum(outcomes)
        margin_sum += sum(margins)
        for bucket in (by_annotator[record.annotator or "(none)"], by_k[str(record.k)]):
            bucket[0] += len(pairs)
            bucket[1] += sum(outcomes)
            bucket[2] += 1
        loss, _ = kwise_ranking_loss(
            torch.tensor([values], dtype=torch.float64), torch.tensor([record.ranks], dtype=torch.long)
        )
        losses.append(float(loss))

    def summary(bucket: list[float]) -> dict[str, float]:
        return {"accuracy": bucket[1] / bucket[0], "pairs": int(bucket[0]), "rankings": int(bucket[2])}

    reward_tensor = torch.tensor(all_rewards, dtype=torch.float64)
    return {
        "rankings": len(records),
        "prompts": len({r.group_key for r in records}),
        "pairs": int(total),
        "accuracy": correct / total if total else math.nan,
        "mean_margin": margin_sum / total if total else math.nan,
        "loss": sum(losses) / len(losses) if losses else math.nan,
        "per_annotator": {name: summary(b) for name, b in sorted(by_annotator.items())},
        "per_k": {k: summary(b) for k, b in sorted(by_k.items(), key=lambda item: int(item[0]))},
        "reward_mean": float(reward_tensor.mean()) if all_rewards else math.nan,
        "reward_std": float(reward_tensor.std(unbiased=False)) if len(all_rewards) > 1 else math.nan,
    }


def oracle_metrics(records: Sequence[RankingRecord], rewards: Sequence[Sequence[float]]) -> dict[str, Any] | None:
    """Agreement with `demo_task.oracle_score` for records whose metadata says task == "demo"; None if none.

    Each distinct (prompt, responses) set counts once (several annotators' rankings of the same responses
    would otherwise weigh it several times). Over every pair the oracle orders strictly:
    accuracy = share the reward model orders the same way (reward ties ½); annotator_agreement = share the
    annotators' rankings order the same way (among pairs they did not tie): the ceiling a reward model
    fitted to noisy labels is measured against; top1 = share of prompts where the reward model's best
    response has the oracle's best score.
    """
    from training.rlhf.demo_task import DEMO_TASK, oracle_score

    seen: dict[tuple[str, tuple[str, ...]], Sequence[float]] = {}
    rankings_of: dict[tuple[str, tuple[str, ...]], list[RankingRecord]] = defaultdict(list)
    for record, values in zip(records, rewards):
        if (record.metadata or {}).get("task") != DEMO_TASK:
            continue
        key = (record.prompt, record.responses)
        seen.setdefault(key, values)
        rankings_of[key].append(record)
    if not seen:
        return None
    pairs = correct = annotator_pairs = annotator_agree = top1 = 0.0
    for (prompt, responses), values in seen.items():
        scores = [oracle_score(prompt, text) for text in responses]
        best_by_rm = max(range(len(values)), key=lambda i: values[i])
        top1 += scores[best_by_rm] == max(scores)
        for i in range(len(responses)):
            for j in range(i + 1, len(responses)):
                if scores[i] == scores[j]:
                    continue
                sign = 1.0 if scores[i] > scores[j] else -1.0
                pairs += 1
                correct += _pair_outcome(sign * (values[i] - values[j]))
                for record in rankings_of[(prompt, responses)]:
                    ranks = record.ranks
                    if ranks[i] != ranks[j]:
                        annotator_pairs += 1
                        annotator_agree += (ranks[i] < ranks[j]) == (sign > 0)
    return {
        "prompts": len(seen),
        "pairs": int(pairs),
        "accuracy": correct / pairs if pairs else math.nan,
        "annotator_agreement": annotator_agree / annotator_pairs if annotator_pairs else math.nan,
        "top1": top1 / len(seen),
    }


def evaluation_report(records: Sequence[RankingRecord], rewards: Sequence[Sequence[float]]) -> dict[str, Any]:
    """`ranking_metrics`, plus `oracle` where the records come from the demo task."""
    report = ranking_metrics(records, rewards)
    oracle = oracle_metrics(records, rewards)
    if oracle is not None:
        report["oracle"] = oracle
    return report


def unique_sequences(records: Sequence[RankingRecord]) -> tuple[list[tuple[str, str]], list[list[int]]]:
    """The distinct (prompt, response) pairs of the records and, per record, the index of each response in
    that list (so a response ranked by several annotators is scored once)."""
    index: dict[tuple[str, str], int] = {}
    layout = []
    for record in records:
        row = []
        for response in record.responses:
            row.append(index.setdefault((record.prompt, response), len(index)))
        layout.append(row)
    return list(index), layout


def evaluate_reward_model(
    model: RewardModel, records: Sequence[RankingRecord], *, batch_size: int = 32, calibrated: bool = False
) -> dict[str, Any]:
    """Score every distinct response of `records` with `model` and return `evaluation_report`."""
    pairs, layout = unique_sequences(records)
    scores = model.score_texts([p for p, _ in pairs], [r for _, r in pairs], batch_size=batch_size,
                               calibrated=calibrated)
    return evaluation_report(records, [[scores[i] for i in row] for row in layout])


def record_group(record: RankingRecord, name: str) -> str:
    """The value of `name` for one record, for a breakdown: "k", a record field ("annotator", "source",
    "prompt_id") or else a metadata key (e.g. "round"); "(none)" when it is empty or absent."""
    if name == "k":
        return str(record.k)
    if name in ("annotator", "source", "prompt_id"):
        return getattr(record, name) or "(none)"
    value = (record.metadata or {}).get(name)
    return "(none)" if value in (None, "") else str(value)


def accuracy_by(
    records: Sequence[RankingRecord], rewards: Sequence[Sequence[float]], *, name: str
) -> dict[str, dict[str, float]]:
    """Pairwise accuracy (reward ties ½) per value of `record_group(record, name)`:
    {value: {"accuracy", "pairs", "rankings"}}; values whose records order no pair are left out."""
    buckets: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # pairs, correct, rankings
    for record, values in zip(records, rewards, strict=True):
        pairs = record.ordered_pairs()
        if not pairs:
            continue
        bucket = buckets[record_group(record, name)]
        bucket[0] += len(pairs)
        bucket[1] += sum(_pair_outcome(values[w] - values[loser]) for w, loser in pairs)
        bucket[2] += 1
    return {key: {"accuracy": b[1] / b[0], "pairs": int(b[0]), "rankings": int(b[2])}
            for key, b in sorted(buckets.items())}


def evaluate_rankings_file(
    *, reward_model: str | Path, dataset: str | Path, split: str = "train", by: Sequence[str] = (),
    batch_size: int = 32, calibrated: bool = False, prompt_format: Any = None,
) -> dict[str, Any]:
    """Evaluate a saved reward model (a directory RewardModel.from_pretrained loads) on an exported rankings
    file: a snapshot directory, its kwise/ directory or a single JSONL/Parquet file (data.load_ranking_records).
    The model reads the prompts in the format it was trained with; `prompt_format` (a `PromptFormat`, the
    format the rankings' project uses) is checked against it first (PromptFormatError naming both).

    Returns `evaluation_report` (accuracy, pairs, mean_margin, loss, per_annotator, per_k, oracle on demo
    records) plus "per_<name>" (`accuracy_by`) for every name in `by`, e.g. by=("source", "round"), and
    "dataset", "split". A file without records gives rankings 0 and accuracy NaN.
    """
    from training.rlhf.reward_model import RewardModel, check_saved_format

    if prompt_format is not None:
        check_saved_format(reward_model, prompt_format)
    records = load_ranking_records(dataset, split=split)
    model = RewardModel.from_pretrained(str(reward_model))
    model.eval()
    pairs, layout = unique_sequences(records)
    scores = model.score_texts([p for p, _ in pairs], [r for _, r in pairs], batch_size=batch_size,
                               calibrated=calibrated) if pairs else []
    rewards = [[scores[i] for i in row] for row in layout]
    report = evaluation_report(records, rewards)
    for name in by:
        report[f"per_{name}"] = accuracy_by(records, rewards, name=name)
    return {"dataset": str(dataset), "split": split, **report}
