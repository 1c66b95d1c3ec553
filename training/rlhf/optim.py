"""Optimisation helpers shared by the reward-model and PPO trainers: AdamW parameter groups, the warm-up +
cosine learning-rate schedule, seeding with a per-rank offset, and capture/restore of every RNG a run uses
(so a resumed run draws the same random numbers it would have drawn without the interruption).

Stable API (PPO imports it): `param_groups`, `build_adamw`, `warmup_cosine_lambda`,
`warmup_cosine_scheduler`, `warmup_steps_for`, `use_cpu`, `seed_everything`, `capture_rng_state`,
`restore_rng_state`.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

# Parameter names containing one of these never get weight decay (in addition to every 0-/1-D tensor:
# biases, LayerNorm/RMSNorm gains). Matches GPT-2 ("ln_1", "ln_f"), BERT ("LayerNorm"), Llama ("norm").
NO_DECAY_NAME_PARTS = ("bias", "norm", "ln_", "layernorm")


def param_groups(
    model: nn.Module | Iterable[tuple[str, nn.Parameter]],
    *,
    weight_decay: float,
    no_decay_name_parts: tuple[str, ...] = NO_DECAY_NAME_PARTS,
) -> list[dict[str, Any]]:
    """AdamW parameter groups: decay on weight matrices, none on biases and norms.

    Only trainable parameters (`requires_grad`) are included, so a LoRA model hands the optimizer its
    adapters and head only. A parameter shared under two names is included once. Empty groups are dropped.

    Decoupled weight decay as in Loshchilov & Hutter 2019 ("Decoupled Weight Decay Regularization"); not
    decaying gains and biases follows the GPT-2/BERT training code.
    """
    named = model.named_parameters() if isinstance(model, nn.Module) else model
    decay, no_decay, seen = [], [], set()
    for name, param in named:
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        lowered = name.lower()
        if param.ndim < 2 or any(part in lowered for part in no_decay_name_parts):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def build_adamw(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over `param_groups(model)`; raises if the model has nothing to train.

    The fused kernel (`fused=True`: one kernel for all of a group's tensors instead of about ten per tensor)
    where every trainable tensor is a float tensor on a device that has it (CPU and CUDA in torch >= 2.4):
    the same update rule, 3.6x less optimizer time on the PPO benchmark (bench/RESULTS.md, "Where an
    iteration's time goes")."""
    groups = param_groups(model, weight_decay=weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused_adamw_supported(groups))


FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def fused_adamw_supported(groups: list[dict]) -> bool:
    """Whether torch's fused AdamW takes these parameters: floating point, all on one CPU or CUDA device."""
    tensors = [p for group in groups for p in group["params"]]
    devices = {p.device.type for p in tensors}
    return (len(devices) == 1 and devices <= set(FUSED_ADAMW_DEVICES)
            and all(p.is_floating_point() for p in tensors))


def warmup_cosine_lambda(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """The learning-rate multiplier after `step` optimizer steps (0-based; LambdaLR's `last_epoch`).

        warm-up (step < W):  (step + 1) / W                       linear, reaching 1 at step W − 1
        decay   (step ≥ W):  m + (1 − m) · ½ · (1 + cos(π · p)),  p = (step − W) / max(1, S − W), clamped to 1

    with W = warmup_steps, S = total_steps, m = min_ratio. The first step already trains (a multiplier of 0
    there would waste it). Cosine decay: Loshchilov & Hutter 2017 (SGDR), without restarts.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    """Warm-up length from a ratio of the total steps (0 when the ratio is 0, else at least 1 step)."""
    if warmup_ratio <= 0:
        return 0
    return max(1, min(total_steps, round(total_steps * warmup_ratio)))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, *, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying `warmup_cosine_lambda`; step it once per optimizer step.

    The lambda is a `functools.partial` so the scheduler's state_dict round-trips through torch.save.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be ≥ 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, {total_steps}], got {warmup_steps}")
    lr_lambda = functools.partial(
        warmup_cosine_lambda, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=min_ratio
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


def use_cpu(requested: bool) -> bool:
    """Whether the Accelerator must be told `cpu=True`: when asked, and whenever the machine has no accelerator
    (GPU, XPU…). Without it, accelerate treats a torchrun launch on a CPU-only host as one process per rank,
    each training alone: it forms the gloo process group only for `cpu=True` (or ACCELERATE_USE_CPU=1)."""
    return bool(requested) or not torch.accelerator.is_available()


def seed_everything(seed: int, *, rank: int = 0) -> int:
    """Seed python, numpy and torch (all devices) with `seed + rank`; returns the seed used.

    The per-rank offset gives each data-parallel process different random draws (sampling, dropout if any)
    while the run as a whole stays reproducible (N+ implementation details of RLHF, Huang et al. 2024).
    """
    effective = int(seed) + int(rank)
    random.seed(effective)
    np.random.seed(effective % 2**32)
    torch.manual_seed(effective)  # also seeds every CUDA device
    return effective


def capture_rng_state() -> dict[str, Any]:
    """The state of every RNG a run uses: python, numpy, torch CPU and (where present) CUDA.

    Plain python values and tensors only, so `torch.load(..., weights_only=True)` reads a saved copy.
    """
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [np_name, torch.from_numpy(np.asarray(np_keys, dtype=np.int64)), int(np_pos),
                  int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo `capture_rng_state`: the next random draws equal those that followed the capture."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    keys = np_keys.numpy() if isinstance(np_keys, torch.Tensor) else np.asarray(np_keys)
    np.random.set_state((np_name, keys.astype(np.uint32), int(np_pos), int(np_has_gauss), float(np_gauss)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
