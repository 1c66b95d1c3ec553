"""Known-answer and equivalence tests for GAE, masked statistics and whitening (training.rlhf.advantages)."""

from __future__ import annotations

import pytest
import torch

from training.rlhf.advantages import (
    compute_gae,
    compute_gae_reference,
    discount_matrix,
    explained_variance,
    masked_mean,
    masked_var,
    masked_whiten,
)


def test_gae_three_steps_by_hand():
    # Row 0: all real.  δ2 = 1 − 0.4 = 0.6; δ1 = 0.4 − 0.2 = 0.2; δ0 = 0.2 − 0.5 = −0.3
    #        A2 = 0.6; A1 = 0.2 + 0.95·0.6 = 0.77; A0 = −0.3 + 0.95·0.77 = 0.4315
    # Row 1: the last step is padding (its reward 5 and value 9 must be ignored).
    #        δ1 = 1 + 0 − 0.6 = 0.4; δ0 = 0 + 0.6 − 0.3 = 0.3; A1 = 0.4; A0 = 0.3 + 0.95·0.4 = 0.68
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.2, 0.4], [0.3, 0.6, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    advantages, returns = compute_gae(rewards, values, mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(advantages, torch.tensor([[0.4315, 0.77, 0.6], [0.68, 0.4, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.9315, 0.97, 1.0], [0.98, 1.0, 0.0]]))


def test_gae_with_discount_by_hand():
    # γ = 0.5, λ = 0.5: δ2 = 1 − 0.4 = 0.6; δ1 = 0.5·0.4 − 0.2 = 0; δ0 = 0.5·0.2 − 0.5 = −0.4
    # A2 = 0.6; A1 = 0 + 0.25·0.6 = 0.15; A0 = −0.4 + 0.25·0.15 = −0.3625
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.4]])
    advantages, returns = compute_gae(rewards, values, torch.ones(1, 3), gamma=0.5, lam=0.5)
    torch.testing.assert_close(advantages, torch.tensor([[-0.3625, 0.15, 0.6]]))
    torch.testing.assert_close(returns, torch.tensor([[0.1375, 0.35, 1.0]]))


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (1.0, 1.0), (0.9, 0.0)])
def test_vectorised_gae_equals_reference_loop_on_random_data(gamma, lam):
    generator = torch.Generator().manual_seed(7)
    batch, steps = 6, 40
    rewards = torch.randn(batch, steps, generator=generator)
    values = torch.randn(batch, steps, generator=generator)
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    lengths[0] = steps  # one full row
    right_padded = (torch.arange(steps)[None, :] < lengths[:, None]).long()
    holes = (torch.rand(batch, steps, generator=generator) > 0.3).long()  # arbitrary masks agree too
    for mask in (right_padded, holes, torch.ones(batch, steps)):
        fast = compute_gae(rewards, values, mask, gamma=gamma, lam=lam)
        loop = compute_gae_reference(rewards, values, mask, gamma=gamma, lam=lam)
        torch.testing.assert_close(fast[0], loop[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fast[1], loop[1], atol=1e-5, rtol=1e-5)
        assert torch.all(fast[0][mask == 0] == 0)


def test_gae_ignores_what_follows_the_last_real_token():
    rewards = torch.tensor([[0.1, -0.2, 1.0, 0.0, 0.0]])
    values = torch.tensor([[0.3, 0.1, -0.4, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    base = compute_gae(rewards, values, mask)
    noisy = compute_gae(rewards + torch.tensor([[0, 0, 0, 7.0, -3.0]]), values + torch.tensor([[0, 0, 0, 2.0, 5.0]]), mask)
    torch.testing.assert_close(base[0], noisy[0])
    torch.testing.assert_close(base[1], noisy[1])
    short = compute_gae(rewards[:, :3], values[:, :3], mask[:, :3])
    torch.testing.assert_close(base[0][:, :3], short[0])


def test_discount_matrix():
    gamma = discount_matrix(3, 0.5)
    torch.testing.assert_close(gamma, torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.25, 0.5, 1.0]]))
    long = discount_matrix(2000, 0.95, dtype=torch.float64)
    assert torch.isfinite(long).all() and long[-1, 0] >= 0


def test_masked_statistics_equal_plain_ones_on_the_slice():
    generator = torch.Generator().manual_seed(3)
    values = torch.randn(5, 9, generator=generator) * 3 + 1
    mask = (torch.rand(5, 9, generator=generator) > 0.4).long()
    real = values[mask.bool()]
    torch.testing.assert_close(masked_mean(values, mask), real.mean())
    torch.testing.assert_close(masked_var(values, mask), real.var(unbiased=True))
    torch.testing.assert_close(masked_var(values, mask, unbiased=False), real.var(unbiased=False))
    row_means = masked_mean(values, mask, dim=1)
    for b in range(5):
        if mask[b].any():
            torch.testing.assert_close(row_means[b], values[b][mask[b].bool()].mean())


def test_masked_whitening_equals_plain_whitening_on_the_slice():
    generator = torch.Generator().manual_seed(5)
    values = torch.randn(4, 12, generator=generator) * 2.5 - 4
    mask = (torch.rand(4, 12, generator=generator) > 0.5).long()
    real = values[mask.bool()]
    expected = (real - real.mean()) / torch.sqrt(real.var(unbiased=True) + 1e-8)
    whitened = masked_whiten(values, mask)
    torch.testing.assert_close(whitened[mask.bool()], expected)
    assert torch.all(whitened[mask == 0] == 0)
    # The padding's values do not matter.
    torch.testing.assert_close(masked_whiten(values + (1 - mask) * 100.0, mask), whitened)
    # shift_mean=False scales but keeps the mean.
    kept = masked_whiten(values, mask, shift_mean=False)[mask.bool()]
    torch.testing.assert_close(kept, expected + real.mean())
    torch.testing.assert_close(kept.mean(), real.mean())


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask) == pytest.approx(0.0)
    # residuals [0.5, -0.5, 0.5] (mean 1/6): var 2/9; var of returns 2/3 → 1 − 1/3
    values = torch.tensor([[0.5, 2.5, 2.5, 0.0]])
    assert explained_variance(values, returns, mask) == pytest.approx(1 - (2 / 9) / (2 / 3))
