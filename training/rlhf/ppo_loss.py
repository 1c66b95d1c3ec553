"""PPO losses and diagnostics over masked token sequences.

Shapes: B sequences, T response positions, V vocabulary; `mask` (B, T) is 1 on real response tokens. Means are
over real tokens (`masked_mean`). Sources: Schulman et al. 2017 ("Proximal Policy Optimization Algorithms",
eq. 7 for the clipped surrogate); the clipped value loss of OpenAI baselines' ppo2 as used for RLHF by Ziegler
et al. 2019 and TRL; "The N+ Implementation Details of RLHF with PPO" (arXiv 2403.17031).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.rlhf.advantages import masked_mean


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T)[label]: the log-probability of each sampled token under the sampling distribution.

    logits: (B, T, V), labels: (B, T) → (B, T), float32. Every log-prob of the trainer (rollout, reference,
    PPO ratio, KL) goes through here with the SAME temperature the responses were sampled at (N details #
    "scale the logits by the sampling temperature"): otherwise the ratio and the KL compare a different
    distribution from the one that produced the tokens.
    """
    scaled = logits.float() / temperature
    picked = torch.gather(scaled, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(scaled, dim=-1)


def entropy_from_logits(logits: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """H = logsumexp(z) − Σ_v softmax(z)_v·z_v with z = logits / T. (B, T, V) → (B, T)."""
    scaled = logits.float() / temperature
    probs = torch.softmax(scaled, dim=-1)
    return torch.logsumexp(scaled, dim=-1) - (probs * scaled).sum(dim=-1)


def approx_kl(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """½·mean((log π_new − log π_old)²) over real tokens (the k2 estimator of KL(π_old‖π_new)). → ()."""
    return masked_mean(0.5 * (logprobs - old_logprobs) ** 2, mask)


@dataclass
class PolicyLoss:
    loss: torch.Tensor  # () differentiable
    clip_fraction: torch.Tensor  # () share of real tokens where the clipped term was the active one
    approx_kl: torch.Tensor  # () ½·mean(log-ratio²)
    ratio_mean: torch.Tensor  # () mean of π_new/π_old over real tokens


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    cliprange: float = 0.2,
) -> PolicyLoss:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise:

        ρ_t = exp(log π_new − log π_old)
        L = mean_t max(−A_t·ρ_t, −A_t·clip(ρ_t, 1 − ε, 1 + ε))

    logprobs, old_logprobs, advantages, mask: (B, T). Advantages are constants (no gradient).
    """
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach()
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
        kl = approx_kl(logprobs, old_logprobs, mask)
        ratio_mean = masked_mean(ratio, mask)
    return PolicyLoss(loss=loss, clip_fraction=clip_fraction, approx_kl=kl, ratio_mean=ratio_mean)


@dataclass
class ValueLoss:
    loss: torch.Tensor  # () differentiable
    clip_fraction: torch.Tensor  # () share of real tokens where the clipped error was the larger one


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    cliprange_value: float = 0.2,
) -> ValueLoss:
    """The clipped value loss (OpenAI baselines ppo2; Ziegler et al. 2019; N details):

        V_clip = V_old + clip(V − V_old, −ε_v, ε_v)
        L_V = ½·mean_t max((V − R)², (V_clip − R)²)

    values, old_values, returns, mask: (B, T).
    """
    returns = returns.detach()
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped_error > unclipped_error).float(), mask)
    return ValueLoss(loss=loss, clip_fraction=clip_fraction)


def language_model_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over real tokens, for PPO-ptx (InstructGPT eq. 2's γ·E_pretrain[log π] term).

    logits: (B, L, V), input_ids, attention_mask: (B, L) → (). Position l predicts token l + 1; a target
    counts when both it and its context token are real.
    """
    targets = input_ids[:, 1:]
    target_mask = (attention_mask[:, 1:] * attention_mask[:, :-1]).float()
    losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
    return masked_mean(losses, target_mask)
