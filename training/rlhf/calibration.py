"""Reward calibration: an affine map fitted after training so that rewards on a calibration set (reference
samples or demonstrations) have mean 0 and, optionally, standard deviation 1.

    r_calibrated = gain · r_raw + bias,   bias = −gain · mean(r_raw on the set),
                                          gain = 1 / std(r_raw on the set)  (1 when the gain is off)

InstructGPT (Ouyang et al. 2022, §3.5) adds a bias "so that the labeler demonstrations achieve a mean score of
0 before doing RL"; the optional gain is the usual reward normalisation of the PPO literature (Ziegler et al.
2019 normalise the reward model to mean 0, variance 1). The pairwise loss is invariant to the bias, so
training cannot fix it; PPO's KL trade-off (β) is not invariant to it, hence the calibration.
The std is the population std (ddof = 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Calibration:
    """r_calibrated = gain · r_raw + bias. The identity (bias 0, gain 1) means "not calibrated"."""

    bias: float = 0.0
    gain: float = 1.0

    def apply(self, rewards: torch.Tensor) -> torch.Tensor:
        """rewards: any shape → same shape."""
        if self.gain == 1.0 and self.bias == 0.0:
            return rewards
        return rewards * self.gain + self.bias

    def apply_floats(self, rewards: Sequence[float]) -> list[float]:
        return [float(r) * self.gain + self.bias for r in rewards]

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Calibration:
        if not values:
            return cls()
        bias, gain = float(values.get("bias", 0.0)), float(values.get("gain", 1.0))
        if not (math.isfinite(bias) and math.isfinite(gain)) or gain <= 0:
            raise ValueError(f"invalid calibration {values!r}: bias must be finite and gain finite and > 0")
        return cls(bias=bias, gain=gain)


def fit_calibration(raw_rewards: Sequence[float] | torch.Tensor, *, gain: bool = False) -> Calibration:
    """The calibration that maps `raw_rewards` (M,) to mean 0 (and population std 1 when `gain`).

    Needs at least one reward (two with the gain) and, with the gain, rewards that are not all equal.
    """
    values = torch.as_tensor(raw_rewards, dtype=torch.float64).flatten()
    if values.numel() == 0:
        raise ValueError("the calibration set is empty")
    if not bool(torch.isfinite(values).all()):
        raise ValueError("the calibration rewards contain NaN or infinity")
    mean = float(values.mean())
    if not gain:
        return Calibration(bias=-mean, gain=1.0)
    if values.numel() < 2:
        raise ValueError("calibrating the gain needs at least two rewards")
    std = float(values.std(unbiased=False))
    if std < 1e-8:
        raise ValueError(f"the calibration rewards are (almost) constant (std {std:.3g}); cannot fit a gain")
    scale = 1.0 / std
    return Calibration(bias=-mean * scale, gain=scale)


def calibration_report(raw_rewards: Sequence[float] | torch.Tensor, calibration: Calibration) -> dict[str, float]:
    """Mean and std of the set before and after calibration (for the run's evaluation record)."""
    values = torch.as_tensor(raw_rewards, dtype=torch.float64).flatten()
    calibrated = calibration.apply(values)
    return {
        "bias": calibration.bias,
        "gain": calibration.gain,
        "n": int(values.numel()),
        "raw_mean": float(values.mean()),
        "raw_std": float(values.std(unbiased=False)) if values.numel() > 1 else 0.0,
        "calibrated_mean": float(calibrated.mean()),
        "calibrated_std": float(calibrated.std(unbiased=False)) if values.numel() > 1 else 0.0,
    }
