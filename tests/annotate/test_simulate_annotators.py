"""simulate_annotators: simulated annotators rank pending work through the queue and submit services."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from annotate.models import Assignment, Ranking
from annotate.services.simulation import simulate_annotations
from training.rlhf.demo_task import demo_prompts, sample_demo_responses

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo_project(make_project, new_prompt):
    project = make_project("Demo", prompts=0, per_prompt=2, k_min=4, k_max=6)
    for i, text in enumerate(demo_prompts(n=6, seed=3)):
        new_prompt(project, text=text, responses=sample_demo_responses(text, k=5, seed=i))
    return project


def test_command_ranks_everything_through_the_queue(demo_project):
    out = StringIO()
    call_command("simulate_annotators", "--project", "Demo", "--annotators", "3", "--agreement", "0.73",
                 "--seed", "1", stdout=out, verbosity=0)
    text = out.getvalue()
    assert "12 ranking(s)" in text and "Rankings still needed in the project: 0." in text
    rankings = Ranking.objects.filter(prompt__project=demo_project)
    assert rankings.count() == 12
    assert set(rankings.values_list("source", flat=True)) == {"simulated"}
    per_prompt = {}
    for ranking in rankings.select_related("assignment", "annotator"):
        # through the same path as people: a submitted assignment holds every ranking
        assert ranking.assignment.state == Assignment.State.SUBMITTED
        assert ranking.annotator.username.startswith("sim-")
        assert sorted(sum(ranking.tiers, [])) == sorted(ranking.display_order)
        assert ranking.ratings and all(1 <= v <= 7 for v in ranking.ratings.values())
        per_prompt.setdefault(ranking.prompt_id, set()).add(ranking.annotator_id)
    assert all(len(annotators) == 2 for annotators in per_prompt.values())
    assert set(demo_project.annotators.values_list("username", flat=True)) == {"sim-1", "sim-2", "sim-3"}


def test_limit_and_rerun(demo_project):
    first = simulate_annotations(project=demo_project, annotators=2, agreement=0.8, seed=0, limit=5)
    assert first.rankings == 5 and first.left_in_project == 7
    second = simulate_annotations(project=demo_project, annotators=2, agreement=0.8, seed=0)
    assert second.rankings == 7 and second.left_in_project == 0
    assert sum(second.by_annotator.values()) == 7
    assert simulate_annotations(project=demo_project, annotators=2, agreement=0.8).rankings == 0


def test_simulated_annotators_disagree_sometimes_but_not_always(make_project, new_prompt):
    project = make_project("Agreement", prompts=0, per_prompt=2, k_min=4, k_max=4)
    for i, text in enumerate(demo_prompts(n=30, seed=11)):
        new_prompt(project, text=text, responses=sample_demo_responses(text, k=4, seed=100 + i))
    simulate_annotations(project=project, annotators=2, agreement=0.73, seed=5)
    by_prompt = {}
    for ranking in Ranking.objects.filter(prompt__project=project):
        by_prompt.setdefault(ranking.prompt_id, []).append(ranking.tiers)
    identical = sum(1 for pair in by_prompt.values() if pair[0] == pair[1])
    assert len(by_prompt) == 30 and 0 < identical < 30


@pytest.mark.parametrize("args, message", [
    (["--project", "Nope"], "No project named 'Nope'"),
    (["--project", "Demo", "--annotators", "0"], "--annotators"),
    (["--project", "Demo", "--agreement", "1.2"], "--agreement"),
    (["--project", "Demo", "--limit", "0"], "--limit"),
])
def test_bad_arguments_are_command_errors(demo_project, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("simulate_annotators", *args, stdout=StringIO())
    assert not Ranking.objects.exists()


# --- demonstrations ------------------------------------------------------------------------------------------


def test_lightly_noised_edits_at_most_one_word_and_keeps_the_ending():
    import random

    from annotate.services.simulation import lightly_noised

    text = " The coffee was warm and the staff were friendly."
    assert lightly_noised(text, rng=random.Random(0), edit_probability=0.0) == text
    seen = set()
    for seed in range(200):
        noised = lightly_noised(text, rng=random.Random(seed), edit_probability=1.0)
        assert noised != text and noised.endswith(" friendly.") and noised.startswith(" ")
        assert abs(len(noised.split()) - len(text.split())) == 1
        seen.add(len(noised.split()) - len(text.split()))
    assert seen == {-1, 1}  # words are dropped and doubled
    edited = sum(lightly_noised(text, rng=random.Random(s)) != text for s in range(400))
    assert 60 < edited < 140  # the default: about a quarter


def test_simulated_demonstrations_go_through_the_queue_and_submit(demo_project):
    from annotate.models import Demonstration
    from annotate.services.simulation import simulate_demonstrations

    demo_project.task_types = demo_project.TaskTypes.BOTH
    demo_project.save()
    written = []

    def write(prompt, rng):
        written.append(prompt)
        return "" if len(written) == 2 else f" An answer to {prompt}"

    summary = simulate_demonstrations(project=demo_project, annotators=2, write=write, limit=4, seed=1)
    assert summary.demonstrations == 4 and summary.skipped == 1
    rows = Demonstration.objects.filter(prompt__project=demo_project)
    submitted = rows.filter(status=Demonstration.Status.SUBMITTED)
    assert submitted.count() == 4 and submitted.values("prompt").distinct().count() == 4  # fewest first
    assert set(submitted.values_list("source", flat=True)) == {Demonstration.Source.SIMULATED}
    assert all(d.text == f" An answer to {d.prompt.text}" and d.annotator.username.startswith("sim-")
               for d in submitted)
    assert rows.filter(status=Demonstration.Status.SKIPPED).count() == 1
    # A second call continues with what the queue still offers: 12 slots (6 prompts × 2), 4 filled, and the
    # skipped prompt's free slot is open to nobody (the other simulated annotator already wrote one for it).
    again = simulate_demonstrations(project=demo_project, annotators=2, write=lambda p, r: " More.", limit=100)
    assert again.demonstrations == 7 and again.skipped == 0
    assert rows.filter(status=Demonstration.Status.SUBMITTED).count() == 11


def test_simulated_demonstrations_refuse_a_rankings_only_project(demo_project):
    from django.core.exceptions import ValidationError

    from annotate.services.simulation import simulate_demonstrations

    with pytest.raises(ValidationError) as error:
        simulate_demonstrations(project=demo_project, annotators=1, write=lambda p, r: " x.", limit=1)
    assert "does not ask for demonstrations" in str(error.value)
