"""Per-token KL estimators and the KL coefficient (β) controllers.

The KL penalty keeps the policy π near the reference ρ (the starting policy): the per-token reward is
r_t = −β·KL_t, plus the reward model's score at the last real token (Ziegler et al. 2019, "Fine-Tuning Language
Models from Human Preferences"; InstructGPT, Ouyang et al. 2022, eq. 2).

Estimators of KL(π‖ρ) from tokens sampled from π, with log r = log ρ(x) − log π(x) (J. Schulman, "Approximating
KL Divergence", 2020):

    k1 = −log r = log π − log ρ           unbiased, high variance, can be negative per token
    k2 = ½ (log r)²                        biased, low variance, ≥ 0
    k3 = (r − 1) − log r                   unbiased, low variance, ≥ 0
"""

from __future__ import annotations

import math
from typing import Any

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log π(x) − log ρ(x). logprobs, ref_logprobs: (B, T) → (B, T)."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = ½ (log ρ(x) − log π(x))². (B, T) → (B, T)."""
    return 0.5 * (ref_logprobs - logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (r − 1) − log r with r = ρ(x)/π(x) = exp(log ρ − log π). (B, T) → (B, T)."""
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


def per_token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """The per-token KL estimate used in the reward: `estimator` in k1 | k2 | k3. (B, T) → (B, T)."""
    if estimator == "k1":
        return kl_k1(logprobs, ref_logprobs)
    if estimator == "k2":
        return kl_k2(logprobs, ref_logprobs)
    if estimator == "k3":
        return kl_k3(logprobs, ref_logprobs)
    raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


class FixedKLController:
    """β stays at its initial value."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Nothing to adapt; returns β."""
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "fixed", "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "fixed":
            raise ValueError(f"not a fixed KL controller state: {state!r}")
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional control of β towards a target KL (Ziegler et al. 2019, §2.2):

        e_t = clip(KL_t / KL_target − 1, −0.2, 0.2)
        β_{t+1} = β_t · (1 + e_t · n_steps / horizon)

    KL_t is the mean per-sequence KL of the last rollout and n_steps the number of sequences in it, so β changes
    by at most 20 % per `horizon` sequences. The horizon must be short against the run for the controller to
    act at all: Ziegler et al. used 10,000 episodes on runs of millions, and on a 1,280-episode run the same
    horizon moves β by ≤ 2.6 % (issue 14). PPOConfig's default horizon is a tenth of the run's episodes
    (β can change by up to (1 ± 0.2·B/H)^N ≈ 7× / 0.13× over N iterations of B rollouts).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if target <= 0:
            raise ValueError(f"target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Adapt β to the KL just measured; returns the new β."""
        if not math.isfinite(current_kl):
            return self.value
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "adaptive", "value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "adaptive":
            raise ValueError(f"not an adaptive KL controller state: {state!r}")
        self.value = float(state["value"])
        self.target = float(state["target"])
        self.horizon = int(state["horizon"])


def make_kl_controller(
    init_kl_coef: float, *, target: float | None, horizon: int
) -> FixedKLController | AdaptiveKLController:
    """Adaptive when a target KL is given, else fixed β."""
    if target is None:
        return FixedKLController(init_kl_coef)
    return AdaptiveKLController(init_kl_coef, target, horizon)
