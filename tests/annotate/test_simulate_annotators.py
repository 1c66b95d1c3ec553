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
