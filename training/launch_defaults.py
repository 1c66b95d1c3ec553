"""Launch-form defaults that fit the chosen model and data: learning rate and epochs from the model's size,
batch size from the number of training rankings. Small pure functions (no Django), each with its source.

The config dataclasses' own defaults are those of a large model (RM lr 1e-5, 1 epoch: InstructGPT); on the
demo's tiny model they barely move it. Here the learning rate is interpolated geometrically in log N between
two measured anchors, and clamped to them outside:

- reward model: 1e-3 at 1e6 parameters (the demo's tiny model, training/demo.py's plans) and 9e-6 at 6e9
  (InstructGPT's 6B reward model, Ouyang et al. 2022, appendix C.2);
- PPO actor: 2e-4 at 1e6 (the demo's small plan) and 3e-6 at 6.9e9 (Huang et al. 2024, "The N+ implementation
  details of RLHF with PPO", Pythia 6.9B); the critic keeps the config's 3 : 1 ratio to the actor.

A larger learning rate for a smaller model is the usual scaling rule (Kaplan et al. 2020, appendix D.6: the
best learning rate falls with the parameter count).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SMALL_MODEL = 1e6  # parameters of the demo's tiny model (0.93 M)
RM_LR_ANCHORS = ((SMALL_MODEL, 1e-3), (6e9, 9e-6))
PPO_LR_ANCHORS = ((SMALL_MODEL, 2e-4), (6.9e9, 3e-6))
CRITIC_TO_ACTOR_LR = 3.0  # PPOConfig's defaults: critic_lr 3e-4, lr 1e-4
MAX_RM_BATCH = 8  # RewardModelConfig's default batch size (rankings per micro-batch)
STEPS_PER_EPOCH = 20  # aim for at least this many optimizer steps per epoch (warm-up and decay need steps)


def parameter_count(config: dict[str, Any]) -> int | None:
    """Parameters of a decoder-only transformer, estimated from its Hugging Face `config.json`.

    Per layer (d = hidden size, f = MLP width, d_kv = key/value width with grouped-query attention):
    attention 2·d² + 2·d·d_kv (q, o; k, v), MLP 2·d·f (GPT-2: fc, proj) or 3·d·f (gated: gate, up, down);
    plus token embeddings V·d, learned positions P·d (GPT-2) and an untied output head V·d. Biases and norms
    are left out (under 0.2 % of GPT-2 small). Kaplan et al. 2020, §2.1: N ≈ 12·n_layer·d² for f = 4d.
    Known answers: GPT-2 small ≈ 124 M, Qwen2.5-0.5B ≈ 494 M. None when the config lacks the sizes.
    """
    d = config.get("hidden_size", config.get("n_embd", config.get("d_model")))
    layers = config.get("num_hidden_layers", config.get("n_layer", config.get("num_layers")))
    vocab = config.get("vocab_size")
    if not all(isinstance(v, int) and v > 0 for v in (d, layers, vocab)):
        return None
    heads = config.get("num_attention_heads", config.get("n_head")) or 1
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or d // heads
    d_kv = kv_heads * head_dim
    gated = "intermediate_size" in config and config.get("model_type") not in {"gpt2", "gpt_neox", "opt"}
    width = config.get("intermediate_size") or config.get("n_inner") or 4 * d
    attention = 2 * d * d + 2 * d * d_kv
    mlp = (3 if gated else 2) * d * width
    embeddings = vocab * d
    positions = (config.get("n_positions") or 0) * d if config.get("model_type") == "gpt2" else 0
    head = 0 if config.get("tie_word_embeddings", True) else vocab * d
    return layers * (attention + mlp) + embeddings + positions + head


def read_parameter_count(model_dir: str | Path, *, roots: list[Path] | None = None) -> int | None:
    """`parameter_count` of a model directory's config.json; for a LoRA adapter, its local base model's (only
    inside `roots` when given: a form reads nothing outside the configured roots). None when nothing readable
    says the size (the form then keeps the config's defaults)."""
    directory = Path(model_dir)
    for _ in range(2):  # the directory, then an adapter's base model
        try:
            config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = None
        if isinstance(config, dict):
            return parameter_count(config)
        try:
            adapter = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        base = adapter.get("base_model_name_or_path") if isinstance(adapter, dict) else None
        if not isinstance(base, str) or not base or not Path(base).is_dir():
            return None
        directory = Path(base).resolve()
        if roots is not None and not any(directory == r or r in directory.parents for r in roots):
            return None
    return None


def log_interpolate(x: float, anchors: tuple[tuple[float, float], tuple[float, float]]) -> float:
    """y at x on the straight line through the two anchors in log-log space, clamped to the anchors' ys:
    log y = log y0 + (log x − log x0)·(log y1 − log y0)/(log x1 − log x0)."""
    (x0, y0), (x1, y1) = anchors
    t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    t = min(1.0, max(0.0, t))
    return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))


def round_lr(lr: float) -> float:
    """A learning rate to two significant digits (3.4e-05, not 3.4567e-05): what a person would type."""
    return float(f"{lr:.2g}")


def rm_epochs(parameters: int) -> int:
    """Passes over the rankings: 1 from 1e8 parameters (InstructGPT: more over-fits), 2 below, 3 below 1e7
    (a tiny model from scratch-like weights needs more passes; the demo's plans use 1–2 on 48–120 prompts)."""
    if parameters >= 1e8:
        return 1
    return 2 if parameters >= 1e7 else 3


def rm_batch_size(train_rankings: int) -> int:
    """The largest power of two ≤ MAX_RM_BATCH that still gives STEPS_PER_EPOCH optimizer steps per epoch
    (87 rankings → 4, 360 → 8, 30 → 1)."""
    batch = 1
    while batch * 2 <= MAX_RM_BATCH and train_rankings // (batch * 2) >= STEPS_PER_EPOCH:
        batch *= 2
    return batch


@dataclass(frozen=True)
class Suggestion:
    """Options for a launch form and, in words, each with what it was derived from."""

    options: dict[str, Any]
    reasons: list[str]


def human_count(n: int) -> str:
    """123456789 → '123 M', 933888 → '0.93 M', 6.9e9 → '6.9 B'."""
    if n >= 1e9:
        return f"{n / 1e9:.2g} B"
    if n >= 1e6:
        return f"{n / 1e6:.3g} M"
    return f"{n / 1e6:.2g} M"


def suggest_rm(*, parameters: int | None, train_rankings: int | None) -> Suggestion:
    """Reward-model options for a model of `parameters` and `train_rankings` training rankings (either may
    be unknown: its options are then left to the config's defaults)."""
    options: dict[str, Any] = {}
    reasons = []
    if parameters:
        options["learning_rate"] = round_lr(log_interpolate(parameters, RM_LR_ANCHORS))
        options["epochs"] = rm_epochs(parameters)
        reasons.append(f"learning rate {options['learning_rate']:g} and {options['epochs']} epoch"
                       f"{'s' if options['epochs'] > 1 else ''} for a model of {human_count(parameters)} parameters")
    if train_rankings:
        options["batch_size"] = rm_batch_size(train_rankings)
        reasons.append(f"batch size {options['batch_size']} for {train_rankings} training rankings")
    return Suggestion(options, reasons)


def suggest_ppo(*, parameters: int | None) -> Suggestion:
    """PPO learning rates (actor, critic) for a policy of `parameters` (unknown: the config's defaults)."""
    if not parameters:
        return Suggestion({}, [])
    lr = round_lr(log_interpolate(parameters, PPO_LR_ANCHORS))
    critic_lr = round_lr(lr * CRITIC_TO_ACTOR_LR)
    return Suggestion({"lr": lr, "critic_lr": critic_lr},
                      [f"lr {lr:g} and critic lr {critic_lr:g} for a policy of {human_count(parameters)} parameters"])
