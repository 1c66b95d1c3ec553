"""The before/after evaluation of a PPO run on held-out prompts: one sampled response per prompt from the
starting policy (the reference) and from the trained actor, with the same fixed seed; mean calibrated RM
score, KL to the reference (Σ_t k1 per response), response length, EOS rate, the demo oracle where it
applies, and the win rate of the new policy against the starting one under the RM.

The "before" figures are saved (evaluation_before.json) so that a resumed run compares against the same
samples; the final report (evaluation.json) holds before, after, their deltas and a few samples of each.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.rlhf import demo_task
from training.rlhf.kl import kl_k1
from training.rlhf.prompts import PromptRecord
from training.rlhf.rollout import response_lengths

EVALUATION_FILE = "evaluation.json"
EVAL_BEFORE_FILE = "evaluation_before.json"
DELTA_METRICS = ("rm_score", "kl", "oracle_score")


# `runtime` is a ppo_trainer.PolicyRuntime, not imported here: ppo_trainer imports this module.
def evaluate_policy(runtime: Any, actor, critic, prompts: Sequence[PromptRecord], *, which: str,
                    demo: bool, seed: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Sample one response per held-out prompt from the starting policy (`which="before"`, the reference) or
    the trained actor ("after"), with a fixed seed, and measure: mean calibrated RM score, KL to the reference
    (Σ_t k1 per response, averaged), response length, EOS rate and, on demo prompts, the oracle score.

    Returns (summary, rows); rows carry each prompt's score for the win rate. Each process evaluates its own
    share of the prompts; the summary is over all of them.
    """
    from accelerate.utils import gather_object

    accelerator = runtime.accelerator
    mine = list(prompts)[accelerator.process_index :: accelerator.num_processes]
    rows: list[dict[str, Any]] = []
    size = runtime.config.generation_batch_size
    for start in range(0, len(mine), size):
        texts = [p.text for p in mine[start : start + size]]
        if which == "before":
            with runtime.models.reference_model(actor) as reference:
                batch = runtime.sample(reference, texts, critic, seed=seed + start)
                policy_logprobs = runtime.logprobs(reference, batch.sequences)
        else:
            batch = runtime.sample(actor, texts, critic, seed=seed + start)
            policy_logprobs = runtime.logprobs(actor, batch.sequences)
        ref_logprobs = runtime.reference_logprobs(actor, batch.sequences)
        kl = (kl_k1(policy_logprobs, ref_logprobs) * batch.response_mask).sum(dim=1)
        lengths = response_lengths(batch.response_mask)
        for b, prompt in enumerate(texts):
            row = {"prompt": prompt, "response": batch.response_texts[b], "score": float(batch.rm_scores[b]),
                   "kl": float(kl[b]), "length": int(lengths[b]), "eos": bool(batch.has_stop[b])}
            if demo:
                row["oracle"] = demo_task.oracle_score(prompt, batch.response_texts[b])
            rows.append(row)
    rows = gather_object(rows) if accelerator.num_processes > 1 else rows
    n = max(1, len(rows))
    summary: dict[str, Any] = {
        "n_prompts": len(rows),
        "rm_score": sum(r["score"] for r in rows) / n,
        "kl": sum(r["kl"] for r in rows) / n,
        "response_length": sum(r["length"] for r in rows) / n,
        "eos_rate": sum(r["eos"] for r in rows) / n,
    }
    if demo:
        summary["oracle_score"] = sum(r["oracle"] for r in rows) / n
    return summary, rows


def win_rate(after_rows: Sequence[dict[str, Any]], before_rows: Sequence[dict[str, Any]]) -> float:
    """Share of held-out samples where the new policy's response outscores the starting policy's under the RM
    (ties count half). Rows are paired by prompt and by occurrence (the k-th sample of a prompt after training
    against its k-th sample before), so a prompt listed several times is compared several times."""
    before: dict[str, list[float]] = {}
    for row in before_rows:
        before.setdefault(row["prompt"], []).append(row["score"])
    seen: dict[str, int] = {}
    pairs = []
    for row in after_rows:
        k = seen.get(row["prompt"], 0)
        seen[row["prompt"]] = k + 1
        if k < len(before.get(row["prompt"], [])):
            pairs.append((row["score"], before[row["prompt"]][k]))
    if not pairs:
        return float("nan")
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


def load_before(output_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The saved "before" evaluation of a run (summary, rows), or None when it has none yet."""
    saved = Path(output_dir) / EVAL_BEFORE_FILE
    if not saved.exists():
        return None
    stored = json.loads(saved.read_text(encoding="utf-8"))
    return stored["summary"], stored["rows"]


def save_before(output_dir: str | Path, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    (Path(output_dir) / EVAL_BEFORE_FILE).write_text(
        json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n", encoding="utf-8")


def after_report(
    summary: dict[str, Any], after_rows: Sequence[dict[str, Any]], evaluation: dict[str, Any],
    before_rows: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """`evaluation` (holding "before" when there was one) with "after" (`summary` plus the win rate against
    the starting policy) and "delta" (after − before of RM score, KL and oracle score)."""
    summary["win_rate"] = win_rate(after_rows, before_rows)
    evaluation["after"] = summary
    before = evaluation.get("before", {})
    evaluation["delta"] = {k: summary[k] - before[k] for k in DELTA_METRICS if k in summary and k in before}
    return evaluation


def save_report(output_dir: str | Path, evaluation: dict[str, Any], after_rows: Sequence[dict[str, Any]],
                before_rows: Sequence[dict[str, Any]]) -> None:
    """evaluation.json: the evaluation and the first 32 samples after and before."""
    (Path(output_dir) / EVALUATION_FILE).write_text(json.dumps(
        {**evaluation, "after_samples": list(after_rows[:32]), "before_samples": list(before_rows[:32])},
        indent=2) + "\n", encoding="utf-8")


def format_summary(summary: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())
