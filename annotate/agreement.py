"""Agreement and quality statistics for rankings with ties. Pure functions: no Django, no database.

A ranking is a list of tiers, best first; each tier lists item keys (response ids, or indices) and a tier
of several items is a tie: ``[[2], [0, 3], [1]]`` says 2 > 0 = 3 > 1. The functions here compare such
rankings pair by pair, the unit the reward model learns from (InstructGPT, Ouyang et al. 2022, §3.5:
a K-wise ranking is C(K, 2) pairwise comparisons; the labelers there agreed with each other on
72.6 ± 1.5 % of comparisons, §5.1).

Contents
- `ordered_pairs` (from the record contract, training/rlhf/data.py): a ranking's strict preferences.
- `pair_relations` / `compare_rankings`: how two annotators' rankings of the same items agree pair by pair.
- `kendall_tau_b`, `ranking_tau_b`: Kendall's rank correlation with ties (Kendall 1945).
- `borda_scores`, `consensus_ranking`: Borda count with ties, normalised for partial rankings.
- `annotator_pair_stats`, `consensus_agreement`: the same, aggregated over prompts.
- `position_bias`, `length_bias`: does the response shown first, or the longer one, win more than chance?
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import combinations

from training.rlhf.data import ordered_pairs  # the record contract's pairs; annotate's callers import it here

Item = Hashable
Tiers = Sequence[Sequence[Item]]


# --- Basics ----------------------------------------------------------------------------------------------


def tier_positions(tiers: Tiers) -> dict[Item, int]:
    """Item → index of its tier (0 = best). Raises ValueError on an item listed twice or an empty tier."""
    positions: dict[Item, int] = {}
    for index, tier in enumerate(tiers):
        if len(tier) == 0:
            raise ValueError(f"tier {index} is empty")
        for item in tier:
            if item in positions:
                raise ValueError(f"item {item!r} appears in more than one place")
            positions[item] = index
    return positions


def preference(positions: Mapping[Item, int], a: Item, b: Item) -> int:
    """+1 when a is ranked above b, −1 when below, 0 when they are tied."""
    pa, pb = positions[a], positions[b]
    return (pa < pb) - (pa > pb)


# --- Two annotators on one prompt ----------------------------------------------------------------------


@dataclass
class PairCounts:
    """Pair-by-pair comparison of two rankings over the items both ranked.

    agree: both give the same strict preference; disagree: opposite strict preferences;
    one_tied: one ties the pair, the other does not; both_tied: both tie it.
    """

    agree: int = 0
    disagree: int = 0
    one_tied: int = 0
    both_tied: int = 0

    def __add__(self, other: PairCounts) -> PairCounts:
        return PairCounts(
            self.agree + other.agree,
            self.disagree + other.disagree,
            self.one_tied + other.one_tied,
            self.both_tied + other.both_tied,
        )

    @property
    def strict(self) -> int:
        """Pairs both rankings order strictly (the denominator of `rate`)."""
        return self.agree + self.disagree

    @property
    def total(self) -> int:
        return self.agree + self.disagree + self.one_tied + self.both_tied

    @property
    def rate(self) -> float | None:
        """Share of strictly ordered pairs ordered the same way: agree / (agree + disagree).

        The InstructGPT notion of agreement (pairwise comparisons); pairs a ranking ties carry no
        preference and are left out. None when no pair is strictly ordered by both.
        """
        return self.agree / self.strict if self.strict else None

    @property
    def rate_with_ties(self) -> float | None:
        """Share of all shared pairs given the same relation (>, < or =): (agree + both_tied) / total."""
        return (self.agree + self.both_tied) / self.total if self.total else None

    def as_dict(self) -> dict:
        return {
            "agree": self.agree,
            "disagree": self.disagree,
            "one_tied": self.one_tied,
            "both_tied": self.both_tied,
            "agreement": self.rate,
            "agreement_with_ties": self.rate_with_ties,
        }


def compare_rankings(tiers_a: Tiers, tiers_b: Tiers) -> PairCounts:
    """Compare two rankings over the unordered pairs of items that both of them rank.

    Example: a = [[0], [1], [2]] and b = [[1], [0, 2]] share the pairs {0,1} (a: 0>1, b: 1>0, disagree),
    {0,2} (a: 0>2, b: tie, one_tied) and {1,2} (a: 1>2, b: 1>2, agree).
    """
    pos_a, pos_b = tier_positions(tiers_a), tier_positions(tiers_b)
    shared = sorted(set(pos_a) & set(pos_b), key=repr)
    counts = PairCounts()
    for x, y in combinations(shared, 2):
        ra, rb = preference(pos_a, x, y), preference(pos_b, x, y)
        if ra and rb:
            if ra == rb:
                counts.agree += 1
            else:
                counts.disagree += 1
        elif ra or rb:
            counts.one_tied += 1
        else:
            counts.both_tied += 1
    return counts


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b of two paired score lists, ties handled (Kendall 1945, "The treatment of ties in
    ranking problems", Biometrika 33(3); the `tau-b` of scipy.stats.kendalltau).

        tau_b = (n_c − n_d) / sqrt((n_0 − n_1)(n_0 − n_2))

    n_0 = n(n−1)/2 pairs; n_1 = Σ t_i(t_i−1)/2 over groups of ties in x, n_2 the same in y; n_c and n_d the
    pairs ordered the same / opposite way in x and y (pairs tied in either count in neither).
    O(n²), fine for K ≤ 9. Returns None when fewer than two items or when x or y is constant.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length ({len(x)} vs {len(y)})")
    n = len(x)
    concordant = discordant = 0
    ties_x = ties_y = 0
    for i, j in combinations(range(n), 2):
        dx = (x[i] > x[j]) - (x[i] < x[j])
        dy = (y[i] > y[j]) - (y[i] < y[j])
        if dx == 0:
            ties_x += 1
        if dy == 0:
            ties_y += 1
        if dx and dy:
            if dx == dy:
                concordant += 1
            else:
                discordant += 1
    n0 = n * (n - 1) // 2
    # ties_x counted pair by pair equals Σ t_i(t_i − 1)/2 over the tie groups.
    denominator = (n0 - ties_x) * (n0 - ties_y)
    if n < 2 or denominator == 0:
        return None
    return (concordant - discordant) / math.sqrt(denominator)


def ranking_tau_b(tiers_a: Tiers, tiers_b: Tiers) -> float | None:
    """Kendall's tau-b between two rankings over the items both rank (tier index as the score)."""
    pos_a, pos_b = tier_positions(tiers_a), tier_positions(tiers_b)
    shared = sorted(set(pos_a) & set(pos_b), key=repr)
    return kendall_tau_b([pos_a[i] for i in shared], [pos_b[i] for i in shared])


# --- Consensus (Borda count with ties) ----------------------------------------------------------------


def borda_scores(rankings: Iterable[Tiers]) -> dict[Item, Fraction]:
    """Mean normalised Borda score of each item over the rankings that contain it, exact (Fractions).

    In one ranking of n items, item i scores (number of items strictly below i + ½ · number of other
    items tied with i) / (n − 1): the classic Borda count (de Borda 1781) with the averaged-rank rule
    for ties (each tied item gets the mean of the points of the places the tie spans; see Emerson 2013,
    "The original Borda count and partial voting", Social Choice and Welfare 40), divided by n − 1 so that
    rankings of different sizes weigh the same. 1 = above everything, 0 = below everything, ½ = middle.
    A ranking of a single item carries no information and is ignored.
    """
    totals: dict[Item, Fraction] = defaultdict(Fraction)
    counts: dict[Item, int] = defaultdict(int)
    for tiers in rankings:
        tier_positions(tiers)  # validates
        n = sum(len(t) for t in tiers)
        if n < 2:
            continue
        below = n
        for tier in tiers:
            below -= len(tier)
            score = Fraction(2 * below + (len(tier) - 1), 2 * (n - 1))
            for item in tier:
                totals[item] += score
                counts[item] += 1
    return {item: totals[item] / counts[item] for item in totals}


def tiers_from_scores(scores: Mapping[Item, float | Fraction]) -> list[list[Item]]:
    """Group items into tiers by score, highest first; equal scores form a tie. Items sorted within tiers."""
    by_score: dict = defaultdict(list)
    for item, score in scores.items():
        by_score[score].append(item)
    return [sorted(by_score[s], key=_sort_key) for s in sorted(by_score, reverse=True)]


def consensus_ranking(rankings: Sequence[Tiers]) -> list[list[Item]]:
    """Consensus of several rankings of the same prompt: Borda scores (`borda_scores`), then tiers.

    Items with exactly equal mean scores are tied in the consensus (two annotators who rank a > b and
    b > a give a tie). One ranking is its own consensus.
    """
    return tiers_from_scores(borda_scores(rankings))


def _sort_key(item: Item):
    return (0, item) if isinstance(item, int | float) else (1, repr(item))


# --- Aggregates over prompts --------------------------------------------------------------------------


@dataclass
class AnnotatorPairStats:
    a: Hashable
    b: Hashable
    prompts: int
    counts: PairCounts
    tau_b: float | None  # mean over the shared prompts where tau-b is defined
    tau_b_n: int = 0  # how many per-prompt values the mean is over
    tau_b_sd: float | None = None  # their sample standard deviation (for an interval of the mean)

    def as_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "prompts": self.prompts, **self.counts.as_dict(), "tau_b": self.tau_b,
                "tau_b_n": self.tau_b_n, "tau_b_sd": self.tau_b_sd}


def annotator_pair_stats(by_prompt: Mapping[Hashable, Mapping[Hashable, Tiers]]) -> list[AnnotatorPairStats]:
    """Agreement of every pair of annotators on the prompts both ranked.

    by_prompt: prompt → {annotator → tiers}. For each annotator pair: pair counts summed over their
    shared prompts (so `rate` pools comparisons, as InstructGPT reports it) and the mean of the
    per-prompt tau-b values.
    """
    counts: dict[tuple, PairCounts] = defaultdict(PairCounts)
    taus: dict[tuple, list[float]] = defaultdict(list)
    prompts: dict[tuple, int] = defaultdict(int)
    for rankings in by_prompt.values():
        annotators = sorted(rankings, key=_sort_key)
        for a, b in combinations(annotators, 2):
            counts[(a, b)] += compare_rankings(rankings[a], rankings[b])
            prompts[(a, b)] += 1
            tau = ranking_tau_b(rankings[a], rankings[b])
            if tau is not None:
                taus[(a, b)].append(tau)
    return [
        AnnotatorPairStats(a, b, prompts[(a, b)], counts[(a, b)], _mean(taus[(a, b)]), len(taus[(a, b)]),
                           sample_sd(taus[(a, b)]))
        for (a, b) in sorted(counts, key=lambda k: (_sort_key(k[0]), _sort_key(k[1])))
    ]


def consensus_agreement(
    by_prompt: Mapping[Hashable, Mapping[Hashable, Tiers]], *, leave_one_out: bool = True
) -> dict[Hashable, dict]:
    """Each annotator's agreement with the consensus ranking of the prompts they ranked.

    With leave_one_out (the default) an annotator is compared with the consensus of the *other*
    annotators of each prompt, so their own ranking does not pull the consensus towards them (with two
    annotators this is plain pairwise agreement); prompts with a single ranking are then skipped.
    Returns annotator → {"prompts", pair counts…, "tau_b"}.
    """
    counts: dict[Hashable, PairCounts] = defaultdict(PairCounts)
    taus: dict[Hashable, list[float]] = defaultdict(list)
    prompts: dict[Hashable, int] = defaultdict(int)
    for rankings in by_prompt.values():
        for annotator, tiers in rankings.items():
            others = [t for a, t in rankings.items() if a != annotator] if leave_one_out else list(rankings.values())
            if not others:
                continue
            consensus = consensus_ranking(others)
            counts[annotator] += compare_rankings(tiers, consensus)
            prompts[annotator] += 1
            tau = ranking_tau_b(tiers, consensus)
            if tau is not None:
                taus[annotator].append(tau)
    return {
        a: {"prompts": prompts[a], **counts[a].as_dict(), "tau_b": _mean(taus[a]), "tau_b_n": len(taus[a]),
            "tau_b_sd": sample_sd(taus[a])}
        for a in sorted(counts, key=_sort_key)
    }


# --- Biases ---------------------------------------------------------------------------------------------


def position_bias(observations: Iterable[tuple[Tiers, Sequence[Item]]]) -> dict:
    """Does the position a response was shown in predict how it was ranked?

    observations: (tiers, display order) per ranking; display-order items missing from the tiers are
    ignored, rankings shown with fewer than two ranked items skipped.
    - first_wins: share of each ranking's win credit that went to the response shown first (the top tier
      shares one win: credit 1/|top tier| to each of its members). Under random display orders the
      expectation is 1/K per ranking; `first_wins_expected` is that mean.
    - earlier_preferred: among strictly ordered pairs, how often the one shown earlier was preferred
      (0.5 = no bias).
    - by_position: mean normalised Borda score (see `borda_scores`) of the response shown at each
      position, 0.5 = no bias.
    """
    first_credit = expected = 0.0
    rankings = 0
    earlier_wins = strict_pairs = 0
    position_scores: dict[int, list[Fraction]] = defaultdict(list)
    for tiers, display in observations:
        positions = tier_positions(tiers)
        shown = [item for item in display if item in positions]
        if len(shown) < 2:
            continue
        rankings += 1
        top = tiers[0]
        first_credit += 1 / len(top) if shown[0] in top else 0.0
        expected += 1 / len(shown)
        for i, j in combinations(range(len(shown)), 2):
            relation = preference(positions, shown[i], shown[j])
            if relation:
                strict_pairs += 1
                earlier_wins += relation > 0
        scores = borda_scores([[[item for item in tier if item in shown] for tier in tiers if set(tier) & set(shown)]])
        for index, item in enumerate(shown):
            position_scores[index].append(scores[item])
    return {
        "rankings": rankings,
        "first_wins": first_credit / rankings if rankings else None,
        "first_wins_expected": expected / rankings if rankings else None,
        "earlier_preferred": earlier_wins / strict_pairs if strict_pairs else None,
        "pairs": strict_pairs,
        "by_position": [
            {"position": index + 1, "rankings": len(values), "mean_score": float(sum(values) / len(values))}
            for index, values in sorted(position_scores.items())
        ],
    }


def length_bias(observations: Iterable[tuple[Tiers, Mapping[Item, float]]]) -> dict:
    """Is the longer response preferred more often than chance?

    observations: (tiers, item → length) per ranking (the caller chooses the unit, e.g. characters).
    - longer_preferred: among strictly ordered pairs of different lengths, the share where the longer one
      won (0.5 = no bias).
    - mean_tau_b: mean over rankings of Kendall's tau-b between length and preference (tier order
      reversed, so +1 = strictly longer is better, −1 = shorter is better, 0 = unrelated).
    """
    longer_wins = pairs = 0
    taus: list[float] = []
    rankings = 0
    for tiers, lengths in observations:
        positions = tier_positions(tiers)
        items = sorted(positions, key=_sort_key)
        if len(items) < 2:
            continue
        rankings += 1
        for winner, loser, _ in ordered_pairs(tiers):
            if lengths[winner] != lengths[loser]:
                pairs += 1
                longer_wins += lengths[winner] > lengths[loser]
        tau = kendall_tau_b([lengths[i] for i in items], [-positions[i] for i in items])
        if tau is not None:
            taus.append(tau)
    return {
        "rankings": rankings,
        "pairs": pairs,
        "longer_preferred": longer_wins / pairs if pairs else None,
        "mean_tau_b": _mean(taus),
        "tau_b_n": len(taus),
        "tau_b_sd": sample_sd(taus),
    }


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def sample_sd(values: Sequence[float]) -> float | None:
    """Sample standard deviation √(Σ(x − x̄)² / (n − 1)) (None under two values): with the mean and n it
    gives the mean's interval on the dashboard."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
