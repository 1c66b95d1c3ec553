"""KL estimators (k1, k2, k3) and the fixed/adaptive KL controllers (training.rlhf.kl)."""

from __future__ import annotations

import math

import pytest
import torch

from training.rlhf.kl import (
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k2,
    kl_k3,
    make_kl_controller,
    per_token_kl,
)


def test_estimators_on_hand_values():
    # π(x) = 0.5, ρ(x) = 0.25: log r = log ρ − log π = −log 2, r = 0.5
    logp = torch.tensor([[math.log(0.5), math.log(0.2)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.2)]])
    torch.testing.assert_close(kl_k1(logp, ref), torch.tensor([[math.log(2), 0.0]]))
    torch.testing.assert_close(kl_k2(logp, ref), torch.tensor([[0.5 * math.log(2) ** 2, 0.0]]))
    torch.testing.assert_close(kl_k3(logp, ref), torch.tensor([[-0.5 + math.log(2), 0.0]]))
    # ρ(x) > π(x): k1 is negative, k3 stays positive. π = 0.25, ρ = 0.5: r = 2 → k3 = 1 − log 2
    torch.testing.assert_close(kl_k1(ref[:, :1], logp[:, :1]), torch.tensor([[-math.log(2)]]))
    torch.testing.assert_close(kl_k3(ref[:, :1], logp[:, :1]), torch.tensor([[1 - math.log(2)]]))
    torch.testing.assert_close(per_token_kl(logp, ref, "k3"), kl_k3(logp, ref))
    with pytest.raises(ValueError):
        per_token_kl(logp, ref, "k4")


def test_k1_and_k3_are_unbiased_estimates_of_the_true_kl():
    generator = torch.Generator().manual_seed(0)
    policy = torch.tensor([0.5, 0.3, 0.15, 0.05])
    reference = torch.tensor([0.25, 0.25, 0.25, 0.25])
    exact = float((policy * (policy.log() - reference.log())).sum())
    draws = torch.multinomial(policy, 400_000, replacement=True, generator=generator)
    logp, ref = policy.log()[draws][None], reference.log()[draws][None]
    assert float(kl_k1(logp, ref).mean()) == pytest.approx(exact, abs=3e-3)
    assert float(kl_k3(logp, ref).mean()) == pytest.approx(exact, abs=3e-3)
    assert float(kl_k3(logp, ref).min()) >= 0.0
    assert float(kl_k3(logp, ref).var()) < float(kl_k1(logp, ref).var())


def test_adaptive_controller_update_by_hand():
    controller = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    # KL 9: e = clip(9/6 − 1 = 0.5) = 0.2 → β = 0.2·(1 + 0.2·256/10000) = 0.201024
    assert controller.update(9.0, 256) == pytest.approx(0.201024)
    controller = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    # KL 6.6: e = 0.1 → β = 0.2·(1 + 0.1·256/10000) = 0.200512
    assert controller.update(6.6, 256) == pytest.approx(0.200512)
    # then KL 3: e = clip(−0.5) = −0.2 → β = 0.200512·(1 − 0.2·512/10000)
    assert controller.update(3.0, 512) == pytest.approx(0.200512 * (1 - 0.2 * 512 / 10_000))
    # At the target β does not move; NaN is ignored.
    before = controller.value
    assert controller.update(6.0, 64) == pytest.approx(before)
    assert controller.update(float("nan"), 64) == before


def test_controllers_state_round_trip():
    adaptive = AdaptiveKLController(0.05, target=4.0, horizon=500)
    adaptive.update(10.0, 32)
    restored = AdaptiveKLController(1.0, target=1.0, horizon=1)
    restored.load_state_dict(adaptive.state_dict())
    assert restored.state_dict() == adaptive.state_dict()
    assert restored.update(1.0, 8) == adaptive.update(1.0, 8)
    fixed = FixedKLController(0.1)
    assert fixed.update(100.0, 64) == 0.1
    with pytest.raises(ValueError):
        fixed.load_state_dict(adaptive.state_dict())
    assert isinstance(make_kl_controller(0.1, target=None, horizon=100), FixedKLController)
    assert isinstance(make_kl_controller(0.1, target=3.0, horizon=100), AdaptiveKLController)


def test_the_default_horizon_lets_the_controller_act_within_the_run():
    """Issue 14: with the old fixed horizon of 10,000 episodes a 1,280-episode run could move β by at most
    ≈ 2.6 % ((1 + 0.2·32/10000)^40); the default horizon (a tenth of the run's episodes) lets β grow up to
    (1 + 0.2·32/128)^40 = 1.05^40 ≈ 7.04× when the KL stays above the target, and shrink to 0.95^40 ≈ 0.129×
    when it stays below."""
    from training.rlhf.ppo_config import PPOConfig

    config = PPOConfig(policy="p", reward_model="r", prompts="q", output_dir="o")
    assert config.episodes == 1280 and config.kl_horizon_episodes == 128
    up = AdaptiveKLController(0.05, target=config.kl_target, horizon=config.kl_horizon_episodes)
    down = AdaptiveKLController(0.05, target=config.kl_target, horizon=config.kl_horizon_episodes)
    old = AdaptiveKLController(0.05, target=config.kl_target, horizon=10_000)
    for _ in range(config.num_iterations):
        up.update(config.kl_target * 3, n_steps=config.rollout_batch_size)
        down.update(0.0, n_steps=config.rollout_batch_size)
        old.update(config.kl_target * 3, n_steps=config.rollout_batch_size)
    assert up.value == pytest.approx(0.05 * 1.05**40, rel=1e-12) and up.value / 0.05 > 7.0
    assert down.value == pytest.approx(0.05 * 0.95**40, rel=1e-12)
    assert old.value / 0.05 < 1.03
