"""Clipped surrogate and value losses at and past the clip, entropy and log-probs (training.rlhf.ppo_loss)."""

from __future__ import annotations

import math

import pytest
import torch

from training.rlhf.ppo_loss import (
    approx_kl,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    language_model_loss,
    logprobs_from_logits,
)


def _policy(ratio: float, advantage: float, cliprange: float = 0.2):
    logp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    out = clipped_policy_loss(logp, torch.zeros(1, 1), torch.tensor([[advantage]]), torch.ones(1, 1), cliprange=cliprange)
    out.loss.backward()
    return out, float(logp.grad)


@pytest.mark.parametrize(
    "ratio,advantage,loss,clipped,grad",
    [
        (1.0, 1.0, -1.0, 0.0, -1.0),  # inside: −A·ρ, d/dlogπ = −A·ρ
        (1.2, 1.0, -1.2, 0.0, -1.2),  # exactly at the clip: both terms equal, not counted as clipped
        (1.5, 1.0, -1.2, 1.0, 0.0),  # past the clip with A > 0: clipped, no gradient
        (1.5, -1.0, 1.5, 0.0, 1.5),  # past with A < 0: the unclipped (pessimistic) term, gradient flows
        (0.5, 1.0, -0.5, 0.0, -0.5),  # below 1 − ε with A > 0: unclipped is the max
        (0.5, -1.0, 0.8, 1.0, 0.0),  # below 1 − ε with A < 0: clipped, no gradient
        (0.8, -2.0, 1.6, 0.0, 1.6),  # exactly at 1 − ε
    ],
)
def test_clipped_surrogate_at_and_past_the_clip(ratio, advantage, loss, clipped, grad):
    out, gradient = _policy(ratio, advantage)
    assert float(out.loss.detach()) == pytest.approx(loss, abs=1e-6)
    assert float(out.clip_fraction) == clipped
    assert gradient == pytest.approx(grad, abs=1e-6)
    assert float(out.ratio_mean) == pytest.approx(ratio)
    assert float(out.approx_kl) == pytest.approx(0.5 * math.log(ratio) ** 2)


def test_clipped_surrogate_is_a_masked_mean():
    logp = torch.log(torch.tensor([[1.5, 1.0, 9.0]]))
    out = clipped_policy_loss(logp, torch.zeros(1, 3), torch.tensor([[1.0, 2.0, 5.0]]), torch.tensor([[1, 1, 0]]))
    assert float(out.loss.detach()) == pytest.approx((-1.2 - 2.0) / 2)
    assert float(out.clip_fraction) == pytest.approx(0.5)
    assert float(out.ratio_mean) == pytest.approx(1.25)


@pytest.mark.parametrize(
    "value,old,ret,loss,clipped",
    [
        (0.1, 0.0, 1.0, 0.5 * 0.81, 0.0),  # inside the clip: plain squared error
        (0.2, 0.0, 1.0, 0.5 * 0.64, 0.0),  # exactly at the clip
        (0.5, 0.0, 1.0, 0.5 * 0.64, 1.0),  # moved past the clip towards the return: the clipped error (0.8²) counts
        (0.5, 0.0, 0.0, 0.5 * 0.25, 0.0),  # moved away from the return: the unclipped error is larger
        (-0.7, 0.0, -2.0, 0.5 * 1.8**2, 1.0),
    ],
)
def test_clipped_value_loss_at_and_past_the_clip(value, old, ret, loss, clipped):
    values = torch.tensor([[value]], requires_grad=True)
    out = clipped_value_loss(values, torch.tensor([[old]]), torch.tensor([[ret]]), torch.ones(1, 1), cliprange_value=0.2)
    assert float(out.loss.detach()) == pytest.approx(loss, abs=1e-6)
    assert float(out.clip_fraction) == clipped
    out.loss.backward()
    if clipped:
        assert float(values.grad) == 0.0
    else:
        assert float(values.grad) == pytest.approx(value - ret, abs=1e-6)


def test_logprobs_entropy_and_temperature():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 11, generator=generator)
    labels = torch.randint(0, 11, (2, 5), generator=generator)
    for temperature in (1.0, 0.7, 1.6):
        expected = torch.log_softmax(logits / temperature, dim=-1).gather(-1, labels[..., None])[..., 0]
        torch.testing.assert_close(logprobs_from_logits(logits, labels, temperature=temperature), expected)
        probs = torch.softmax(logits / temperature, dim=-1)
        torch.testing.assert_close(
            entropy_from_logits(logits, temperature=temperature), -(probs * probs.log()).sum(-1)
        )
    assert not torch.allclose(logprobs_from_logits(logits, labels, temperature=0.7), logprobs_from_logits(logits, labels))
    uniform = torch.zeros(1, 1, 8)
    assert float(entropy_from_logits(uniform)) == pytest.approx(math.log(8))


def test_approx_kl_and_language_model_loss():
    old = torch.tensor([[0.0, 0.0, 0.0]])
    new = torch.tensor([[0.2, -0.4, 3.0]])
    assert float(approx_kl(new, old, torch.tensor([[1, 1, 0]]))) == pytest.approx(0.5 * (0.04 + 0.16) / 2)
    logits = torch.zeros(1, 4, 5)
    ids = torch.tensor([[1, 2, 3, 0]])
    assert float(language_model_loss(logits, ids, torch.tensor([[1, 1, 1, 0]]))) == pytest.approx(math.log(5))
