"""bf16 on the CPU (issue 14, bugs 3 and 6): the reward model's head and calibration run in float32 under bf16
autocast, and with bf16 the reference and the actor take the same precision path, so the KL at the first
iteration (where the actor is the reference) is exactly 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.rlhf.recording import RecordingReporter
from training.rlhf.calibration import Calibration
from training.rlhf.ppo_config import PPOConfig
from training.rlhf.ppo_trainer import train_ppo
from training.rlhf.reward_model import RewardModel, pad_sequences


@pytest.fixture(autouse=True)
def _one_thread(_torch_threads):
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def calibrated_rm_dir(random_lm_dir, tmp_path_factory) -> Path:
    torch.manual_seed(1)
    model = RewardModel.from_backbone(str(random_lm_dir))
    model.calibration = Calibration(bias=1.74, gain=0.37)
    return model.save_pretrained(tmp_path_factory.mktemp("rm") / "rm")


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    places = ["harbour cafe", "night train", "jazz club", "village bakery", "city library", "bike shop"]
    rows = [{"prompt": f"Write a short review of the {p} number {i}:"} for i in range(2) for p in places]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _batch(model: RewardModel) -> tuple[torch.Tensor, torch.Tensor]:
    texts = [("Review the jazz club:", " The band was loud."), ("Tell me about the bakery:", " Fresh bread!")]
    ids, mask = pad_sequences(model.encode([p for p, _ in texts], [r for _, r in texts]),
                              pad_id=model.pad_token_id, side="right")
    return ids, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reward_head_and_calibration_run_in_float32_under_bf16_autocast(calibrated_rm_dir, seed):
    model = RewardModel.from_pretrained(calibrated_rm_dir)
    torch.manual_seed(seed)
    with torch.no_grad():
        model.score_head.weight.normal_()
        model.score_head.bias.normal_()
    ids, mask = _batch(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.last_hidden(ids, mask)  # the backbone in bf16 (autocast)
        calibrated = model(ids, mask)
        raw = model(ids, mask, calibrated=False)
    assert calibrated.dtype == torch.float32 and raw.dtype == torch.float32
    expected_raw = torch.nn.functional.linear(hidden.float(), model.score_head.weight, model.score_head.bias)[:, 0]
    assert torch.equal(raw, expected_raw)  # the head in float32 on the (bf16-computed) hidden state
    assert torch.equal(calibrated, expected_raw * 0.37 + 1.74)  # and the calibration in float32 as well


def _config(lm, rm, prompts, out, **overrides) -> PPOConfig:
    values = dict(policy=str(lm), reward_model=str(rm), prompts=str(prompts), output_dir=str(out), iterations=1,
                  rollout_batch_size=8, mini_batch_size=8, micro_batch_size=4, ppo_epochs=1, response_length=8,
                  sample_every=0, checkpoint_every=0, evaluate=False, lr=1e-3, critic_lr=1e-3, bf16="true",
                  kl_target=0.0, cpu=True)
    values.update(overrides)
    return PPOConfig(**values)


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("lora", [False, True])
def test_bf16_kl_is_exactly_zero_at_the_first_iteration(random_lm_dir, calibrated_rm_dir, prompt_file, tmp_path,
                                                         seed, lora):
    reporter = RecordingReporter()
    train_ppo(_config(random_lm_dir, calibrated_rm_dir, prompt_file, tmp_path / "out", seed=seed, lora=lora),
              reporter=reporter)
    metrics = reporter.by_step()[1]
    assert metrics["kl"] == 0.0 and metrics["kl_k1"] == 0.0
    assert metrics["approx_kl"] < 1e-9 and metrics["clip_fraction"] == 0.0
