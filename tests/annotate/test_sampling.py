"""Sampling: the pure generation helper (training.rlhf.sampling) and the Django service / command."""

from __future__ import annotations

import uuid

import pytest
import torch
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.utils import timezone

from annotate.models import Assignment, Project, Prompt, Ranking, Response
from annotate.services import sampling as sampling_service
from annotate.services.sampling import SamplingError, sample_project_responses
from tests.annotate.data_fixtures import random_policy_dir  # noqa: F401 - fixture
from training.rlhf import sampling as rs

# --- pure helpers ------------------------------------------------------------------------------------------


def test_left_pad_shapes_and_mask():
    ids, mask = rs.left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


class FakeTokenizer:
    eos_token_id, pad_token_id = 1, 0

    def decode(self, ids, skip_special_tokens=True):
        return "".join({2: " a", 3: "b", 4: " ", 5: "\x00"}[i] for i in ids)


def test_decode_continuations_cuts_at_eos_and_strips_trailing_space():
    gens = rs.decode_continuations(FakeTokenizer(), torch.tensor([[2, 3, 4, 1, 0], [2, 2, 4, 4, 3], [5, 2, 4, 4, 4]]))
    assert [(g.text, g.tokens, g.finished) for g in gens] == [
        (" ab", 3, True),  # leading space kept (it is part of the continuation), trailing one stripped
        (" a a  b", 5, False),  # no EOS: cut at max_new_tokens
        (" a", 5, False),  # NUL dropped (PostgreSQL cannot store it)
    ]


def test_near_duplicates():
    assert rs.is_near_duplicate("The cake was great.", "the  cake was GREAT.")
    assert rs.is_near_duplicate("The cake was great!", "The cake was great.")  # ratio 0.95
    assert not rs.is_near_duplicate("The cake was great.", "The soup was cold.")
    assert not rs.is_near_duplicate("short", "a much longer and different text entirely", 0.9)


def scripted(outputs):
    """A fake `generate` returning scripted texts in order, recording each call."""
    calls = []
    queue = list(outputs)

    def generate(prompts, seed):
        calls.append((list(prompts), seed))
        return [queue.pop(0) for _ in prompts]

    generate.calls = calls
    return generate


def test_sample_distinct_resamples_duplicates_and_empties():
    generate = scripted(
        [
            # round 1: prompt A ×4, prompt B ×4
            "one", "one", "", "three",  "x1 unique", "x2 different", "x3 other", "x4 more",
            # round 2: A needs 2 more
            "ONE ", "four",
            # round 3: A needs 1 more
            "five",
        ]
    )
    result = rs.sample_distinct(["A", "B"], 4, generate=generate, seed=10)
    assert result.responses == [["one", "three", "four", "five"], ["x1 unique", "x2 different", "x3 other", "x4 more"]]
    assert (result.discarded_duplicates, result.discarded_empty, result.attempts) == (2, 1, 3)
    assert [len(p) for p, _ in generate.calls] == [8, 2, 1]
    assert [s for _, s in generate.calls] == [10, 11, 12]  # a new seed per round


def test_sample_distinct_counts_existing_and_is_bounded():
    generate = scripted(["old text", "old text!", "same", "same", "same"])
    result = rs.sample_distinct(["A"], 3, generate=generate, existing=[["old text"]], max_tries=3)
    # Needs 2 new. Round 1: "old text", "old text!" duplicate the existing one. Round 2: "same" accepted, the
    # second "same" dropped. Round 3 (1 missing): "same" dropped again. Bounded: 3 rounds, one short.
    assert result.responses == [["same"]]
    assert result.attempts == 3 and result.discarded_duplicates == 4


def test_sampling_params_validation():
    with pytest.raises(ValueError, match="temperature"):
        rs.SamplingParams(temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        rs.SamplingParams(top_p=1.5)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            rs.resolve_device("cuda")
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda"):
        rs.resolve_device("tpu")
    assert rs.default_dtype(torch.device("cpu")) == torch.float32


def test_generate_texts_batched_left_padding_matches_unbatched(random_policy_dir):  # noqa: F811
    policy = rs.load_policy(random_policy_dir, device="cpu")
    assert policy.tokenizer.padding_side == "left" and policy.revision.startswith("sha256:")
    assert policy.tokenizer.pad_token_id != policy.tokenizer.eos_token_id
    # top_k=1 makes sampling greedy, so a prompt must continue the same alone and left-padded in a batch
    # with a longer prompt: the attention mask and position ids have to be right.
    greedy = rs.SamplingParams(top_k=1, max_new_tokens=12, batch_size=4)
    prompts = ["the soup", "a quiet morning with coffee and a good book and"]
    alone = [rs.generate_texts(policy.model, policy.tokenizer, [p], params=greedy, seed=0)[0].text for p in prompts]
    batched = [g.text for g in rs.generate_texts(policy.model, policy.tokenizer, prompts, params=greedy, seed=0)]
    assert batched == alone
    # Sampling is seeded: the same seed gives the same texts, batches of 2 cover 5 rows.
    params = rs.SamplingParams(max_new_tokens=8, batch_size=2)
    first = rs.generate_texts(policy.model, policy.tokenizer, ["the soup"] * 5, params=params, seed=3)
    again = rs.generate_texts(policy.model, policy.tokenizer, ["the soup"] * 5, params=params, seed=3)
    assert len(first) == 5 and [g.text for g in first] == [g.text for g in again]
    assert len({g.text for g in first}) > 1


def test_weights_content_hash_depends_on_contents_not_location(random_policy_dir, tmp_path):  # noqa: F811
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(random_policy_dir, copy)
    assert rs.weights_content_hash(copy) == rs.weights_content_hash(random_policy_dir)
    config = copy / "config.json"
    config.write_text(config.read_text().replace('"n_layer": 2', '"n_layer": 2 '))
    assert rs.weights_content_hash(copy) != rs.weights_content_hash(random_policy_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no weight files"):
        rs.weights_content_hash(empty)


# --- Django service ------------------------------------------------------------------------------------------


@pytest.fixture
def project(db):
    project = Project.objects.create(name="sampling", k_min=4, k_max=6)
    for text in ("the soup was", "a quiet morning", "the train was late", "we walked along"):
        Prompt.objects.create(project=project, text=text)
    return project


@pytest.mark.django_db
def test_service_samples_records_provenance_and_resumes(project, random_policy_dir, monkeypatch):  # noqa: F811
    summary = sample_project_responses(
        project=project, model=str(random_policy_dir), k=4, max_new_tokens=10, batch_size=6, seed=1, limit=3,
        device="cpu",
    )
    assert (summary.prompts_sampled, summary.responses_created, summary.prompts_incomplete) == (3, 12, 0)
    response = Response.objects.first()
    assert response.origin == Response.Origin.MODEL
    assert response.model_path == str(random_policy_dir.resolve())
    assert response.model_revision == rs.weights_content_hash(random_policy_dir)
    assert response.sampling_params == {
        "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 10, "seed": 1, "k": 4, "max_tries": 4,
        "similarity": 0.9, "dtype": "float32",
    }
    assert response.round == 1
    for prompt in Prompt.objects.filter(responses__isnull=False).distinct():
        texts = list(prompt.responses.values_list("text", flat=True))
        assert len(texts) == 4 and all(t.strip() for t in texts)
        assert not any(rs.is_near_duplicate(a, b) for i, a in enumerate(texts) for b in texts[i + 1:])

    # Second run: continues with the one prompt left.
    second = sample_project_responses(project=project, model=str(random_policy_dir), k=4, max_new_tokens=10,
                                      device="cpu")
    assert (second.prompts_full, second.prompts_sampled, second.responses_created) == (3, 1, 4)

    # Third run: nothing to do, and the model is not even loaded.
    def no_loading(*args, **kwargs):
        raise AssertionError("the model should not be loaded when every prompt has K responses")

    monkeypatch.setattr(sampling_service, "load_policy", no_loading)
    third = sample_project_responses(project=project, model=str(random_policy_dir), k=4)
    assert (third.prompts_full, third.prompts_sampled, third.responses_created) == (4, 0, 0)
    assert Response.objects.count() == 16


class FakePolicy(rs.LoadedPolicy):
    pass


def fake_policy():
    return FakePolicy(model=None, tokenizer=None, name="fake/model", revision="abc123", device=torch.device("cpu"),
                      dtype=torch.float32)


@pytest.mark.django_db
def test_service_resamples_duplicates_and_leaves_short_prompts_unwritten(project, monkeypatch):
    outputs = {
        "the soup was": iter(["hot", "hot", "HOT", "cold", "warm", "", "tepid"]),
        "a quiet morning": iter(["same"] * 50),
    }

    def fake_generator(policy, params, prompt_format=None):
        def generate(prompts, seed):
            return [rs.Generation(next(outputs[p]), 3, True) for p in prompts]
        return generate

    monkeypatch.setattr(sampling_service, "policy_generator", fake_generator)
    Prompt.objects.filter(text__in=["the train was late", "we walked along"]).delete()
    Prompt.objects.update(round=2)
    summary = sample_project_responses(project=project, model=fake_policy(), k=4, max_tries=3, round=2)
    soup = Prompt.objects.get(text="the soup was")
    assert sorted(soup.responses.values_list("text", flat=True)) == ["cold", "hot", "tepid", "warm"]
    assert set(soup.responses.values_list("round", flat=True)) == {2}
    assert Prompt.objects.get(text="a quiet morning").responses.count() == 0  # never 4 distinct: nothing written
    assert summary.round == 2 and summary.prompts_sampled == 1 and summary.prompts_incomplete == 1
    assert summary.discarded_duplicates >= 2 and summary.discarded_empty == 1
    assert "could not get 4 distinct responses" in str(summary)
    # round=3 only considers prompts of round 3: none here.
    assert sample_project_responses(project=project, model=fake_policy(), k=4, round=3).prompts_considered == 0


@pytest.mark.django_db
def test_service_tops_up_existing_and_skips_ranked_or_assigned(project, monkeypatch):
    def fake_generator(policy, params, prompt_format=None):
        return lambda prompts, seed: [uuid.uuid4().hex for _ in prompts]  # distinct random texts

    monkeypatch.setattr(sampling_service, "policy_generator", fake_generator)
    soup, morning, train, walk = Prompt.objects.order_by("pk")
    for i in range(2):
        Response.objects.create(prompt=soup, text=f"imported {i} " + "y" * 30 * i)
    user = get_user_model().objects.create_user("ann")
    now = timezone.now()
    Assignment.objects.create(prompt=morning, annotator=user, leased_at=now, lease_expires_at=now)
    Ranking.objects.create(prompt=train, tiers=[])
    summary = sample_project_responses(project=project, model=fake_policy(), k=5)
    assert summary.prompts_locked == 2 and summary.prompts_sampled == 2
    assert soup.responses.count() == 5 and soup.responses.filter(origin="imported").count() == 2
    assert walk.responses.count() == 5
    assert morning.responses.count() == 0 and train.responses.count() == 0


@pytest.mark.django_db
def test_service_and_command_errors(project, capsys, random_policy_dir):  # noqa: F811
    with pytest.raises(SamplingError, match="k=9 is outside the project's range 4–6"):
        sample_project_responses(project=project, model="x", k=9)
    with pytest.raises(CommandError, match="No project named 'nope'"):
        call_command("sample_responses", "--project", "nope", "--model", "x")
    with pytest.raises(CommandError, match="outside the project's range"):
        call_command("sample_responses", "--project", "sampling", "--model", "x", "--k", "3")
    with pytest.raises(CommandError, match="temperature must be > 0"):
        call_command("sample_responses", "--project", "sampling", "--model", "x", "--temperature", "0")
    with pytest.raises(CommandError, match="Cannot load the model"):
        call_command("sample_responses", "--project", "sampling", "--model", str(random_policy_dir / "missing"),
                     "--no-progress")
    call_command("sample_responses", "--project", "sampling", "--model", str(random_policy_dir), "--k", "4",
                 "--max-new-tokens", "6", "--limit", "2", "--device", "cpu", "--no-progress")
    out = capsys.readouterr().out
    assert f"Model {random_policy_dir.resolve()} (revision sha256:" in out
    assert "K=4: sampled 2 prompts (8 responses)" in out
