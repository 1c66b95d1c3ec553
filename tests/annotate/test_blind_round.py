"""A blind A/B round is blind: nothing an annotator receives (response ids, their order, labels, API fields,
HTML attributes) tells the new policy's responses from the baseline's.

Before the fix the baseline was sampled in a second pass, so its responses always had the largest,
non-contiguous ids of their prompt. Now each prompt's responses are inserted together in a random order; the
tests below check that the baseline's rank among a prompt's ids, and its position in what the annotator is
shown, are uniform (Pearson's chi-square goodness of fit against fixed critical values, so no scipy), and that
the per-response fields and attributes are the same for both policies.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections import Counter
from html.parser import HTMLParser

import pytest
import torch
from django.urls import reverse

from annotate.models import Project, Prompt, Response, text_hash
from annotate.services import sampling as sampling_service
from training.rlhf.sampling import LoadedPolicy
from training.rounds import sample_new_round

NEW, OLD = "/models/ppo-7/policy", "/models/sft"

# Upper 0.1 % points of the chi-square distribution (NIST/SEMATECH e-Handbook, table 1.3.6.7.4).
CHI2_999 = {3: 16.266, 5: 20.515}


def chi_square(counts: Counter, categories: list) -> tuple[float, int]:
    """Pearson's X² = Σ (observed − expected)² / expected against the uniform distribution over `categories`;
    returns (X², degrees of freedom)."""
    n = sum(counts.values())
    expected = n / len(categories)
    return sum((counts.get(c, 0) - expected) ** 2 / expected for c in categories), len(categories) - 1


def test_chi_square_known_answer():
    # 4 categories, 40 draws: expected 10 each.
    assert chi_square(Counter({0: 10, 1: 10, 2: 10, 3: 10}), [0, 1, 2, 3]) == (0.0, 3)
    stat, dof = chi_square(Counter({0: 16, 1: 8, 2: 8, 3: 8}), [0, 1, 2, 3])
    assert dof == 3 and stat == pytest.approx((36 + 4 + 4 + 4) / 10)


@pytest.fixture
def fake_policies(monkeypatch):
    """Two "policies" that load instantly and write distinct texts; which wrote what is read from the database."""

    def load(name, device="auto", revision=None):
        return LoadedPolicy(model=None, tokenizer=None, name=str(name), revision=f"sha256:{name}",
                            device=torch.device("cpu"), dtype=torch.float32)

    def generator(policy, params, prompt_format=None):
        return lambda prompts, seed: [f"Response {uuid.uuid4().hex[:12]}." for _ in prompts]

    monkeypatch.setattr(sampling_service, "load_policy", load)
    monkeypatch.setattr(sampling_service, "policy_generator", generator)


def make_round_one(n: int, k_max: int = 6) -> Project:
    project = Project.objects.create(name=f"blind-{uuid.uuid4().hex[:6]}", k_min=4, k_max=k_max)
    texts = [f"Prompt {i}: review the café." for i in range(n)]
    Prompt.objects.bulk_create([Prompt(project=project, text=t, text_hash=text_hash(t), round=1) for t in texts])
    return project


def baseline_positions(project: Project, round_number: int) -> list[tuple[int, ...]]:
    """Per prompt of the round: the ranks of the baseline's responses among the prompt's ids (0 = smallest).
    Also checks that the prompt's ids are contiguous (one insert)."""
    positions = []
    for prompt in Prompt.objects.filter(project=project, round=round_number).order_by("pk"):
        rows = list(prompt.responses.order_by("pk").values_list("pk", "model_path"))
        ids = [pk for pk, _ in rows]
        assert ids == list(range(ids[0], ids[0] + len(ids))), f"ids of {prompt} are not contiguous: {ids}"
        positions.append(tuple(i for i, (_, path) in enumerate(rows) if path == OLD))
    return positions


@pytest.mark.django_db
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("baseline_k", [1, 2])
def test_the_baselines_rank_among_a_prompts_ids_is_uniform(fake_policies, monkeypatch, seed, baseline_k):
    rng = random.Random(seed)  # one generator for the whole round, as the OS's would be
    monkeypatch.setattr(sampling_service, "response_order_rng", lambda: rng)
    k, n = 4, 240
    project = make_round_one(n)
    result = sample_new_round(project=project, model_path=NEW, baseline_model_path=OLD, baseline_k=baseline_k, k=k)
    assert result["responses"] == n * k
    assert result["policy"]["responses_created"] == n * (k - baseline_k)
    assert result["baseline"]["responses_created"] == n * baseline_k
    positions = baseline_positions(project, result["round"])
    assert len(positions) == n and all(len(p) == baseline_k for p in positions)
    categories = list(itertools.combinations(range(k), baseline_k))
    stat, dof = chi_square(Counter(positions), categories)
    assert stat < CHI2_999[dof], (stat, Counter(positions))


@pytest.mark.django_db
def test_the_rank_test_catches_an_ordered_insert(fake_policies, monkeypatch):
    """The statistic above can fail: without the shuffle (the baseline inserted last, as before) it is huge."""

    class NoShuffle(random.Random):
        def shuffle(self, x):
            return None

    monkeypatch.setattr(sampling_service, "response_order_rng", lambda: NoShuffle(0))
    project = make_round_one(40)
    result = sample_new_round(project=project, model_path=NEW, baseline_model_path=OLD, baseline_k=1, k=4)
    positions = baseline_positions(project, result["round"])
    assert set(positions) == {(3,)}
    stat, dof = chi_square(Counter(positions), [(i,) for i in range(4)])
    assert stat > CHI2_999[dof]


def test_the_default_order_comes_from_the_os():
    assert isinstance(sampling_service.response_order_rng(), random.SystemRandom)


class _Cards(HTMLParser):
    """The attributes of every response card (<article class="resp-card" …>) and of the elements inside it."""

    def __init__(self):
        super().__init__()
        self.cards: list[dict[str, str | None]] = []
        self.inner: list[list[tuple[str, tuple[str, ...]]]] = []
        self.depth = 0

    def handle_starttag(self, tag, attrs):
        attrs_d = dict(attrs)
        if tag == "article" and "resp-card" in (attrs_d.get("class") or ""):
            self.cards.append(attrs_d)
            self.inner.append([])
            self.depth = 1
            return
        if self.depth:
            self.inner[-1].append((tag, tuple(sorted(attrs_d))))
            if tag not in ("input", "br", "img", "hr", "meta", "link"):
                self.depth += 1

    def handle_endtag(self, tag):
        if self.depth and tag not in ("input", "br", "img", "hr"):
            self.depth -= 1


@pytest.mark.django_db
def test_what_an_annotator_receives_is_the_same_for_both_policies(fake_policies, client, django_user_model):
    """Through the real API and page, with the real (OS-random) order: per response the same API fields and the
    same HTML structure and attribute names; ids contiguous; labels and order carry no policy."""
    project = make_round_one(24)
    result = sample_new_round(project=project, model_path=NEW, baseline_model_path=OLD, baseline_k=1, k=4)
    Prompt.objects.filter(project=project, round=1).delete()  # only the new round to rank
    annotator = django_user_model.objects.create_user("blind-annotator", password="pw")
    project.annotators.add(annotator)
    client.force_login(annotator)
    origin = dict(Response.objects.filter(prompt__project=project).values_list("pk", "model_path"))
    baseline_labels = Counter()
    for _ in range(24):
        task = client.post(reverse("api-task-next"), {"project": project.pk}, content_type="application/json")
        assert task.status_code == 200
        body = task.json()
        entries = body["responses"]
        ids = [entry["id"] for entry in entries]
        assert sorted(ids) == list(range(min(ids), min(ids) + 4))
        by_policy = {}
        for entry in entries:
            by_policy.setdefault(origin[entry["id"]], set()).add(tuple(sorted(entry)))
        assert set(by_policy) == {NEW, OLD} and len(by_policy[NEW] | by_policy[OLD]) == 1  # same keys
        assert sorted(body["display_order"]) == sorted(ids)
        baseline_labels.update(e["label"] for e in entries if origin[e["id"]] == OLD)

        page = client.get(reverse("annotate:rank", args=[body["id"]]))
        assert page.status_code == 200
        cards = _Cards()
        cards.feed(page.content.decode())
        assert len(cards.cards) == 4
        shapes = {origin[int(card["data-response-id"])]: set() for card in cards.cards}
        for card, inner in zip(cards.cards, cards.inner):
            shape = (tuple(sorted(card)), tuple(inner))
            shapes[origin[int(card["data-response-id"])]].add(
                tuple((tag, names) for tag, names in shape[1]) + (shape[0],))
        assert len(shapes[NEW] | shapes[OLD]) == 1, "a card's markup differs between the policies"

        skip = client.post(reverse("api-task-skip", args=[body["id"]]), {"reason": "other"},
                           content_type="application/json")
        assert skip.status_code < 300, skip.content
    assert result["round"] == 2 and sum(baseline_labels.values()) == 24
