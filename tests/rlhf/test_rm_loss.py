"""Known-answer and equivalence tests of the K-wise reward-model loss (training/rlhf/rm_loss.py)."""

import itertools
import math
import random

import pytest
import torch

from training.rlhf.data import ordered_pairs, tier_issues, tiers_to_ranks
from training.rlhf.rm_loss import (
    kwise_ranking_loss,
    num_pairs,
    pairwise_loss,
    pairwise_stats,
    preference_mask,
)


def softplus_neg(x: float) -> float:
    """−log σ(x) = log(1 + e^(−x)), computed by hand."""
    return math.log1p(math.exp(-x))


def naive_ranking_loss(rewards: list[float], ranking: list[list[int]]) -> float:
    """The definition, literally: every unordered pair once, oriented by the tiers; tied pairs skipped."""
    tier = {i: t for t, group in enumerate(ranking) for i in group}
    losses = []
    for i, j in itertools.combinations(range(len(rewards)), 2):
        if tier[i] == tier[j]:
            continue
        w, lo = (i, j) if tier[i] < tier[j] else (j, i)
        losses.append(softplus_neg(rewards[w] - rewards[lo]))
    return sum(losses) / len(losses)


def batch(rankings: list[tuple[list[float], list[list[int]]]]):
    """Pad rankings of different K into (N, K) rewards, ranks and mask."""
    k_max = max(len(r) for r, _ in rankings)
    rewards = torch.zeros(len(rankings), k_max, dtype=torch.float64)
    ranks = torch.zeros(len(rankings), k_max, dtype=torch.long)
    mask = torch.zeros(len(rankings), k_max, dtype=torch.bool)
    for n, (values, ranking) in enumerate(rankings):
        rewards[n, : len(values)] = torch.tensor(values, dtype=torch.float64)
        ranks[n, : len(values)] = torch.tensor(tiers_to_ranks(ranking, len(values)))
        mask[n, : len(values)] = True
    return rewards, ranks, mask


def test_known_answer_three_responses():
    # pairs (0,1), (0,2), (1,2) with margins 1, 2, 1
    rewards, ranks, mask = batch([([1.0, 0.0, -1.0], [[0], [1], [2]])])
    loss, per_ranking = kwise_ranking_loss(rewards, ranks, mask)
    expected = (2 * math.log1p(math.exp(-1)) + math.log1p(math.exp(-2))) / 3
    assert expected == pytest.approx(0.2511504619, abs=1e-9)
    assert float(loss) == pytest.approx(expected, abs=1e-12)
    assert float(per_ranking[0]) == pytest.approx(expected, abs=1e-12)


def test_loss_is_the_mean_of_naive_pairwise_losses_on_a_hand_made_batch():
    # K=4, ranking [[2], [0, 3], [1]]: response 2 best, 0 and 3 tied, 1 worst → 5 ordered pairs, not 6
    example = ([0.5, -1.0, 2.0, 0.25], [[2], [0, 3], [1]])
    pairs = [(2, 0), (2, 3), (2, 1), (0, 1), (3, 1)]
    r = example[0]
    by_hand = sum(softplus_neg(r[w] - r[lo]) for w, lo in pairs) / 5
    rewards, ranks, mask = batch([example])
    loss, _ = kwise_ranking_loss(rewards, ranks, mask)
    assert float(loss) == pytest.approx(by_hand, abs=1e-12)
    # …and the per-prompt mean over a batch of two prompts
    second = ([0.0, 1.0, -0.5, 0.3], [[1], [3], [0], [2]])
    rewards, ranks, mask = batch([example, second])
    loss, per_ranking = kwise_ranking_loss(rewards, ranks, mask)
    second_by_hand = naive_ranking_loss(*second)
    assert float(per_ranking[1]) == pytest.approx(second_by_hand, abs=1e-12)
    assert float(loss) == pytest.approx((by_hand + second_by_hand) / 2, abs=1e-12)


@pytest.mark.parametrize("k, expected", [(2, 1), (4, 6), (9, 36)])
def test_pair_counts(k, expected):
    ranks = torch.arange(k).unsqueeze(0)  # a strict ranking, no ties
    assert num_pairs(k) == expected
    assert int(preference_mask(ranks).sum()) == expected
    # each unordered pair appears exactly once, oriented
    mask = preference_mask(ranks)[0]
    assert not bool((mask & mask.T).any())
    assert int((mask | mask.T).sum()) == k * (k - 1)


def test_ties_are_skipped_and_the_normaliser_adjusted():
    ranks = torch.tensor([tiers_to_ranks([[0, 1], [2, 3]], 4)])
    assert int(preference_mask(ranks).sum()) == 4  # 6 pairs − 2 tied
    rewards = torch.tensor([[3.0, -7.0, 0.0, 1.0]], dtype=torch.float64)
    loss, _ = kwise_ranking_loss(rewards, ranks)
    pairs = [(0, 2), (0, 3), (1, 2), (1, 3)]
    by_hand = sum(softplus_neg(float(rewards[0, w] - rewards[0, lo])) for w, lo in pairs) / 4
    assert float(loss) == pytest.approx(by_hand, abs=1e-12)
    # with C(4,2) = 6 as the normaliser (ties counted) the value would differ
    assert float(loss) != pytest.approx(by_hand * 4 / 6)


def test_a_ranking_with_everything_tied_is_left_out_of_the_mean():
    rewards, ranks, mask = batch([([1.0, 2.0, 3.0], [[0, 1, 2]]), ([1.0, 0.0], [[0], [1]])])
    loss, per_ranking = kwise_ranking_loss(rewards, ranks, mask)
    assert float(per_ranking[0]) == 0.0
    assert float(loss) == pytest.approx(softplus_neg(1.0))
    # a batch of only all-tied rankings: zero loss that still back-propagates
    rewards = torch.tensor([[1.0, 2.0]], requires_grad=True)
    loss, _ = kwise_ranking_loss(rewards, torch.tensor([[0, 0]]))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(rewards.grad, torch.zeros_like(rewards))


def test_vectorised_equals_the_loop_on_random_mixed_k_batches_with_ties():
    rng = random.Random(0)
    rankings = []
    for _ in range(40):
        k = rng.randint(2, 9)
        values = [rng.gauss(0, 2) for _ in range(k)]
        order = list(range(k))
        rng.shuffle(order)
        tiers, i = [], 0
        while i < k:
            size = rng.choice([1, 1, 1, 2, 3])
            tiers.append(order[i:i + size])
            i += size
        rankings.append((values, tiers))
    rewards, ranks, mask = batch(rankings)
    loss, per_ranking = kwise_ranking_loss(rewards, ranks, mask)
    expected = []
    for n, (values, tiers) in enumerate(rankings):
        if len(tiers) == 1:
            continue
        naive = naive_ranking_loss(values, tiers)
        assert float(per_ranking[n]) == pytest.approx(naive, abs=1e-10)
        expected.append(naive)
    assert float(loss) == pytest.approx(sum(expected) / len(expected), abs=1e-10)
    # padding values never matter
    noisy = rewards.clone()
    noisy[~mask] = 1e6
    assert float(kwise_ranking_loss(noisy, ranks, mask)[0]) == pytest.approx(float(loss), abs=1e-10)


def test_gradient_matches_the_pairwise_formula():
    # d/dr_w of −log σ(r_w − r_l) = −σ(r_l − r_w); for K=2 without ties the K-wise loss is the pairwise loss
    rewards = torch.tensor([[0.3, -0.2]], requires_grad=True)
    loss, _ = kwise_ranking_loss(rewards, torch.tensor([[0, 1]]))
    loss.backward()
    s = torch.sigmoid(torch.tensor(-0.5))
    assert torch.allclose(rewards.grad, torch.tensor([[-s, s]]))
    chosen, rejected = torch.tensor([0.3, 1.0]), torch.tensor([-0.2, 2.0])
    two, _ = kwise_ranking_loss(torch.stack([chosen, rejected], dim=1), torch.tensor([[0, 1], [0, 1]]))
    assert float(two) == pytest.approx(float(pairwise_loss(chosen, rejected)))


def test_pairwise_stats():
    rewards, ranks, mask = batch([([2.0, 1.0, 1.0], [[0], [1], [2]]), ([0.0, 1.0], [[0], [1]])])
    stats = pairwise_stats(rewards, ranks, mask)
    # pairs: (0,1) +1 ✓, (0,2) +1 ✓, (1,2) 0 → ½, second (0,1) −1 ✗
    assert stats["pairs"] == 4
    assert stats["accuracy"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert stats["margin"] == pytest.approx((1 + 1 + 0 - 1) / 4)
    empty = pairwise_stats(torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.long))
    assert empty["pairs"] == 0 and math.isnan(empty["accuracy"])


@pytest.mark.parametrize(
    "ranking, message",
    [([[0], [1]], "missing"), ([[0, 1], [1, 2]], "twice"), ([[0], [1, 2, 3]], "out of range")],
)
def test_tiers_to_ranks_rejects_bad_rankings(ranking, message):
    with pytest.raises(ValueError, match=message):
        tiers_to_ranks(ranking, 3)


def random_tiers(rng: random.Random, k: int) -> list[list[int]]:
    """A random ranking of k responses with random ties."""
    order = list(range(k))
    rng.shuffle(order)
    tiers: list[list[int]] = []
    for index in order:
        if tiers and rng.random() < 0.3:
            tiers[-1].append(index)
        else:
            tiers.append([index])
    return tiers


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_preference_mask_is_the_record_contracts_ordered_pairs(seed):
    """The vectorised mask == the loop over data.ordered_pairs, with ties and padded rankings of mixed K."""
    rng = random.Random(seed)
    rankings = [random_tiers(rng, rng.randint(2, 9)) for _ in range(20)]
    width = max(sum(len(t) for t in r) for r in rankings)
    ranks = torch.zeros(len(rankings), width, dtype=torch.long)
    mask = torch.zeros(len(rankings), width, dtype=torch.bool)
    expected = torch.zeros(len(rankings), width, width, dtype=torch.bool)
    for n, tiers in enumerate(rankings):
        k = sum(len(t) for t in tiers)
        ranks[n, :k] = torch.tensor(tiers_to_ranks(tiers, k))
        ranks[n, k:] = rng.randint(0, 3)  # whatever sits under the padding must not matter
        mask[n, :k] = True
        for winner, loser, _ in ordered_pairs(tiers):
            expected[n, winner, loser] = True
    assert torch.equal(preference_mask(ranks, mask), expected)


def test_tier_issues_lists_every_problem_in_reading_order():
    assert tier_issues([[2], [0, 3], [1]], range(4)) == []
    issues = tier_issues([[0, 0], [5, True, 1.0]], range(3))
    assert [(i.kind, i.item, i.tier) for i in issues] == [
        ("repeated", 0, 0), ("unknown", 5, 1), ("unknown", True, 1), ("unknown", 1.0, 1),
        ("missing", 1, None), ("missing", 2, None),
    ]
    assert [i.kind for i in tier_issues([[{"a": 1}], [17]], [17])] == ["unknown"]  # unhashable: unknown
