"""The before/after evaluation of a PPO run on held-out prompts: one sampled response per prompt from the
starting policy (the reference) and from the trained actor, with the same fixed seed; mean calibrated RM
score, KL to the reference (Σ_t k1 per response), response length, EOS rate, the demo oracle where it
applies, and the win rate of the new policy against the starting one under the RM.

With `eval_samples` > 1 each prompt is sampled that many times. The gain after − before of the oracle and the
RM score comes with a 95 % interval over prompts (`paired_mean_ci`: the per-prompt mean difference, Student's
t), so that a gain can be told from the evaluation's own noise.

The "before" figures are saved (evaluation_before.json) so that a resumed run compares against the same
samples; the final report (evaluation.json) holds before, after, their deltas with intervals and a few samples
of each.
"""

from __future__ import annotations

import json
import math
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
CI_METRICS = {"rm_score": "score", "oracle_score": "oracle"}  # summary name → row field


def student_t_975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (the 95 % two-sided critical value).

    Exact for df = 1 (tan(π/2 · 0.95)) and df = 2 (0.95 · √(2/(1 − 0.95²))), tabulated for df = 3, 4 (3.182446,
    2.776445); otherwise the Cornish–Fisher expansion around the normal quantile z = 1.959964 (Abramowitz &
    Stegun 1964, 26.7.5), four terms: error < 0.001 for df ≥ 5 (2.571 at df = 5, 2.228 at 10, 2.042 at 30).
    """
    if df < 1:
        raise ValueError(f"df must be ≥ 1, got {df}")
    if df == 1:
        return math.tan(math.pi / 2 * 0.95)
    if df == 2:
        return 0.95 * math.sqrt(2.0 / (1.0 - 0.95**2))
    if df in (3, 4):
        return {3: 3.182446305284263, 4: 2.7764451051977987}[df]
    z = 1.959963984540054
    n = float(df)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / n + g2 / n**2 + g3 / n**3 + g4 / n**4


def paired_mean_ci(after_rows: Sequence[dict[str, Any]], before_rows: Sequence[dict[str, Any]], field: str
                   ) -> dict[str, float]:
    """The mean gain after − before of `field` with a 95 % interval over prompts.

    Samples are grouped by prompt; the unit is the prompt (its samples after and before share it, so they are
    not independent): d_p = mean_after(p) − mean_before(p) over the prompts present in both, and
    mean(d) ± t_{0.975, n−1} · sd(d) / √n (the paired-difference t interval). Returns {"mean", "low", "high",
    "n_prompts"}; the interval is NaN with fewer than 2 prompts.
    """
    def by_prompt(rows: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
        groups: dict[str, list[float]] = {}
        for row in rows:
            value = row.get(field)
            if isinstance(value, int | float) and math.isfinite(value):
                groups.setdefault(row["prompt"], []).append(float(value))
        return groups

    after, before = by_prompt(after_rows), by_prompt(before_rows)
    diffs = [sum(after[p]) / len(after[p]) - sum(before[p]) / len(before[p]) for p in after if p in before]
    n = len(diffs)
    if n == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n_prompts": 0}
    mean = sum(diffs) / n
    if n < 2:
        return {"mean": mean, "low": float("nan"), "high": float("nan"), "n_prompts": n}
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = student_t_975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half, "n_prompts": n}


# `runtime` is a ppo_trainer.PolicyRuntime, not imported here: ppo_trainer imports this module.
def evaluate_policy(runtime: Any, actor, critic, prompts: Sequence[PromptRecord], *, which: str,
                    demo: bool, seed: int, samples: int = 1, scorer=None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Sample one response per held-out prompt from the starting policy (`which="before"`, the reference) or
    the trained actor ("after"), with a fixed seed, and measure: mean calibrated RM score, KL to the reference
    (Σ_t k1 per response, averaged), response length, EOS rate and, on demo prompts, the oracle score.

    Each prompt is sampled `samples` times (different seeds per repetition). `scorer(prompts, responses) ->
    list[float]`, when given, adds a "held_out_score" per row and to the summary (a reward model PPO does not
    optimise). Returns (summary, rows); rows carry each prompt's score for the win rate. Each process evaluates
    its own share of the prompts; the summary is over all of them.
    """
    from accelerate.utils import gather_object

    accelerator = runtime.accelerator
    mine = [p for p in prompts for _ in range(samples)][accelerator.process_index :: accelerator.num_processes]
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
        held_out = scorer(texts, batch.response_texts) if scorer is not None else None
        for b, prompt in enumerate(texts):
            row = {"prompt": prompt, "response": batch.response_texts[b], "score": float(batch.rm_scores[b]),
                   "kl": float(kl[b]), "length": int(lengths[b]), "eos": bool(batch.has_stop[b])}
            if batch.member_spread is not None:
                row["member_spread"] = float(batch.member_spread[b])
            if demo:
                row["oracle"] = demo_task.oracle_score(prompt, batch.response_texts[b])
            if held_out is not None:
                row["held_out_score"] = float(held_out[b])
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
    if rows and "member_spread" in rows[0]:
        summary["rm_member_spread"] = sum(r["member_spread"] for r in rows) / n
    if demo:
        summary["oracle_score"] = sum(r["oracle"] for r in rows) / n
    if scorer is not None:
        summary["held_out_score"] = sum(r["held_out_score"] for r in rows) / n
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
    the starting policy), "delta" (after − before of RM score, KL and oracle score) and "delta_ci" (the gains
    of the RM and oracle scores with their 95 % intervals over prompts, `paired_mean_ci`)."""
    summary["win_rate"] = win_rate(after_rows, before_rows)
    evaluation["after"] = summary
    before = evaluation.get("before", {})
    evaluation["delta"] = {k: summary[k] - before[k] for k in DELTA_METRICS if k in summary and k in before}
    evaluation["delta_ci"] = {name: paired_mean_ci(after_rows, before_rows, field)
                              for name, field in CI_METRICS.items() if name in summary and name in before}
    return evaluation


def format_gain(gain: dict[str, float]) -> str:
    """'+0.812 (95 % CI +0.601 to +1.023, 24 prompts)'."""
    if not gain or not math.isfinite(gain.get("mean", float("nan"))):
        return "–"
    interval = (f"95 % CI {gain['low']:+.3f} to {gain['high']:+.3f}" if math.isfinite(gain["low"])
                else "no interval")
    return f"{gain['mean']:+.3f} ({interval}, {gain['n_prompts']} prompts)"


def save_report(output_dir: str | Path, evaluation: dict[str, Any], after_rows: Sequence[dict[str, Any]],
                before_rows: Sequence[dict[str, Any]]) -> None:
    """evaluation.json: the evaluation and the first 32 samples after and before."""
    (Path(output_dir) / EVALUATION_FILE).write_text(json.dumps(
        {**evaluation, "after_samples": list(after_rows[:32]), "before_samples": list(before_rows[:32])},
        indent=2) + "\n", encoding="utf-8")


def format_summary(summary: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())
