"""The demo task: a synthetic review-writing task whose quality is known exactly, so the RLHF loop is checkable.

Pure Python (no Django, no torch). It provides

- a **grammar** of short reviews of twelve places (a harbour cafe, a night train, a jazz club…) with
  positive, neutral and negative adjectives, sentiment verbs, negation, connectives and 1–3 clauses, plus a
  share of deliberately poor responses (too short, too long, no ending, repetitive, off-topic) so that a model
  pre-trained on it (`tiny_model.py`) samples responses of mixed quality;
- `demo_prompts` / `demo_corpus` / `sample_demo_responses`: deterministic generators for a seed;
- `oracle_score` / `oracle_breakdown`: the hidden "true" reward, designed to be hard to hack (see its
  docstring for the table of components);
- `SimulatedAnnotator`: ranks K responses by the oracle with Plackett–Luce (Gumbel) noise calibrated to a
  target inter-annotator pairwise agreement (`noise_for_agreement`), with ties exactly where oracle scores tie,
  and fills Likert ratings and flags;
- `pairwise_agreement`: the agreement statistic between two tiered rankings.

Text format (docs/architecture.md): the policy sees the prompt as-is and continues it; a response is the
continuation up to EOS and starts with a space: ``"Write a short review of the harbour cafe:"`` +
``" The coffee was warm and the staff were friendly."``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

DEMO_TASK = "demo"
"""The value stored in a prompt's ``metadata["task"]``; it enables oracle evaluation."""

# --- The grammar --------------------------------------------------------------------------------------------

# place name → (singular nouns, plural nouns) that belong to that place only (used for relevance).
TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "harbour cafe": (("cafe", "coffee", "tea", "terrace", "espresso"), ("cakes", "cups", "waiters", "scones")),
    "mountain hotel": (("hotel", "breakfast", "lobby", "pool", "balcony"), ("rooms", "beds", "pillows", "towels")),
    "city library": (("library", "archive", "catalogue", "wifi"), ("books", "shelves", "desks", "librarians")),
    "night train": (("train", "carriage", "conductor", "journey", "timetable"), ("seats", "cabins", "blankets")),
    "village bakery": (("bakery", "bread", "baker", "counter", "sourdough"), ("croissants", "pastries", "loaves")),
    "river museum": (("museum", "guide", "collection", "cafeteria"), ("exhibits", "paintings", "galleries", "sculptures")),
    "garden market": (("market", "fruit", "cheese", "honey"), ("vegetables", "flowers", "stalls", "traders")),
    "seaside hostel": (("hostel", "kitchen", "beach", "garden"), ("dorms", "showers", "lockers", "bunks")),
    "jazz club": (("club", "band", "singer", "stage", "piano"), ("drinks", "cocktails", "musicians", "songs")),
    "bike shop": (("shop", "mechanic", "workshop", "repair"), ("bikes", "tyres", "helmets", "brakes")),
    "island ferry": (("ferry", "deck", "crossing", "crew", "captain"), ("waves", "railings", "engines", "benches")),
    "corner pizzeria": (("pizzeria", "pizza", "dough", "oven", "salad"), ("toppings", "olives", "pizzas", "waitresses")),
}
# Nouns any review may use; they count neither as on-topic nor as off-topic.
GENERIC_SINGULAR = ("staff", "service", "place", "atmosphere", "location", "owner", "visit", "music", "food")
GENERIC_PLURAL = ("prices", "people", "portions", "hours")

POSITIVE_WORDS = (
    "friendly", "warm", "fresh", "lovely", "clean", "bright", "cosy", "delicious", "helpful", "charming",
    "generous", "comfortable", "spotless", "relaxing", "cheerful", "tasty", "pleasant", "peaceful", "welcoming",
    "wonderful", "excellent", "great", "superb", "beautiful", "spacious", "efficient", "smooth", "crisp",
    "loved", "enjoyed", "liked", "recommend",
)  # fmt: skip
NEGATIVE_WORDS = (
    "rude", "dirty", "noisy", "stale", "slow", "cramped", "bland", "dull", "overpriced", "awful", "terrible",
    "gloomy", "sticky", "smelly", "broken", "unfriendly", "grim", "soggy", "greasy", "shabby", "chaotic",
    "disappointing", "uncomfortable", "boring", "cold", "hated", "disliked", "regretted",
)  # fmt: skip
NEUTRAL_ADJECTIVES = (
    "small", "busy", "old", "plain", "ordinary", "average", "simple", "modern", "large", "new", "typical",
    "basic", "usual", "fine", "okay", "quiet",
)  # fmt: skip
POSITIVE_ADJECTIVES = POSITIVE_WORDS[:-4]
NEGATIVE_ADJECTIVES = NEGATIVE_WORDS[:-3]
POSITIVE_VERBS = ("loved", "enjoyed", "liked")
NEGATIVE_VERBS = ("hated", "disliked", "regretted")
NEGATORS = frozenset({"not", "never"})
INTENSIFIERS = ("very", "really", "quite", "rather", "so", "truly", "a bit", "far too", "pretty")
LINKING_VERBS = ("felt", "looked", "seemed", "tasted")
OPENERS = ("Honestly, ", "Overall, ", "In short, ", "Well, ", "To be fair, ", "Sadly, ", "Luckily, ")
CONNECTIVES = (", and ", " and ", " but ", ", although ", ", while ", "; ", ". ", ", so ", ". Also, ")
CLOSERS_POSITIVE = ("I would recommend it", "we will come back", "I would go again", "we left happy")
CLOSERS_NEGATIVE = ("I would not recommend it", "we will never come back", "I would not go again")
CLOSERS_NEUTRAL = ("it was worth a look", "we stayed an hour", "it is open late")
SHORT_REPLIES = (
    "Lovely.", "Not bad.", "Great!", "Too noisy.", "Fine.", "Awful.", "Okay I guess.", "Really nice!",
    "Very cold.", "So good.", "Meh.", "Bland.", "Five stars!", "Never again.",
)  # fmt: skip
PROMPT_TEMPLATES = (
    "Write a short review of the {place}:",
    "Describe your visit to the {place}:",
    "What did you think of the {place}?",
    "Tell a friend about the {place}:",
    "Give your honest opinion of the {place}:",
    "Review of the {place}:",
    "How was the {place}?",
    "Sum up your day at the {place}:",
    "In a sentence or two, review the {place}:",
    "Leave a comment about the {place}:",
)

# Function words may be used up to FUNCTION_WORD_ALLOWANCE times before repetition costs; all other words
# (adjectives, nouns, verbs, unknown words) are content words and cost from their second use.
FUNCTION_WORDS = frozenset(
    "the a an and but although while so also our their my we i it was were is are would will be not never "
    "very really quite rather truly bit far too pretty of to at in on for with".split()
)
FUNCTION_WORD_ALLOWANCE = 3
# A response whose last word is one of these is cut off mid-sentence, whatever punctuation follows.
DANGLING_WORDS = frozenset(
    "the a an and but although while so also our their my very really quite rather truly far too pretty "
    "was were is are would will not never of to at in on for with".split()
)

_NOUN_TOPIC: dict[str, str] = {
    noun: place for place, (singular, plural) in TOPICS.items() for noun in (*singular, *plural)
}
_POSITIVE = frozenset(POSITIVE_WORDS)
_NEGATIVE = frozenset(NEGATIVE_WORDS)
_WORD_RE = re.compile(r"[a-z]+")


def _words(text: str) -> list[str]:
    """Lower-cased alphabetic words of `text` (punctuation and digits are separators)."""
    return _WORD_RE.findall(text.lower())


def _build_lexicon() -> frozenset[str]:
    parts: list[str] = [
        *TOPICS, *POSITIVE_WORDS, *NEGATIVE_WORDS, *NEUTRAL_ADJECTIVES, *INTENSIFIERS, *LINKING_VERBS,
        *OPENERS, *CONNECTIVES, *CLOSERS_POSITIVE, *CLOSERS_NEGATIVE, *CLOSERS_NEUTRAL, *SHORT_REPLIES,
        *GENERIC_SINGULAR, *GENERIC_PLURAL, *FUNCTION_WORDS, *PROMPT_TEMPLATES,
    ]  # fmt: skip
    parts += [noun for singular, plural in TOPICS.values() for noun in (*singular, *plural)]
    return frozenset(word for part in parts for word in _words(part))


LEXICON = _build_lexicon()
"""Every word the demo grammar can produce; the oracle's `lexicon` component penalises any other word."""

PROMPT_SPLITS = ("all", "train", "test")


def _prompt_pool(split: str) -> list[str]:
    """The 120 distinct demo prompts (12 places × 10 templates); `test` holds 24 of them, 2 per place."""
    if split not in PROMPT_SPLITS:
        raise ValueError(f"split must be one of {PROMPT_SPLITS}, got {split!r}")
    pool = []
    for p, place in enumerate(TOPICS):
        for t, template in enumerate(PROMPT_TEMPLATES):
            is_test = (p + t) % 5 == 0
            if split == "all" or (split == "test") == is_test:
                pool.append(template.format(place=place))
    return pool


def demo_prompts(*, n: int, seed: int = 0, split: str = "all") -> list[str]:
    """`n` demo prompts, deterministic for `seed`.

    The pool holds 120 distinct prompts (12 places × 10 templates); `split="test"` is a fixed subset of 24
    (two templates per place, every template twice) held out from `split="train"` (the other 96), for
    evaluation on prompts the reward model and policy were not trained on. The first `len(pool)` prompts are
    all distinct; beyond that the pool is reshuffled and repeated.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    pool = _prompt_pool(split)
    rng = random.Random(f"demo-prompts/{seed}/{split}")
    prompts: list[str] = []
    while len(prompts) < n:
        order = pool[:]
        rng.shuffle(order)
        prompts.extend(order[: n - len(prompts)])
    return prompts


def prompt_topic(prompt: str) -> str | None:
    """The demo place a prompt asks about ("harbour cafe"…), or None when it names none or several."""
    lowered = prompt.lower()
    found = [place for place in TOPICS if place in lowered]
    return found[0] if len(found) == 1 else None


# --- Response generation --------------------------------------------------------------------------------------


def _pick_noun(rng: random.Random, topic: str | None, used: set[str]) -> tuple[str, bool]:
    """(noun, plural?) — mostly from the prompt's place, sometimes generic, sometimes another place's."""
    roll = rng.random()
    if topic is None or roll < 0.25:
        singular, plural = GENERIC_SINGULAR, GENERIC_PLURAL
    elif roll < 0.33:
        singular, plural = TOPICS[rng.choice([t for t in TOPICS if t != topic])]
    else:
        singular, plural = TOPICS[topic]
    for _ in range(4):  # prefer a noun not used yet in this response
        is_plural = rng.random() < len(plural) / (len(singular) + len(plural))
        noun = rng.choice(plural if is_plural else singular)
        if noun not in used:
            break
    used.add(noun)
    return noun, is_plural


def _pick_adjective(rng: random.Random, sentiment: str, used: set[str]) -> str:
    choices = {"pos": POSITIVE_ADJECTIVES, "neg": NEGATIVE_ADJECTIVES, "neu": NEUTRAL_ADJECTIVES}[sentiment]
    for _ in range(4):  # prefer an adjective not used yet in this response
        adjective = rng.choice(choices)
        if adjective not in used:
            break
    used.add(adjective)
    return adjective


def _clause(rng: random.Random, topic: str | None, sentiment: str, used: set[str]) -> str:
    """One lower-case clause such as "the coffee was very warm" or "we loved the pastries"."""
    noun, plural = _pick_noun(rng, topic, used)
    det = rng.choice(("the", "the", "the", "the", "our", "their"))
    be = "were" if plural else "was"
    kind = rng.random()
    if kind < 0.1 and sentiment != "neu":
        subject = rng.choice(("we", "I"))
        verb = rng.choice(POSITIVE_VERBS if sentiment == "pos" else NEGATIVE_VERBS)
        return f"{subject} {verb} the {noun}"
    if kind < 0.2 and sentiment == "neg":
        # a negated positive adjective is negative: "the beds were not comfortable"
        return f"{det} {noun} {be} not {_pick_adjective(rng, 'pos', used)}"
    adjective = _pick_adjective(rng, sentiment, used)
    if kind < 0.4:
        return f"{det} {noun} {be} {rng.choice(INTENSIFIERS)} {adjective}"
    if kind < 0.55:
        return f"{det} {noun} {be} {adjective} and {_pick_adjective(rng, sentiment, used)}"
    if kind < 0.7:
        return f"{det} {noun} {rng.choice(LINKING_VERBS)} {adjective}"
    return f"{det} {noun} {be} {adjective}"


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _join(clauses: list[str], rng: random.Random) -> str:
    text = _capitalise(clauses[0])
    for clause in clauses[1:]:
        connective = rng.choice(CONNECTIVES)
        text += connective + (_capitalise(clause) if connective.endswith(". ") else clause)
    return text


def _sentiments(rng: random.Random, n_clauses: int) -> list[str]:
    mood = rng.choices(("pos", "neg", "mixed", "neu"), weights=(40, 25, 25, 10))[0]
    if mood == "mixed":
        return [rng.choice(("pos", "neg", "neu")) for _ in range(n_clauses)]
    return [mood if rng.random() < 0.85 else "neu" for _ in range(n_clauses)]


def _response(rng: random.Random, prompt: str) -> str:
    """One demo response (starting with a space) of randomly drawn quality.

    Quality modes and shares: normal 1–3 clauses 55 %, a 1–3-word reply 10 %, long 4–6 clauses 10 %,
    missing or cut-off ending 12 %, repetitive 10 %, doubled end punctuation 3 %.
    """
    topic = prompt_topic(prompt)
    modes = ("normal", "short", "long", "unended", "repetitive", "shouty")
    mode = rng.choices(modes, weights=(55, 10, 10, 12, 10, 3))[0]
    if mode == "short":
        return " " + rng.choice(SHORT_REPLIES)
    used: set[str] = set()
    n_clauses = rng.randint(4, 6) if mode == "long" else rng.choice((1, 2, 2, 3, 3))
    sentiments = _sentiments(rng, n_clauses)
    clauses = [_clause(rng, topic, s, used) for s in sentiments]
    if rng.random() < 0.15:
        closers = {"pos": CLOSERS_POSITIVE, "neg": CLOSERS_NEGATIVE, "neu": CLOSERS_NEUTRAL}[sentiments[-1]]
        clauses.append(rng.choice(closers))
    if mode == "repetitive":
        how = rng.random()
        if how < 0.4:  # "so fresh and fresh and fresh"
            last = clauses[-1].split()[-1]
            clauses[-1] += (" and " + last) * rng.randint(1, 3)
        elif how < 0.7:  # the same clause again
            clauses.append(clauses[rng.randrange(len(clauses))])
        else:  # "very very very"
            words = clauses[-1].split()
            words.insert(len(words) - 1, " ".join(["very"] * rng.randint(2, 4)))
            clauses[-1] = " ".join(words)
    text = _join(clauses, rng)
    if rng.random() < 0.12 and not text.startswith("I "):
        text = rng.choice(OPENERS) + text[:1].lower() + text[1:]
    if mode == "unended":
        if rng.random() < 0.5:
            return " " + text
        return " " + text + rng.choice((" and", " but the", ", although", " and the", " so"))
    ending = "!" if sentiments[-1] == "pos" and rng.random() < 0.25 else "."
    if mode == "shouty":
        ending = rng.choice(("!!!", "!!", "..", "?!"))
    return " " + text + ending


def sample_demo_responses(prompt: str, *, k: int, seed: int = 0) -> list[str]:
    """`k` responses to `prompt` drawn from the demo grammar (deterministic for prompt and seed).

    Handy to fill a project without a model, and the reference distribution of `noise_for_agreement`.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    rng = random.Random(f"demo-responses/{seed}/{prompt}")
    return [_response(rng, prompt) for _ in range(k)]


def demo_corpus(*, n: int, seed: int = 0) -> list[str]:
    """`n` full texts (prompt + response) to pre-train the tiny model on, deterministic for `seed`.

    Prompts come from the whole pool (train and test), responses from the grammar with its share of poor
    ones, so a model trained on it samples responses of mixed quality.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    prompts = demo_prompts(n=n, seed=seed)
    rng = random.Random(f"demo-corpus/{seed}")
    return [prompt + _response(rng, prompt) for prompt in prompts]


# --- The oracle ---------------------------------------------------------------------------------------------

SENTIMENT_WEIGHT = 2.0
REPETITION_PENALTY, REPETITION_CAP = 0.5, 3.0
ENDING_BONUS = 0.5
LENGTH_RANGE = (6, 20)
SHORT_PENALTY, LONG_PENALTY, LENGTH_CAP = 0.25, 0.1, 2.0
RELEVANCE_BONUS = 0.5
LEXICON_PENALTY = 1.0


def oracle_breakdown(prompt: str, response: str) -> dict[str, float]:
    """The oracle's components for one response (see `oracle_score` for the table); `total` is their sum.

    Also returns the counts the components use: `words`, `positive` (distinct), `negative` (distinct),
    `repeats` (extra word and bigram uses), `unknown` (words outside the demo lexicon).
    Components and total are rounded to 6 decimals, so equal component values tie exactly.
    """
    words = _words(response)
    n = len(words)

    # 1. sentiment: distinct positive and negative words with diminishing returns; "not"/"never" within the two
    #    words before a positive word turns it negative, before a negative word makes it neutral.
    positive: set[str] = set()
    negative: set[str] = set()
    for i, word in enumerate(words):
        negated = any(w in NEGATORS for w in words[max(0, i - 2) : i])
        if word in _POSITIVE:
            if negated:
                negative.add("not " + word)
            else:
                positive.add(word)
        elif word in _NEGATIVE and not negated:
            negative.add(word)
    sentiment = SENTIMENT_WEIGHT * ((1 - 0.5 ** len(positive)) - (1 - 0.5 ** len(negative)))

    # 2. repetition: content words beyond their first use, function words beyond FUNCTION_WORD_ALLOWANCE,
    #    and repeated bigrams that contain a content word.
    counts = Counter(words)
    extra_words = sum(
        max(0, c - (FUNCTION_WORD_ALLOWANCE if w in FUNCTION_WORDS else 1)) for w, c in counts.items()
    )
    bigrams = Counter(zip(words, words[1:]))
    extra_bigrams = sum(
        c - 1 for (a, b), c in bigrams.items() if c > 1 and not (a in FUNCTION_WORDS and b in FUNCTION_WORDS)
    )
    repeats = extra_words + extra_bigrams
    repetition = -min(REPETITION_CAP, REPETITION_PENALTY * repeats)

    # 3. ending: the text ends with exactly one of . ! ? and its last word does not leave the sentence hanging.
    stripped = response.rstrip()
    proper = (
        n > 0
        and stripped[-1:] in (".", "!", "?")
        and stripped[-2:-1] not in (".", "!", "?")
        and words[-1] not in DANGLING_WORDS
    )
    ending = ENDING_BONUS if proper else -ENDING_BONUS

    # 4. length in words: no penalty inside LENGTH_RANGE.
    low, high = LENGTH_RANGE
    if n < low:
        length = -min(LENGTH_CAP, SHORT_PENALTY * (low - n))
    elif n > high:
        length = -min(LENGTH_CAP, LONG_PENALTY * (n - high))
    else:
        length = 0.0

    # 5. relevance: nouns of the prompt's place only (bonus) vs nouns of other places only (penalty).
    topic = prompt_topic(prompt)
    relevance = 0.0
    if topic is not None:
        places = {_NOUN_TOPIC[w] for w in words if w in _NOUN_TOPIC}
        if places == {topic}:
            relevance = RELEVANCE_BONUS
        elif places and topic not in places:
            relevance = -RELEVANCE_BONUS

    # 6. lexicon: the share of words that are not demo words (gibberish, fragments of words).
    unknown = sum(1 for w in words if w not in LEXICON)
    lexicon = -LEXICON_PENALTY * unknown / n if n else 0.0

    parts = {
        "sentiment": sentiment,
        "repetition": repetition,
        "ending": ending,
        "length": length,
        "relevance": relevance,
        "lexicon": lexicon,
    }
    result: dict[str, float] = {name: round(value, 6) + 0.0 for name, value in parts.items()}
    result["total"] = round(sum(parts.values()), 6) + 0.0
    result.update(words=n, positive=len(positive), negative=len(negative), repeats=repeats, unknown=unknown)
    return result


def oracle_score(prompt: str, response: str) -> float:
    """The demo task's true reward for `response` to `prompt`: deterministic, in [-8.5, 3], mostly [-3, 3].

    ============  ===================================================================================
    component     value
    ============  ===================================================================================
    sentiment     2·(1 − 0.5^P) − 2·(1 − 0.5^N): P distinct positive words, N distinct negative words
                  (a positive word with "not"/"never" among the two words before it counts as negative;
                  a negated negative word counts as nothing). P = 1, 2, 3 → +1, +1.5, +1.75; max +2.
    repetition    −0.5 × (uses of a content word beyond the first + uses of a function word beyond
                  the third + extra occurrences of each bigram that contains a content word); cap −3.
    ending        +0.5 if the text ends with exactly one of . ! ? and its last word is not a connective,
                  article, intensifier, preposition or auxiliary ("… and the."); otherwise −0.5.
    length        0 for 6–20 words; −0.25 per word short of 6; −0.1 per word over 20; capped at −2.
    relevance     +0.5 if the place nouns are all the prompt's place's (coffee for the harbour cafe),
                  −0.5 if all belong to other places, 0 otherwise (none, mixed, or no demo place).
    lexicon       −1 × the share of words that are not in the demo lexicon (gibberish).
    ============  ===================================================================================

    Words are the lower-cased runs of letters. Why it is hard to hack (design.md §5): a repeated positive
    word counts once and costs 0.5 per repeat ("so fresh and fresh" scores below "so fresh"); each further
    distinct positive word pays half as much as the one before, while the length range stops word lists; a
    reply without a proper ending or an endless ramble loses points; the best responses (≈ 2.75: three
    distinct positive words about the right place in one or two well-ended sentences) read like good reviews.

    Example: ``" The coffee was warm and the staff were friendly."`` for the harbour cafe → sentiment 1.5,
    ending 0.5, relevance 0.5, length 0 (9 words), repetition 0, lexicon 0: total 2.5.
    """
    return float(oracle_breakdown(prompt, response)["total"])


# --- Simulated annotators -------------------------------------------------------------------------------------

# Reference distribution for calibrating noise: 600 demo prompts, K = 4..9 grammar responses each.
_CALIBRATION_PROMPTS = 600
_CALIBRATION_SEED = 20240521


@functools.cache
def _calibration_differences() -> tuple[tuple[float, int], ...]:
    """(|score difference|, number of pairs) over the untied within-prompt pairs of the reference set."""
    diffs: Counter[float] = Counter()
    for i, prompt in enumerate(demo_prompts(n=_CALIBRATION_PROMPTS, seed=_CALIBRATION_SEED)):
        responses = sample_demo_responses(prompt, k=4 + i % 6, seed=_CALIBRATION_SEED)
        scores = [oracle_score(prompt, r) for r in responses]
        diffs.update(round(abs(a - b), 6) for j, a in enumerate(scores) for b in scores[j + 1 :] if a != b)
    return tuple(sorted(diffs.items()))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def expected_agreement(noise: float, differences: Sequence[float] | None = None) -> float:
    """Expected pairwise agreement of two independent annotators with Gumbel noise of scale `noise`.

    With utilities u = s + noise·G (G standard Gumbel), a pair with score gap d is ordered correctly with
    probability p = σ(d / noise) (the difference of two Gumbels is logistic: Bradley–Terry, the pairwise
    marginal of Plackett–Luce). Two independent annotators agree when both are right or both are wrong:
    p² + (1 − p)² = 1 − 2p(1 − p). The expectation is over the untied pairs' score gaps `differences`
    (default: the reference distribution of `noise_for_agreement`).
    """
    weighted = (
        _calibration_differences() if differences is None else tuple(Counter(abs(d) for d in differences).items())
    )
    pairs = sum(count for d, count in weighted if d)
    if not pairs:
        raise ValueError("no untied pairs to compute agreement over")
    if noise <= 0:
        return 1.0
    total = 0.0
    for d, count in weighted:
        if d:
            p = _sigmoid(d / noise)
            total += count * (1.0 - 2.0 * p * (1.0 - p))
    return total / pairs


@functools.cache
def noise_for_agreement(agreement: float) -> float:
    """The Gumbel noise scale at which two independent simulated annotators agree on `agreement` of pairs.

    Solved by bisection on `expected_agreement` over a fixed reference distribution: the untied pairs of
    600 demo prompts with K = 4..9 grammar responses each (the kind of responses the pre-trained tiny model
    samples). The table of score gaps is computed once per process and each result is cached. Reference
    values: 0.60 → 2.16, 0.73 → 1.04, 0.80 → 0.72, 0.90 → 0.36, 0.95 → 0.20 (for scale: oracle scores of
    grammar responses have a standard deviation of ≈ 1.6). tests/rlhf/test_demo_task.py measures the
    agreement of independent annotators empirically. Responses closer in quality than the reference (e.g.
    from a policy after PPO) are agreed on less often, as with human labelers.

    `agreement` must lie in (0.5, 1]; 1 gives 0 (a noiseless annotator).
    """
    if not 0.5 < agreement <= 1.0:
        raise ValueError(f"agreement must be in (0.5, 1], got {agreement}")
    if agreement == 1.0:
        return 0.0
    lo, hi = 0.0, 1.0
    while expected_agreement(hi) > agreement:  # agreement falls monotonically as noise grows
        lo, hi = hi, hi * 2.0
        if hi > 1e6:
            raise ValueError(f"agreement {agreement} is too close to 0.5 to calibrate")
    for _ in range(50):
        mid = (lo + hi) / 2
        if expected_agreement(mid) > agreement:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


FLAG_UNHELPFUL_BELOW = -1.5


@dataclass(kw_only=True)
class SimulatedAnnotator:
    """A labeler who ranks responses by the oracle with Plackett–Luce noise, and rates and flags them.

    `agreement` is the pairwise agreement two independent annotators of this kind reach on the reference
    distribution (InstructGPT's labelers: ≈ 0.73); it sets the Gumbel noise scale via `noise_for_agreement`
    unless `noise` is given. Draws are deterministic for (seed, name, prompt, responses): annotators with
    different seeds or names are independent, and asking one annotator again gives the same answer.
    """

    agreement: float = 0.73
    seed: int = 0
    name: str = "sim-1"
    noise: float | None = None

    def __post_init__(self) -> None:
        if self.noise is None:
            self.noise = noise_for_agreement(self.agreement)
        elif self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")

    def _rng(self, purpose: str, prompt: str, responses: Sequence[str]) -> random.Random:
        key = "\x1f".join([purpose, str(self.seed), self.name, prompt, *responses])
        return random.Random(hashlib.sha256(key.encode("utf-8")).hexdigest())

    def rank(self, prompt: str, responses: Sequence[str]) -> list[list[int]]:
        """Tiers of indices into `responses`, best first; responses with equal oracle scores share a tier.

        Each distinct score s gets the utility s + noise·G, G ~ Gumbel(0, 1) (one draw per tier), and tiers
        are sorted by utility: a Plackett–Luce ranking with weights exp(s / noise). Indices within a tier
        are ascending.
        """
        scores = [oracle_score(prompt, r) for r in responses]
        by_score: dict[float, list[int]] = {}
        for i, s in enumerate(scores):
            by_score.setdefault(s, []).append(i)
        rng = self._rng("rank", prompt, responses)
        utilities = []
        for s in sorted(by_score):
            u = max(rng.random(), 1e-300)
            utilities.append((s + self.noise * -math.log(-math.log(u)), s))
        return [by_score[s] for _, s in sorted(utilities, reverse=True)]

    def rate(self, prompt: str, responses: Sequence[str]) -> list[int]:
        """Likert 1–7 per response: round(4 + score + noise·L) clipped to 1..7, L ~ standard logistic."""
        rng = self._rng("rate", prompt, responses)
        ratings = []
        for response in responses:
            u = min(max(rng.random(), 1e-12), 1 - 1e-12)
            noisy = 4 + oracle_score(prompt, response) + self.noise * math.log(u / (1 - u))
            ratings.append(int(min(7, max(1, math.floor(noisy + 0.5)))))
        return ratings

    def flags(self, prompt: str, responses: Sequence[str]) -> list[list[str]]:
        """Flag keys (annotate's RESPONSE_FLAGS) per response, from the oracle's components:
        `unhelpful` (score < −1.5), `broken_text` (≥ 25 % non-words, or repetition ≤ −1.5),
        `fails_instruction` (its place nouns are all another place's)."""
        result = []
        for response in responses:
            parts = oracle_breakdown(prompt, response)
            keys = []
            if parts["total"] < FLAG_UNHELPFUL_BELOW:
                keys.append("unhelpful")
            if parts["lexicon"] <= -0.25 or parts["repetition"] <= -1.5:
                keys.append("broken_text")
            if parts["relevance"] < 0:
                keys.append("fails_instruction")
            result.append(keys)
        return result

    def annotate(self, prompt: str, responses: Sequence[str]) -> dict:
        """A ranking record as in docs/architecture.md (callers add prompt_id and metadata)."""
        return {
            "prompt": prompt,
            "responses": list(responses),
            "ranking": self.rank(prompt, responses),
            "annotator": self.name,
            "ratings": self.rate(prompt, responses),
            "flags": self.flags(prompt, responses),
            "all_bad": bool(responses) and max(oracle_score(prompt, r) for r in responses) < 0,
            "source": "simulated",
        }


def pairwise_agreement(rank_a: Sequence[Sequence[int]], rank_b: Sequence[Sequence[int]]) -> float | None:
    """The share of pairs, among those both rankings order (tied in neither), on which they agree.

    Rankings are tiers of indices, best first. Only indices present in both are compared. Returns None
    when no pair is ordered by both; raises ValueError when an index appears twice in one ranking.
    Example: [[0], [1, 2]] vs [[1], [0], [2]]: (0,1) disagree, (0,2) agree, (1,2) tied in the first → 0.5.
    """
    tier_a = _tier_of(rank_a, "rank_a")
    tier_b = _tier_of(rank_b, "rank_b")
    common = sorted(set(tier_a) & set(tier_b))
    ordered = agreed = 0
    for x, i in enumerate(common):
        for j in common[x + 1 :]:
            da, db = tier_a[i] - tier_a[j], tier_b[i] - tier_b[j]
            if da and db:
                ordered += 1
                agreed += (da > 0) == (db > 0)
    return agreed / ordered if ordered else None


def _tier_of(ranking: Sequence[Sequence[int]], name: str) -> dict[int, int]:
    tier: dict[int, int] = {}
    for t, group in enumerate(ranking):
        for index in group:
            if index in tier:
                raise ValueError(f"{name}: index {index} appears more than once")
            tier[index] = t
    return tier
