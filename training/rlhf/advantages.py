"""Masked statistics, whitening, GAE and explained variance for PPO over token sequences.

Shapes: B sequences (rollout rows), T response positions. A `mask` (B, T) is 1 on real response tokens (up to
and including the stop token) and 0 on the padding after it; every statistic here is taken over the real tokens
only ("The N+ Implementation Details of RLHF with PPO", Huang et al. 2024, arXiv 2403.17031, §whitening; the
HF blog "The N Implementation Details of RLHF with PPO", 2023).
"""

from __future__ import annotations

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ values·mask over `dim` (all elements when None). values, mask: (B, T)."""
    product = values * mask
    return product.sum() if dim is None else product.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ values·mask / Σ mask over `dim` (all elements when None); 0 where the mask is empty.

    values, mask: (B, T) → () or, with dim=1, (B,).
    """
    mask = mask.to(values.dtype)
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, *, unbiased: bool = True) -> torch.Tensor:
    """Variance of the real tokens' values: Σ (x − μ)²·m / (n − 1) (Bessel-corrected when `unbiased`).

    values, mask: (B, T) → (). Equals `values[mask.bool()].var(unbiased=unbiased)`.
    """
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    count = mask.sum()
    squared = masked_sum((values - mean) ** 2, mask)
    if unbiased:
        if count < 2:
            return torch.zeros((), dtype=values.dtype, device=values.device)
        return squared / (count - 1)
    return squared / count.clamp(min=1.0)


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(x − μ) / √(σ² + eps) with μ, σ² over the real tokens only; masked positions are returned as 0.

    values, mask: (B, T) → (B, T). With `shift_mean=False` the mean is added back (reward whitening
    scales without shifting, so the sign of a lone reward survives — N+ details, "reward whitening").
    Equals plain whitening of `values[mask.bool()]` on those positions.
    """
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    var = masked_var(values, mask, unbiased=True)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def discount_matrix(length: int, factor: float, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Γ (T, T) with Γ[k, t] = factor^(k − t) for k ≥ t, else 0, so that (x @ Γ)[t] = Σ_{k≥t} factor^(k−t) x_k.

    Built from integer exponents (no factor^-t scaling), so it neither overflows nor loses precision for long
    sequences.
    """
    index = torch.arange(length, device=device)
    exponent = index[:, None] - index[None, :]  # k − t
    gamma = torch.tensor(factor, dtype=torch.float64, device=device) ** exponent.clamp(min=0).to(torch.float64)
    return torch.where(exponent >= 0, gamma, torch.zeros_like(gamma)).to(dtype)


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2015, "High-Dimensional Continuous Control Using GAE").

    rewards, values, mask: (B, T) → advantages, returns: (B, T), zero on masked positions.

        δ_t = r_t + γ·V_{t+1} − V_t          (V after the last real token is 0: the episode ends there)
        A_t = Σ_{k≥t} (γλ)^(k−t) δ_k         returns R_t = A_t + V_t (the value targets)

    Masked rewards and values are zeroed first, so a response that ends before T bootstraps from 0.
    Vectorised as A = δ @ Γ with Γ the (γλ)-discount matrix (`discount_matrix`). The loop it replaces
    (CleanRL ppo.py; TRL's PPOTrainer):

        lastgaelam = 0
        for t in reversed(range(T)):
            nextvalues = values[:, t + 1] if t < T - 1 else 0.0
            delta = rewards[:, t] + gamma * nextvalues - values[:, t]
            lastgaelam = delta + gamma * lam * lastgaelam
            advantages[:, t] = lastgaelam
        returns = advantages + values
    """
    mask = mask.to(values.dtype)
    rewards = rewards * mask
    values = values * mask
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = rewards + gamma * next_values - values
    steps = rewards.shape[1]
    weights = discount_matrix(steps, gamma * lam, device=rewards.device, dtype=torch.float64)
    advantages = (deltas.to(torch.float64) @ weights).to(values.dtype)
    returns = advantages + values
    return advantages * mask, returns * mask


def compute_gae_reference(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loop version of `compute_gae` (same inputs and outputs), kept to test the vectorised one against."""
    mask = mask.to(values.dtype)
    rewards = rewards * mask
    values = values * mask
    steps = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    lastgaelam = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        nextvalues = values[:, t + 1] if t < steps - 1 else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages[:, t] = lastgaelam
    returns = advantages + values
    return advantages * mask, returns * mask


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var[R − V] / Var[R] over the real tokens: 1 is a perfect critic, ≤ 0 no better than a constant.

    values, returns, mask: (B, T) → float (nan when the returns have no variance).
    """
    var_returns = masked_var(returns, mask, unbiased=False)
    if float(var_returns) == 0.0:
        return float("nan")
    return float(1.0 - masked_var(returns - values, mask, unbiased=False) / var_returns)
