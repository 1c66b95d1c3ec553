"""The InstructGPT K-wise reward-model loss and the pairwise statistics that go with it. Pure torch.

Ouyang et al. 2022, "Training language models to follow instructions with human feedback", §3.5, eq. (1):

    loss(θ) = − 1 / C(K,2) · E_(x, y_w, y_l)~D [ log σ( r_θ(x, y_w) − r_θ(x, y_l) ) ]

All C(K,2) comparisons of one prompt's ranking form one batch element, scored from a single forward pass over
its K responses (K passes, not 2·C(K,2)), which is both faster and avoids over-fitting from seeing each
response in many separate pairs. Here a ranking is tiers of response indices, best first; two responses in
the same tier are tied, and tied pairs carry no preference: they are skipped and the per-prompt normaliser is
the number of ordered (untied) pairs instead of C(K,2). Per-prompt losses are averaged over the prompts of the
batch. Batches may mix rankings of different K: responses beyond a ranking's K are masked out.

Shapes: N rankings (prompts) in a batch, K = the largest number of responses among them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def num_pairs(k: int) -> int:
    """C(K,2): the comparisons one ranking of K responses yields (K=4 → 6, K=9 → 36)."""
    return k * (k - 1) // 2


def preference_mask(ranks: torch.Tensor, response_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Which ordered pairs (w, l) carry a preference: response w ranked strictly above response l.

    ranks:          (N, K) long, tier position of each response (0 = best); any value where masked.
    response_mask:  (N, K) bool, True for real responses (rankings shorter than K are padded); None = all.
    returns:        (N, K, K) bool, [n, w, l] = ranks[n, w] < ranks[n, l] and both responses real.

    Each untied unordered pair appears exactly once (oriented winner → loser); tied pairs and the diagonal are
    False. With no ties and no padding, row n has C(K,2) True entries.

    The loop this replaces (the record contract's pairs, training/rlhf/data.py), for ranking n with tiers t:

        for w, l, _ in data.ordered_pairs(t):
            better[n, w, l] = True
    """
    better = ranks[:, :, None] < ranks[:, None, :]
    if response_mask is not None:
        better = better & response_mask[:, :, None] & response_mask[:, None, :]
    return better


def kwise_ranking_loss(
    rewards: torch.Tensor,
    ranks: torch.Tensor,
    response_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """InstructGPT eq. (1) with ties: mean over rankings of −1/|P_n| · Σ_(w,l)∈P_n log σ(r_w − r_l).

    rewards:        (N, K) float, the reward of every response of every ranking (one forward pass).
    ranks:          (N, K) long, tier position per response (0 = best).
    response_mask:  (N, K) bool or None.
    returns:        (loss (), per_ranking_loss (N,)); a ranking without any untied pair (all responses in one
                    tier) has per-ranking loss 0 and is left out of the mean. If no ranking of the batch has a
                    pair, the loss is 0 and still connected to the graph.

    The loop this replaces, for one ranking with rewards r (K,) and tiers t (K,):

        total, count = 0.0, 0
        for w in range(K):
            for l in range(K):
                if t[w] < t[l]:                       # w strictly preferred; ties skipped
                    total += -log(sigmoid(r[w] - r[l]))
                    count += 1
        per_ranking = total / count                   # count == C(K,2) when there are no ties
    """
    pairs = preference_mask(ranks, response_mask)  # (N, K, K)
    margins = rewards[:, :, None] - rewards[:, None, :]  # (N, K, K): r_w − r_l
    pair_losses = -F.logsigmoid(margins) * pairs  # (N, K, K), zero outside P_n
    counts = pairs.sum(dim=(1, 2))  # (N,) |P_n|
    per_ranking = pair_losses.sum(dim=(1, 2)) / counts.clamp_min(1)  # (N,)
    has_pairs = counts > 0
    if not bool(has_pairs.any()):
        return rewards.sum() * 0.0, per_ranking
    loss = per_ranking[has_pairs].mean()
    return loss, per_ranking


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """The pairwise (Bradley–Terry) loss −mean log σ(r_chosen − r_rejected).

    chosen, rejected: (P,) rewards of the preferred and the other response of P pairs. Equals
    `kwise_ranking_loss` for K = 2 without ties; used by the benchmark's naive baseline and in tests.
    """
    return -F.logsigmoid(chosen - rejected).mean()


@torch.no_grad()
def pairwise_stats(
    rewards: torch.Tensor, ranks: torch.Tensor, response_mask: torch.Tensor | None = None
) -> dict[str, float]:
    """Pair-level accuracy and margin of a batch (micro-averaged over all untied pairs).

    rewards: (N, K); ranks: (N, K); response_mask: (N, K) or None.
    accuracy = mean over pairs of [r_w > r_l] (+½ for r_w == r_l); margin = mean of r_w − r_l.
    Returns {"accuracy", "margin", "pairs"}; accuracy and margin are NaN when there are no pairs.
    """
    pairs = preference_mask(ranks, response_mask)
    margins = (rewards[:, :, None] - rewards[:, None, :]).float()[pairs]  # (P,)
    count = int(margins.numel())
    if count == 0:
        return {"accuracy": float("nan"), "margin": float("nan"), "pairs": 0}
    correct = (margins > 0).float() + 0.5 * (margins == 0).float()
    return {"accuracy": float(correct.mean()), "margin": float(margins.mean()), "pairs": count}
