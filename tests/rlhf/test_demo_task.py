"""The demo task: generators, the oracle (known answers, hack resistance), simulated annotators."""

from __future__ import annotations

import statistics

import pytest

from training.rlhf.demo_task import (
    DEMO_TASK,
    LEXICON,
    SimulatedAnnotator,
    demo_corpus,
    demo_prompts,
    expected_agreement,
    noise_for_agreement,
    oracle_breakdown,
    oracle_score,
    pairwise_agreement,
    prompt_topic,
    sample_demo_responses,
)

CAFE = "Write a short review of the harbour cafe:"
BAKERY = "How was the village bakery?"


# --- generators ---------------------------------------------------------------------------------------------


def test_demo_task_name():
    assert DEMO_TASK == "demo"


def test_prompts_are_deterministic_and_seeded():
    assert demo_prompts(n=50, seed=3) == demo_prompts(n=50, seed=3)
    assert demo_prompts(n=50, seed=3) != demo_prompts(n=50, seed=4)
    assert demo_prompts(n=0) == []


def test_prompt_pool_distinct_then_repeats_and_splits_are_disjoint():
    everything = demo_prompts(n=120, seed=0)
    assert len(set(everything)) == 120
    assert len(demo_prompts(n=300, seed=0)) == 300
    train = set(demo_prompts(n=96, seed=1, split="train"))
    test = set(demo_prompts(n=24, seed=1, split="test"))
    assert len(train) == 96 and len(test) == 24
    assert not train & test
    assert train | test == set(everything)
    # every place appears in the held-out split
    assert {prompt_topic(p) for p in test} == {prompt_topic(p) for p in everything}
    with pytest.raises(ValueError, match="split"):
        demo_prompts(n=3, split="validation")
    with pytest.raises(ValueError, match="n must be"):
        demo_prompts(n=-1)


def test_corpus_is_deterministic_and_follows_the_text_format():
    corpus = demo_corpus(n=400, seed=0)
    assert corpus == demo_corpus(n=400, seed=0)
    assert corpus != demo_corpus(n=400, seed=1)
    prompts = set(demo_prompts(n=120))
    for text in corpus:
        prompt = next(p for p in prompts if text.startswith(p))
        response = text[len(prompt) :]
        assert response.startswith(" ") and not response.startswith("  ")
        assert response.strip()


def test_corpus_uses_only_lexicon_words_and_has_mixed_quality():
    prompts = demo_prompts(n=120)
    parts = []
    for text in demo_corpus(n=2000, seed=5):
        prompt = next(p for p in prompts if text.startswith(p))
        parts.append(oracle_breakdown(prompt, text[len(prompt) :]))
    assert all(p["unknown"] == 0 for p in parts)

    def share(condition) -> float:
        return sum(1 for p in parts if condition(p)) / len(parts)

    # Every kind of flaw is present, but most responses are well formed: the RM has signal, PPO has room.
    assert 0.10 < share(lambda p: p["ending"] < 0) < 0.30
    assert 0.05 < share(lambda p: p["repetition"] < 0) < 0.25
    assert 0.10 < share(lambda p: p["length"] < 0) < 0.40
    assert 0.02 < share(lambda p: p["relevance"] < 0) < 0.20
    assert 0.20 < share(lambda p: p["sentiment"] < 0) < 0.50
    assert 0.40 < share(lambda p: p["sentiment"] > 0) < 0.75
    totals = [p["total"] for p in parts]
    assert 1.0 < statistics.pstdev(totals) < 2.5
    assert max(totals) <= 3.0
    assert share(lambda p: p["total"] >= 2.5) < 0.25  # the best responses are not the norm


def test_sample_demo_responses():
    first = sample_demo_responses(CAFE, k=9, seed=1)
    assert len(first) == 9 and first == sample_demo_responses(CAFE, k=9, seed=1)
    assert first != sample_demo_responses(CAFE, k=9, seed=2)
    assert len(set(first)) >= 7


# --- oracle: known answers ---------------------------------------------------------------------------------


def test_prompt_topic():
    assert prompt_topic(CAFE) == "harbour cafe"
    assert prompt_topic("What did you think of the NIGHT TRAIN?") == "night train"
    assert prompt_topic("Tell me a joke:") is None
    assert prompt_topic("Compare the jazz club and the bike shop:") is None


def test_oracle_docstring_example():
    parts = oracle_breakdown(CAFE, " The coffee was warm and the staff were friendly.")
    assert parts == {
        "sentiment": 1.5, "repetition": 0.0, "ending": 0.5, "length": 0.0, "relevance": 0.5, "lexicon": 0.0,
        "total": 2.5, "words": 9, "positive": 2, "negative": 0, "repeats": 0, "unknown": 0,
    }  # fmt: skip
    assert oracle_score(CAFE, " The coffee was warm and the staff were friendly.") == 2.5


@pytest.mark.parametrize(
    ("prompt", "response", "expected"),
    [
        # three distinct positives (1.75) + ending + relevance; "the" ×3 is within the function-word allowance
        (CAFE, " The cakes were fresh, the coffee was warm and the staff were friendly.",
         {"sentiment": 1.75, "repetition": 0.0, "ending": 0.5, "length": 0.0, "relevance": 0.5, "total": 2.75}),
        # repetition: 3 extra "fresh" + 2 extra "fresh fresh" bigrams = 5 × −0.5; 4 words → −0.5; no ending
        (CAFE, " Fresh fresh fresh fresh",
         {"sentiment": 1.0, "repetition": -2.5, "ending": -0.5, "length": -0.5, "relevance": 0.0, "total": -2.5}),
        # no end punctuation costs the ending bonus both ways (±0.5)
        (CAFE, " The coffee was warm and the staff were friendly",
         {"sentiment": 1.5, "ending": -0.5, "total": 1.5}),
        # a doubled end mark is not a proper ending
        (CAFE, " The coffee was warm and the staff were friendly!!", {"ending": -0.5, "total": 1.5}),
        # a full stop after a dangling "the" is not a proper ending
        (CAFE, " The coffee was warm and the.",
         {"sentiment": 1.0, "ending": -0.5, "length": 0.0, "relevance": 0.5, "total": 1.0}),
        # negation: a negated positive is negative; 5 words → −0.25; "staff" is generic → relevance 0
        (CAFE, " The staff were not friendly.",
         {"sentiment": -1.0, "ending": 0.5, "length": -0.25, "relevance": 0.0, "total": -0.75}),
        # a negated negative is neutral
        (CAFE, " The staff were not rude.", {"sentiment": 0.0, "total": 0.25}),
        # two distinct negatives: −2·(1 − 0.25)
        (CAFE, " The coffee was cold and the waiters were rude.",
         {"sentiment": -1.5, "relevance": 0.5, "total": -0.5}),
        # nouns of another place only (the library's books and desks) → −0.5
        (CAFE, " The books were lovely and the desks were clean.", {"relevance": -0.5, "total": 1.5}),
        # mixed places → 0
        (CAFE, " The coffee was lovely and the books were clean.", {"relevance": 0.0, "total": 2.0}),
        # 2 of 7 words are not demo words → −2/7
        (CAFE, " The coffee was warm and xqzt blorf.",
         {"lexicon": -0.285714, "sentiment": 1.0, "total": 1.714286}),
        # 24 words → −0.1 × 4
        (CAFE, " The coffee was warm, the cakes were fresh, the terrace was bright and cosy, "
               "while our waiters seemed cheerful and we will come back.",
         {"length": -0.4, "repetition": 0.0}),
        # empty: −0.5 (no ending) − 1.5 (6 words short)
        (CAFE, "", {"sentiment": 0.0, "ending": -0.5, "length": -1.5, "lexicon": 0.0, "total": -2.0}),
        # not a demo prompt: relevance is 0 whatever the nouns
        ("Tell me about your holiday:", " The coffee was warm and the staff were friendly.",
         {"relevance": 0.0, "total": 2.0}),
    ],
)
def test_oracle_known_answers(prompt, response, expected):
    parts = oracle_breakdown(prompt, response)
    for name, value in expected.items():
        assert parts[name] == pytest.approx(value, abs=1e-9), name
    assert parts["total"] == pytest.approx(
        sum(parts[k] for k in ("sentiment", "repetition", "ending", "length", "relevance", "lexicon")), abs=1e-6
    )


def test_repetition_does_not_pay():
    varied = oracle_score(BAKERY, " The bread was fresh and the croissants were crisp.")
    assert oracle_score(CAFE, " fresh fresh fresh fresh") < varied
    assert oracle_score(CAFE, " Fresh fresh fresh fresh fresh fresh fresh fresh.") < varied
    # "so fresh and fresh" scores below "so fresh", and more repeats score lower still
    once = oracle_score(BAKERY, " The bread was so fresh.")
    twice = oracle_score(BAKERY, " The bread was so fresh and fresh.")
    thrice = oracle_score(BAKERY, " The bread was so fresh and fresh and fresh.")
    assert (once, twice, thrice) == (1.75, 1.5, 0.0)
    # a repeated clause costs too
    clause = " The bread was fresh and the croissants were crisp."
    assert oracle_score(BAKERY, clause + clause) < oracle_score(BAKERY, clause)
    # a list of distinct positive words is beaten by a real three-clause review
    word_list = oracle_score(CAFE, " Fresh warm lovely clean bright cosy tasty great superb wonderful excellent.")
    review = oracle_score(CAFE, " The cakes were fresh, the coffee was warm and the staff were friendly.")
    assert word_list < review


def test_more_distinct_positive_words_pay_less_each():
    values = [oracle_breakdown(CAFE, " " + " and ".join(words) + ".")["sentiment"]
              for words in (["warm"], ["warm", "fresh"], ["warm", "fresh", "lovely"], ["warm", "fresh", "lovely", "cosy"])]
    assert values == [1.0, 1.5, 1.75, 1.875]


def test_oracle_is_deterministic_and_scaled():
    responses = sample_demo_responses(CAFE, k=200, seed=3)
    scores = [oracle_score(CAFE, r) for r in responses]
    assert scores == [oracle_score(CAFE, r) for r in responses]
    assert all(-8.5 <= s <= 3.0 for s in scores)
    assert statistics.fmean(-3 <= s <= 3 for s in scores) > 0.95


def test_lexicon_contains_grammar_words():
    assert {"coffee", "friendly", "rude", "the", "not", "recommend", "pizzeria"} <= LEXICON
    assert "xqzt" not in LEXICON


# --- simulated annotators -----------------------------------------------------------------------------------


def _is_partition(ranking, k):
    flat = [i for tier in ranking for i in tier]
    return sorted(flat) == list(range(k)) and all(tier for tier in ranking)


def test_pairwise_agreement_known_answers():
    assert pairwise_agreement([[0], [1], [2]], [[0], [1], [2]]) == 1.0
    assert pairwise_agreement([[0], [1], [2]], [[2], [1], [0]]) == 0.0
    assert pairwise_agreement([[0], [1, 2]], [[1], [0], [2]]) == 0.5
    assert pairwise_agreement([[0, 1]], [[0], [1]]) is None
    assert pairwise_agreement([[0], [1], [2], [3]], [[3], [0], [1]]) == pytest.approx(1 / 3)  # over {0, 1, 3}
    with pytest.raises(ValueError, match="rank_b: index 1"):
        pairwise_agreement([[0], [1]], [[1], [1]])


def test_noise_for_agreement_is_monotone_and_validated():
    levels = [0.6, 0.73, 0.8, 0.9, 0.95]
    noises = [noise_for_agreement(a) for a in levels]
    assert noises == sorted(noises, reverse=True)
    for level, noise in zip(levels, noises):
        assert expected_agreement(noise) == pytest.approx(level, abs=1e-6)
    assert noise_for_agreement(1.0) == 0.0
    for bad in (0.5, 0.3, 1.01):
        with pytest.raises(ValueError, match="agreement"):
            noise_for_agreement(bad)


def test_expected_agreement_formula():
    # one pair with gap d = noise: p = σ(1), agreement = p² + (1 − p)²
    p = 1 / (1 + 2.718281828459045**-1)
    assert expected_agreement(0.5, [0.5]) == pytest.approx(p**2 + (1 - p) ** 2)
    assert expected_agreement(0.0, [1.0]) == 1.0
    with pytest.raises(ValueError):
        expected_agreement(1.0, [0.0])


@pytest.mark.parametrize("level", [0.73, 0.9])
def test_independent_annotators_agree_at_the_configured_level(level):
    a = SimulatedAnnotator(agreement=level, seed=1, name="a")
    b = SimulatedAnnotator(agreement=level, seed=2, name="b")
    agreed = ordered = 0
    truth_agreed = 0
    for i, prompt in enumerate(demo_prompts(n=400, seed=11)):
        k = 4 + i % 6
        responses = sample_demo_responses(prompt, k=k, seed=77)
        ra, rb = a.rank(prompt, responses), b.rank(prompt, responses)
        assert _is_partition(ra, k) and _is_partition(rb, k)
        scores = [oracle_score(prompt, r) for r in responses]
        truth = [[j for j in range(k) if scores[j] == s] for s in sorted(set(scores), reverse=True)]
        for x in range(k):
            for y in range(x + 1, k):
                if scores[x] != scores[y]:
                    ordered += 1
                    agreed += (_tier(ra, x) < _tier(ra, y)) == (_tier(rb, x) < _tier(rb, y))
                    truth_agreed += (_tier(ra, x) < _tier(ra, y)) == (_tier(truth, x) < _tier(truth, y))
    assert ordered > 4000
    assert agreed / ordered == pytest.approx(level, abs=0.04)
    # each annotator is more often right (vs the oracle) than two annotators agree: p > p² + (1 − p)²
    assert truth_agreed / ordered > agreed / ordered


def _tier(ranking, index):
    return next(t for t, tier in enumerate(ranking) if index in tier)


def test_pairwise_agreement_matches_pair_counting():
    a, b = SimulatedAnnotator(seed=3), SimulatedAnnotator(seed=4)
    prompt = demo_prompts(n=1, seed=2)[0]
    responses = sample_demo_responses(prompt, k=9, seed=5)
    ra, rb = a.rank(prompt, responses), b.rank(prompt, responses)
    pairs = [(x, y) for x in range(9) for y in range(x + 1, 9)
             if _tier(ra, x) != _tier(ra, y) and _tier(rb, x) != _tier(rb, y)]
    expected = sum((_tier(ra, x) < _tier(ra, y)) == (_tier(rb, x) < _tier(rb, y)) for x, y in pairs) / len(pairs)
    assert pairwise_agreement(ra, rb) == pytest.approx(expected)


def test_equal_scores_share_a_tier():
    annotator = SimulatedAnnotator(seed=0)
    # identical texts, and different texts with equal scores (" Lovely." and " Great!": 1 + 0.5 − 1.25)
    assert oracle_score(CAFE, " Lovely.") == oracle_score(CAFE, " Great!") == 0.25
    responses = [" Lovely.", " The coffee was warm and the staff were friendly.", " Great!", " Lovely.", " Awful"]
    for seed in range(20):
        ranking = SimulatedAnnotator(seed=seed).rank(CAFE, responses)
        assert _is_partition(ranking, 5)
        assert [0, 2, 3] in ranking
    assert annotator.rank(CAFE, [" Fine.", " Fine."]) == [[0, 1]]
    assert annotator.rank(CAFE, []) == []


def test_noiseless_annotator_sorts_by_oracle_and_rankings_are_reproducible():
    prompt = demo_prompts(n=1, seed=9)[0]
    responses = sample_demo_responses(prompt, k=9, seed=9)
    ranking = SimulatedAnnotator(agreement=1.0).rank(prompt, responses)
    tier_scores = [oracle_score(prompt, responses[tier[0]]) for tier in ranking]
    assert tier_scores == sorted(set(tier_scores), reverse=True)
    noisy = SimulatedAnnotator(seed=5, name="x")
    assert noisy.rank(prompt, responses) == noisy.rank(prompt, responses)
    assert SimulatedAnnotator(noise=0.0).noise == 0.0
    with pytest.raises(ValueError, match="noise"):
        SimulatedAnnotator(noise=-1.0)
    with pytest.raises(TypeError):
        SimulatedAnnotator(0.73)  # keyword-only


def test_noise_orders_better_responses_first_more_often():
    # a 2-point gap with noise 1.04 is ordered correctly with p = σ(2 / 1.04) ≈ 0.87
    good, bad = " The coffee was warm and the staff were friendly.", " The coffee was cold"
    gap = oracle_score(CAFE, good) - oracle_score(CAFE, bad)
    wins = sum(SimulatedAnnotator(seed=s).rank(CAFE, [bad, good])[0] == [1] for s in range(2000))
    p = 1 / (1 + 2.718281828459045 ** (-gap / noise_for_agreement(0.73)))
    assert wins / 2000 == pytest.approx(p, abs=0.03)


def test_ratings_and_flags():
    annotator = SimulatedAnnotator(seed=1)
    responses = [" The cakes were fresh, the coffee was warm and the staff were friendly.", " rude rude rude rude",
                 " The books were dull, the desks were dirty and the librarians were rude.", " The coffee was okay."]
    ratings = [annotator.rate(CAFE, responses) for _ in range(1)][0]
    assert all(isinstance(r, int) and 1 <= r <= 7 for r in ratings)
    many = [SimulatedAnnotator(seed=s).rate(CAFE, responses) for s in range(200)]
    means = [statistics.fmean(r[i] for r in many) for i in range(4)]
    assert means[0] > means[3] > means[1]
    assert SimulatedAnnotator(agreement=1.0).rate(CAFE, responses)[0] == 7
    flags = annotator.flags(CAFE, responses)
    assert flags[0] == [] and flags[3] == []
    assert "unhelpful" in flags[1] and "broken_text" in flags[1]
    assert "fails_instruction" in flags[2] and "unhelpful" in flags[2]
    record = annotator.annotate(CAFE, responses)
    assert record["source"] == "simulated" and record["annotator"] == "sim-1"
    assert _is_partition(record["ranking"], 4) and record["all_bad"] is False
    assert annotator.annotate(CAFE, [" rude rude rude rude", " Awful"])["all_bad"] is True
