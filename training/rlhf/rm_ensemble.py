"""Reward-model ensembles: several reward models trained from one snapshot (different seeds), and the
conservative combination of their scores that PPO optimises.

A single reward model is a proxy that PPO learns to exploit: the proxy score keeps rising while the true
(gold) score peaks and falls (Gao, Schulman & Hilton 2023, "Scaling Laws for Reward Model Overoptimization",
ICML). Coste, Anwar, Kirk & Krueger 2024 ("Reward Model Ensembles Help Mitigate Overoptimization", ICLR;
arXiv 2310.02743) train M reward models that differ only in their seed and optimise a conservative
combination of their scores; where the members disagree (off the data they were trained on) the combined
score is low, so the policy is not rewarded for exploiting one member's error:

    mean            R = (1/M) Σ_i R_i                                       (plain average, no penalty)
    min             R = min_i R_i                                           worst-case optimisation (WCO)
    uwo             R = mean_i R_i − λ · Var_i R_i                          uncertainty-weighted (UWO)
    mean_minus_std  R = mean_i R_i − λ · Std_i R_i                          (a lower confidence bound)

Var and Std are over the members, population form (÷ M), as in Coste et al.'s eq. for UWO. Every member
is calibrated (its scores centred and scaled on held-out data), so the members' scales agree.

An ensemble directory (`train_reward_model_ensemble`) holds `ensemble.json` and one reward-model directory
per member (`member-0`, `member-1`, …); `ensemble_members(path)` reads it back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

ENSEMBLE_FILE = "ensemble.json"
COMBINATIONS = ("mean", "min", "uwo", "mean_minus_std")


def combine_scores(scores: torch.Tensor, *, method: str, coef: float = 1.0) -> torch.Tensor:
    """The combined reward of M members' scores. scores: (M, B) → (B,).

    mean: Σ_i R_i / M;  min: min_i R_i;  uwo: mean − coef · Var (÷ M);  mean_minus_std: mean − coef · Std (÷ M).
    One member (M = 1) returns its scores for every method.
    """
    if scores.dim() != 2 or scores.shape[0] < 1:
        raise ValueError(f"scores must be (M, B) with M ≥ 1, got {tuple(scores.shape)}")
    if method not in COMBINATIONS:
        raise ValueError(f"method must be one of {COMBINATIONS}, got {method!r}")
    if scores.shape[0] == 1:
        return scores[0]
    mean = scores.mean(dim=0)
    if method == "mean":
        return mean
    if method == "min":
        return scores.min(dim=0).values
    variance = scores.var(dim=0, unbiased=False)
    if method == "uwo":
        return mean - coef * variance
    return mean - coef * variance.sqrt()


def member_spread(scores: torch.Tensor) -> torch.Tensor:
    """The members' disagreement per response: population std over M. (M, B) → (B,) (0 for one member)."""
    if scores.shape[0] == 1:
        return torch.zeros_like(scores[0])
    return scores.std(dim=0, unbiased=False)


def is_ensemble_dir(path: str | Path) -> bool:
    return (Path(path) / ENSEMBLE_FILE).is_file()


def ensemble_members(path: str | Path) -> list[Path]:
    """The member directories of an ensemble directory (in its order), or [path] for one reward model."""
    path = Path(path)
    if not is_ensemble_dir(path):
        return [path]
    manifest = json.loads((path / ENSEMBLE_FILE).read_text(encoding="utf-8"))
    members = [path / name for name in manifest.get("members", [])]
    if not members:
        raise ValueError(f"{path / ENSEMBLE_FILE} lists no members")
    missing = [str(m) for m in members if not (m / "reward_model.json").is_file()]
    if missing:
        raise ValueError(f"{path / ENSEMBLE_FILE}: members without a reward model: {', '.join(missing)}")
    return members


def resolve_reward_models(reward_model: str, extra: Sequence[str] = ()) -> list[str]:
    """All member directories PPO scores with: `reward_model` (one RM, or an ensemble directory expanded to
    its members), then the `extra` ones (each may be an ensemble directory too), duplicates dropped. The first
    is the primary member (it initialises the critic)."""
    found: list[str] = []
    for entry in (reward_model, *extra):
        for member in ensemble_members(entry):
            text = str(member)
            if text not in found:
                found.append(text)
    return found


def train_reward_model_ensemble(config: Any, *, seeds: Sequence[int], reporter: Any = None) -> Path:
    """Train one reward model per seed on `config`'s data (a RewardModelConfig; only seed and output_dir
    change per member) into `config.output_dir/member-<i>`, and write `ensemble.json` there. Returns the
    ensemble directory (PPOConfig.reward_model accepts it). Coste et al. 2024: members from different seeds
    of the same data and recipe."""
    from training.rlhf.rm_trainer import train_reward_model

    seeds = [int(s) for s in seeds]
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"an ensemble needs at least 2 distinct seeds, got {seeds}")
    root = Path(config.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i, seed in enumerate(seeds):
        name = f"member-{i}"
        if not (root / name / "reward_model.json").is_file():
            train_reward_model(replace(config, seed=seed, output_dir=str(root / name)), reporter=reporter)
        names.append(name)
    manifest = {"members": names, "seeds": seeds, "source": "Coste et al. 2024: one snapshot, one seed per member"}
    (root / ENSEMBLE_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return root
