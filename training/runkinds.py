"""The registry of run kinds: for each kind of training run, its config dataclass, its trainer, the command the
worker runs it with, and the output a later stage takes from it. Adding a kind is one entry here (plus its value
in `TrainingRun.Kind` and its inputs in `launching.INPUTS`); nothing else branches on the kind to find these.

A leaf module: the configs are plain dataclasses; the trainers (torch) are imported only when a run executes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from training.rlhf.ppo_config import PPOConfig
from training.rlhf.rm_config import RewardModelConfig
from training.rlhf.sft_config import SFTConfig


@dataclass(frozen=True)
class RunKind:
    name: str
    noun: str  # "a reward-model run", in messages
    config_class: type
    trainer: str  # "module:function", called as function(config, reporter=…) -> a result with `.stopped`
    command: str  # the manage.py command that executes a queued run (`<command> --run-id N`)
    model_output: str  # the key of `TrainingRun.outputs` a later stage uses (SFT → RM/PPO, RM → PPO, PPO → round)
    progress_unit: str  # what one step of `on_start(total_steps=…)` counts, for the progress bar
    progress_keys: tuple[str, ...]  # metrics shown beside the progress bar (their presence advances it)

    def load_trainer(self) -> Callable[..., Any]:
        module, function = self.trainer.split(":")
        return getattr(importlib.import_module(module), function)


RUN_KINDS: dict[str, RunKind] = {
    "sft": RunKind(
        name="sft", noun="SFT", config_class=SFTConfig, trainer="training.rlhf.sft_trainer:train_sft",
        command="train_sft", model_output="model", progress_unit="step", progress_keys=("loss", "eval/loss"),
    ),
    "rm": RunKind(
        name="rm", noun="reward-model", config_class=RewardModelConfig, trainer="training.rlhf.rm_trainer:train_reward_model",
        command="train_rm", model_output="reward_model", progress_unit="step", progress_keys=("loss", "accuracy"),
    ),
    "ppo": RunKind(
        name="ppo", noun="PPO", config_class=PPOConfig, trainer="training.rlhf.ppo_trainer:train_ppo",
        command="train_ppo", model_output="policy", progress_unit="it", progress_keys=("reward", "kl"),
    ),
}


def run_kind(name: str) -> RunKind:
    try:
        return RUN_KINDS[name]
    except KeyError:
        raise ValueError(f"kind must be one of {', '.join(RUN_KINDS)}, got {name!r}") from None
