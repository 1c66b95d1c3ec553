"""Reward-model ensembles (training.rlhf.rm_ensemble): the conservative combinations of Coste et al. 2024 on
hand-computed values, ensemble directories, and PPO optimising an ensemble's combination."""

from __future__ import annotations

import json
import math

import pytest
import torch

from training.rlhf.rm_ensemble import (
    COMBINATIONS,
    combine_scores,
    ensemble_members,
    member_spread,
    resolve_reward_models,
)

# Two responses scored by three members. Column 0: 1, 2, 3 (mean 2, population variance 2/3); column 1:
# −1, −1, −1 (they agree: variance 0).
SCORES = torch.tensor([[1.0, -1.0], [2.0, -1.0], [3.0, -1.0]])


def test_combinations_by_hand():
    torch.testing.assert_close(combine_scores(SCORES, method="mean"), torch.tensor([2.0, -1.0]))
    torch.testing.assert_close(combine_scores(SCORES, method="min"), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(combine_scores(SCORES, method="uwo", coef=0.5), torch.tensor([2.0 - 0.5 * 2 / 3, -1.0]))
    torch.testing.assert_close(combine_scores(SCORES, method="mean_minus_std", coef=2.0),
                               torch.tensor([2.0 - 2.0 * math.sqrt(2 / 3), -1.0]))
    torch.testing.assert_close(member_spread(SCORES), torch.tensor([math.sqrt(2 / 3), 0.0]))


def test_combination_properties_on_random_scores():
    generator = torch.Generator().manual_seed(0)
    for m in (1, 2, 5):
        scores = torch.randn(m, 64, generator=generator)
        mean = scores.mean(dim=0)
        for method in COMBINATIONS:
            combined = combine_scores(scores, method=method, coef=1.0)
            assert combined.shape == (64,)
            assert torch.all(combined <= mean + 1e-6)  # every combination is conservative: never above the mean
            if m == 1:
                torch.testing.assert_close(combined, scores[0])  # one member: its own score
        # agreement removes the penalty: identical members give the mean back
        same = scores[:1].expand(m, -1)
        for method in COMBINATIONS:
            torch.testing.assert_close(combine_scores(same, method=method), scores[0])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="method"):
        combine_scores(SCORES, method="median")
    with pytest.raises(ValueError, match="M, B"):
        combine_scores(torch.zeros(3), method="mean")


def test_ensemble_directories(tmp_path):
    root = tmp_path / "ens"
    for name in ("member-0", "member-1"):
        (root / name).mkdir(parents=True)
        (root / name / "reward_model.json").write_text("{}", encoding="utf-8")
    (root / "ensemble.json").write_text(json.dumps({"members": ["member-0", "member-1"]}), encoding="utf-8")
    assert ensemble_members(root) == [root / "member-0", root / "member-1"]
    assert ensemble_members(root / "member-0") == [root / "member-0"]  # one RM is its own ensemble
    extra = tmp_path / "other"
    assert resolve_reward_models(str(root), [str(extra), str(root / "member-1")]) == [
        str(root / "member-0"), str(root / "member-1"), str(extra)]
    (root / "ensemble.json").write_text(json.dumps({"members": ["member-0", "member-2"]}), encoding="utf-8")
    with pytest.raises(ValueError, match="member-2"):
        ensemble_members(root)


def test_ppo_optimises_the_combined_score_of_an_ensemble(random_lm_dir, tmp_path):
    """Two reward models that differ in their head's seed; the rollouts' score is the minimum of the members'
    scores (checked against scoring each member alone), and the spread is reported."""
    from tests.rlhf.recording import RecordingReporter
    from training.rlhf import ppo_trainer
    from training.rlhf.ppo_config import PPOConfig
    from training.rlhf.reward_model import RewardModel
    from training.rlhf.rm_ensemble import ENSEMBLE_FILE

    root = tmp_path / "ensemble"
    for i in range(2):
        torch.manual_seed(10 + i)
        RewardModel.from_backbone(str(random_lm_dir)).save_pretrained(root / f"member-{i}")
    (root / ENSEMBLE_FILE).write_text(json.dumps({"members": ["member-0", "member-1"]}), encoding="utf-8")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Review the cafe number {i}:"}) + "\n" for i in range(10)),
                       encoding="utf-8")
    seen: list = []
    original = ppo_trainer.PolicyRuntime.score_members

    def spy(self, *args, **kwargs):
        members = original(self, *args, **kwargs)
        seen.append(members)
        return members

    reporter = RecordingReporter()
    config = PPOConfig(policy=str(random_lm_dir), reward_model=str(root), prompts=str(prompts),
                       output_dir=str(tmp_path / "out"), iterations=2, rollout_batch_size=4, mini_batch_size=4,
                       micro_batch_size=4, ppo_epochs=1, response_length=6, eval_fraction=0.2, sample_every=0,
                       checkpoint_every=0, select_every=0, ensemble_combination="min")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ppo_trainer.PolicyRuntime, "score_members", spy)
        result = ppo_trainer.train_ppo(config, reporter=reporter)
    assert result.iterations == 2 and seen and all(m.shape[0] == 2 for m in seen)
    assert any(float((m[0] - m[1]).abs().max()) > 1e-4 for m in seen)  # the members do disagree
    step, metrics = reporter.metrics[0]
    rollout = seen[1]  # the before-evaluation (2 prompts, one chunk) first, then the first rollout
    assert step == 1 and rollout.shape[1] == config.rollout_batch_size
    assert metrics["rm_score"] == pytest.approx(float(rollout.min(dim=0).values.mean()), abs=1e-5)
    assert metrics["rm_member_spread"] == pytest.approx(float(member_spread(rollout).mean()), abs=1e-5)
    assert "rm_member_spread" in result.evaluation["after"]
