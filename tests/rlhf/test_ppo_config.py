"""PPOConfig: validation with the field named, derived sizes computed once, help on every field, the CLI and
config.json round trips."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from training.rlhf.configs import (
    ConfigError,
    add_config_arguments,
    config_from_args,
    describe_fields,
    save_config,
)
from training.rlhf.ppo_config import PPOConfig
from training.rlhf.ppo_trainer import load_ppo_config

REQUIRED = dict(policy="m", reward_model="rm", prompts="p.jsonl", output_dir="out")


def test_every_field_has_help_text():
    for f in dataclasses.fields(PPOConfig):
        assert f.metadata.get("help", "").strip(), f"{f.name} has no help text"
    described = {d["name"]: d for d in describe_fields(PPOConfig)}
    assert described["kl_estimator"]["choices"] == ("k1", "k3")
    assert described["cliprange"]["default"] == 0.2 and described["lam"]["default"] == 0.95
    assert described["gamma"]["default"] == 1.0
    assert "27.8" in described["ptx_coef"]["help"]


def test_derived_sizes_are_computed_once_from_the_options():
    config = PPOConfig(**REQUIRED, total_episodes=2048, rollout_batch_size=64, mini_batch_size=16,
                       micro_batch_size=4, ppo_epochs=4, warmup_ratio=0.05)
    assert config.num_iterations == 32
    assert config.mini_batches_per_rollout == 4
    assert config.gradient_accumulation_steps == 4
    assert config.optimizer_steps_per_iteration == 16
    assert config.total_optimizer_steps == 512
    assert config.warmup_steps == 26
    assert config.generation_batch_size == 64 and config.adaptive_kl  # kl_target 3 by default
    assert config.kl_horizon_episodes == 2048 // 10 and config.kl_stop == 2.0 * 3.0  # relative to the run
    assert not PPOConfig(**REQUIRED, kl_target=0.0).adaptive_kl
    assert PPOConfig(**REQUIRED, kl_target=0.0).kl_stop == 0.0
    assert PPOConfig(**REQUIRED, kl_horizon=5000).kl_horizon_episodes == 5000
    assert PPOConfig(**REQUIRED, iterations=5, total_episodes=100_000).num_iterations == 5
    assert PPOConfig(**REQUIRED, total_episodes=65, rollout_batch_size=64, mini_batch_size=16).num_iterations == 2
    assert PPOConfig(**REQUIRED, kl_target=6.0).adaptive_kl
    assert set(config.derived()) >= {"num_iterations", "gradient_accumulation_steps", "total_optimizer_steps"}


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"policy": ""}, "policy"),
        ({"reward_model": " "}, "reward_model"),
        ({"prompts": ""}, "prompts"),
        ({"output_dir": ""}, "output_dir"),
        ({"rollout_batch_size": 64, "mini_batch_size": 24}, "mini_batch_size"),
        ({"mini_batch_size": 16, "micro_batch_size": 3}, "micro_batch_size"),
        ({"iterations": 0, "total_episodes": 0}, "iterations"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"cliprange": 0.0}, "cliprange"),
        ({"gamma": 1.01}, "gamma"),
        ({"lam": -0.1}, "lam"),
        ({"lr": 0.0}, "lr"),
        ({"kl_estimator": "k2"}, "kl_estimator"),
        ({"score_norm": "z"}, "score_norm"),
        ({"ptx_coef": 1.0}, "ptx_dataset"),
        ({"critic_lora": True, "critic_init": "policy"}, "critic_lora"),
        ({"bf16": "maybe"}, "bf16"),
        ({"ppo_epochs": 0}, "ppo_epochs"),
        ({"rollout_batch_size": True}, "rollout_batch_size"),
        ({"lora_target_modules": []}, "lora_target_modules"),
        ({"stop_token": ""}, "stop_token"),
        ({"missing_eos_penalty": -1.0}, "missing_eos_penalty"),
    ],
)
def test_invalid_options_name_their_field(overrides, field):
    with pytest.raises(ConfigError) as caught:
        PPOConfig(**{**REQUIRED, **overrides})
    assert caught.value.field == field


def test_cli_options_are_generated_from_the_dataclass():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, PPOConfig)
    args = parser.parse_args(["--policy", "m", "--reward-model", "rm", "--prompts", "p", "--output-dir", "o",
                              "--kl-estimator", "k3", "--lora", "true", "--lora-target-modules", "c_attn", "c_proj",
                              "--rollout-batch-size", "32", "--mini-batch-size", "8", "--micro-batch-size", "4", "--kl-target", "4"])
    config = config_from_args(PPOConfig, args)
    assert config.kl_estimator == "k3" and config.lora and config.lora_target_modules == ["c_attn", "c_proj"]
    assert config.rollout_batch_size == 32 and config.adaptive_kl and config.mini_batches_per_rollout == 4
    assert config.ppo_epochs == 4  # untouched defaults stay
    with pytest.raises(SystemExit):
        parser.parse_args(["--kl-estimator", "k9"])


def test_config_json_round_trip_keeps_inputs_only(tmp_path):
    config = PPOConfig(**REQUIRED, iterations=3, kl_target=2.0, lora_target_modules=["c_attn"])
    save_config(config, tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "num_iterations" not in saved and saved["iterations"] == 3
    loaded = load_ppo_config(tmp_path / "config.json")
    assert loaded == config and loaded.derived() == config.derived()
