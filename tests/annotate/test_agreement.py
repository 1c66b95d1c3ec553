"""Known-answer tests for annotate.agreement (hand-computed; the working is in the comments)."""

from fractions import Fraction

import pytest

from annotate import agreement as ag


def test_ordered_pairs_counts_and_margins():
    # A full ranking of K items has C(K, 2) strict pairs: K=4 → 6, K=9 → 36.
    assert len(ag.ordered_pairs([[i] for i in range(4)])) == 6
    assert len(ag.ordered_pairs([[i] for i in range(9)])) == 36
    # 2 > {0, 3} > 1: pairs (2,0,1) (2,3,1) (2,1,2) (0,1,1) (3,1,1); the tie 0 = 3 is left out (6 − 1 = 5).
    assert ag.ordered_pairs([[2], [0, 3], [1]]) == [(2, 0, 1), (2, 3, 1), (2, 1, 2), (0, 1, 1), (3, 1, 1)]
    assert ag.ordered_pairs([[0, 1, 2, 3]]) == []


def test_tier_positions_rejects_repeats_and_empty_tiers():
    assert ag.tier_positions([[5], [7, 6]]) == {5: 0, 7: 1, 6: 1}
    with pytest.raises(ValueError, match="more than one place"):
        ag.tier_positions([[1], [1]])
    with pytest.raises(ValueError, match="empty"):
        ag.tier_positions([[1], []])


def test_compare_rankings_known_answer():
    # a: 0 > 1 > 2 > 3 ; b: 1 > 0 > 2 = 3.
    # {0,1}: disagree. {0,2} {0,3} {1,2} {1,3}: agree. {2,3}: a strict, b tie → one_tied.
    counts = ag.compare_rankings([[0], [1], [2], [3]], [[1], [0], [2, 3]])
    assert (counts.agree, counts.disagree, counts.one_tied, counts.both_tied) == (4, 1, 1, 0)
    assert counts.rate == pytest.approx(4 / 5)
    assert counts.rate_with_ties == pytest.approx(4 / 6)


def test_compare_rankings_only_shared_items_and_both_tied():
    # Item 9 is only in a. Shared items 0, 1, 2: {0,1} tied in both; {0,2} and {1,2} agree.
    counts = ag.compare_rankings([[0, 1], [9], [2]], [[1, 0], [2]])
    assert (counts.agree, counts.disagree, counts.one_tied, counts.both_tied) == (2, 0, 0, 1)
    assert counts.rate == 1.0
    assert counts.rate_with_ties == 1.0
    assert ag.compare_rankings([[0, 1]], [[1, 0]]).rate is None  # no strictly ordered pair


def test_kendall_tau_b_hand_computed_with_ties():
    # x = [1, 2, 2, 3], y = [1, 3, 2, 2]; pairs (i, j):
    # (0,1) C, (0,2) C, (0,3) C, (1,2) tied in x, (1,3) D, (2,3) tied in y → n_c = 3, n_d = 1.
    # n_0 = 6, n_1 = 1 (one tie of two in x), n_2 = 1 → tau_b = (3 − 1) / sqrt(5 · 5) = 0.4.
    assert ag.kendall_tau_b([1, 2, 2, 3], [1, 3, 2, 2]) == pytest.approx(0.4)


def test_kendall_tau_b_scipy_documentation_example():
    # scipy.stats.kendalltau's docstring: x1 = [12, 2, 1, 12, 2], x2 = [1, 4, 7, 1, 0] → tau = −0.47140452079103173.
    # By hand: n_c = 2, n_d = 6 (two pairs tied in x: (0,3) and (1,4); one tied in y: (0,3)),
    # tau_b = (2 − 6) / sqrt((10 − 2)(10 − 1)) = −4 / sqrt(72) = −0.4714045…
    assert ag.kendall_tau_b([12, 2, 1, 12, 2], [1, 4, 7, 1, 0]) == pytest.approx(-0.47140452079103173)


def test_kendall_tau_b_extremes_and_undefined():
    assert ag.kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert ag.kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert ag.kendall_tau_b([1, 1, 1], [1, 2, 3]) is None  # x constant
    assert ag.kendall_tau_b([1], [1]) is None
    with pytest.raises(ValueError):
        ag.kendall_tau_b([1, 2], [1])


def test_ranking_tau_b_uses_tier_positions():
    # Same as the hand-computed case: positions a = [0, 1, 1, 2], b = [0, 2, 1, 1] for items 0..3.
    assert ag.ranking_tau_b([[0], [1, 2], [3]], [[0], [2, 3], [1]]) == pytest.approx(0.4)
    assert ag.ranking_tau_b([[0], [1], [2]], [[2], [1], [0]]) == pytest.approx(-1.0)


def test_borda_scores_and_consensus_hand_computed():
    # r1 = r3: a > b > c → a 1, b ½, c 0.   r2: b > a = c → b 1, a and c (0 + ½·1)/2 = ¼.
    # Means: a (1 + ¼ + 1)/3 = ¾, b (½ + 1 + ½)/3 = ⅔, c (0 + ¼ + 0)/3 = 1/12.
    rankings = [[["a"], ["b"], ["c"]], [["b"], ["a", "c"]], [["a"], ["b"], ["c"]]]
    scores = ag.borda_scores(rankings)
    assert scores == {"a": Fraction(3, 4), "b": Fraction(2, 3), "c": Fraction(1, 12)}
    assert ag.consensus_ranking(rankings) == [["a"], ["b"], ["c"]]


def test_consensus_ties_and_partial_rankings():
    assert ag.consensus_ranking([[[1], [2]], [[2], [1]]]) == [[1, 2]]  # opposite views tie exactly
    assert ag.consensus_ranking([[[3], [1, 2]]]) == [[3], [1, 2]]  # one ranking is its own consensus
    # Partial: item 4 ranked only once, at the top of a 2-item ranking (score 1); items 1, 2: see below.
    # r1: 1 > 2 → 1: 1, 2: 0.   r2: 4 > 1 → 4: 1, 1: 0.   Means: 4 → 1, 1 → ½, 2 → 0.
    assert ag.consensus_ranking([[[1], [2]], [[4], [1]]]) == [[4], [1], [2]]


def test_consensus_agreement_leave_one_out():
    # A and B: 0 > 1 > 2; C: 2 > 1 > 0.
    # For A the others (B, C) are exactly opposite → consensus is a three-way tie → no strict pair to agree on.
    # For C the others (A, B) say 0 > 1 > 2 → C disagrees on all 3 pairs.
    by_prompt = {"p": {"A": [[0], [1], [2]], "B": [[0], [1], [2]], "C": [[2], [1], [0]]}}
    result = ag.consensus_agreement(by_prompt)
    assert result["A"]["agreement"] is None and result["A"]["one_tied"] == 3
    assert result["C"]["agreement"] == 0.0 and result["C"]["disagree"] == 3
    assert result["C"]["tau_b"] == pytest.approx(-1.0)
    # Without leave-one-out, A's own ranking pulls the consensus towards A: (A, B, C) → 0 > 1 > 2.
    assert ag.consensus_agreement(by_prompt, leave_one_out=False)["A"]["agreement"] == 1.0
    # A prompt with a single ranking gives no leave-one-out comparison.
    assert ag.consensus_agreement({"q": {"A": [[0], [1]]}}) == {}


def test_annotator_pair_stats_pool_over_prompts():
    # p1: A 0>1>2>3, B 1>0>2=3 → agree 4, disagree 1, one_tied 1, tau_b = ?
    #   positions A [0,1,2,3], B [1,0,2,2]: pairs (0,1) D, (0,2) C, (0,3) C, (1,2) C, (1,3) C, (2,3) tied in B
    #   → (4 − 1) / sqrt(6 · 5) = 3 / sqrt(30).
    # p2: A 0>1, B 0>1 → agree 1, tau 1.   p3: only A → no pair.
    by_prompt = {
        "p1": {"A": [[0], [1], [2], [3]], "B": [[1], [0], [2, 3]]},
        "p2": {"A": [[0], [1]], "B": [[0], [1]]},
        "p3": {"A": [[0], [1]]},
    }
    [stats] = ag.annotator_pair_stats(by_prompt)
    assert (stats.a, stats.b, stats.prompts) == ("A", "B", 2)
    assert (stats.counts.agree, stats.counts.disagree, stats.counts.one_tied) == (5, 1, 1)
    assert stats.counts.rate == pytest.approx(5 / 6)
    assert stats.tau_b == pytest.approx((3 / 30**0.5 + 1) / 2)


def test_position_bias_hand_computed():
    # obs1: 10 > 20 > 30 shown 10, 20, 30: first shown wins (credit 1); the earlier one wins all 3 pairs.
    # obs2: 20 = 30 > 10 shown 10, 20, 30: first shown loses (credit 0); pairs (10,20) and (10,30) won by the
    #       later one, (20,30) tied. first_wins = (1 + 0)/2, expected (⅓ + ⅓)/2, earlier_preferred 3/5.
    # Borda by position: 1st: obs1 10 → 1, obs2 10 → 0 → ½; 2nd: 20 → ½ and ¾ → ⅝; 3rd: 30 → 0 and ¾ → ⅜.
    obs = [([[10], [20], [30]], [10, 20, 30]), ([[20, 30], [10]], [10, 20, 30])]
    result = ag.position_bias(obs)
    assert result["rankings"] == 2
    assert result["first_wins"] == pytest.approx(0.5)
    assert result["first_wins_expected"] == pytest.approx(1 / 3)
    assert result["earlier_preferred"] == pytest.approx(0.6) and result["pairs"] == 5
    assert [p["mean_score"] for p in result["by_position"]] == pytest.approx([0.5, 0.625, 0.375])
    # A shared top tier shares the win: 1 = 2 > 3 shown 1 first → credit ½.
    assert ag.position_bias([([[1, 2], [3]], [1, 2, 3])])["first_wins"] == pytest.approx(0.5)
    assert ag.position_bias([])["first_wins"] is None


def test_length_bias_hand_computed():
    # obs1: a > b > c with lengths 10, 5, 1 → the longer wins 3 of 3; tau_b(length, preference) = +1.
    # obs2: c > a = b with lengths 3, 10, 10 → the shorter wins 2 of 2; tau_b: x = [10, 10, 3], y = [−1, −1, 0]
    #       (a,b) tied in both, (a,c) and (b,c) discordant → −2 / sqrt(2 · 2) = −1.
    obs = [
        ([["a"], ["b"], ["c"]], {"a": 10, "b": 5, "c": 1}),
        ([["c"], ["a", "b"]], {"a": 10, "b": 10, "c": 3}),
    ]
    result = ag.length_bias(obs)
    assert result["pairs"] == 5
    assert result["longer_preferred"] == pytest.approx(3 / 5)
    assert result["mean_tau_b"] == pytest.approx(0.0)
    # Equal lengths carry no signal.
    assert ag.length_bias([([[1], [2]], {1: 4, 2: 4})])["longer_preferred"] is None
