"""Submitting a ranking: what is stored, idempotency, validation (nothing written), late submits."""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from annotate.models import Assignment, Draft, Ranking
from annotate.services.errors import TaskConflict, TaskNotFound
from annotate.services.queue import lease_next_task
from annotate.services.submission import skip_task, submit_ranking

pytestmark = pytest.mark.django_db


@pytest.fixture
def leased(make_project, alice):
    project = make_project(prompts=2, members=[alice], guidelines="Be kind.", guidelines_version=3)
    return lease_next_task(annotator=alice, project=project)


def test_submit_stores_the_full_ranking_and_closes_the_task(leased, alice):
    a, b, c, d = leased.display_order
    Draft.objects.create(assignment=leased, state={"rationale": "wip"}, revision=2)
    result = submit_ranking(
        annotator=alice,
        assignment_id=leased.pk,
        tiers=[[c], [a, d], [b]],
        ratings={str(a): 5, c: 7, str(b): None},
        flags={str(b): ["made_up_facts", "unhelpful", "unhelpful"], str(a): []},
        rationale="  C answers the question; B invents a menu.  ",
        all_bad=False,
        seconds_spent=42.5,
    )
    assert result.created
    ranking = result.ranking
    assert ranking.tiers == [[c], [a, d], [b]]
    assert ranking.display_order == leased.display_order
    assert ranking.ratings == {str(a): 5, str(c): 7}
    assert ranking.flags == {str(b): ["made_up_facts", "unhelpful"]}
    assert ranking.rationale == "C answers the question; B invents a menu."
    assert ranking.seconds_spent == 42.5 and ranking.guideline_version == 3
    assert ranking.source == Ranking.Source.HUMAN and ranking.annotator == alice
    assert ranking.prompt_id == leased.prompt_id
    leased.refresh_from_db()
    assert leased.state == Assignment.State.SUBMITTED and leased.finished_at is not None
    assert not Draft.objects.filter(assignment=leased).exists()
    with pytest.raises(ValidationError):
        ranking.save()  # immutable


def test_submit_is_idempotent(leased, alice):
    tiers = [[rid] for rid in reversed(leased.display_order)]
    first = submit_ranking(annotator=alice, assignment_id=leased.pk, tiers=tiers)
    retry = submit_ranking(annotator=alice, assignment_id=leased.pk, tiers=tiers)
    different = submit_ranking(annotator=alice, assignment_id=leased.pk, tiers=[leased.display_order])
    assert first.created and not retry.created and not different.created
    assert first.ranking.pk == retry.ranking.pk == different.ranking.pk
    assert Ranking.objects.count() == 1
    assert Ranking.objects.get().tiers == tiers


def test_seconds_default_to_time_since_the_lease(leased, alice):
    now = leased.leased_at + timedelta(seconds=95)
    result = submit_ranking(annotator=alice, assignment_id=leased.pk, tiers=[leased.display_order], now=now)
    assert result.ranking.seconds_spent == pytest.approx(95)


def _bad_cases(order):
    a, b, c, d = order
    return [
        ("tiers", dict(tiers=[[a], [b], [c]]), "missing"),
        ("tiers", dict(tiers=[[a], [b], [c], [d], [999999]]), "not one of the responses shown"),
        ("tiers", dict(tiers=[[a, b], [b], [c], [d]]), "more than once"),
        ("tiers", dict(tiers=[[a], [], [b, c, d]]), "empty"),
        ("tiers", dict(tiers=[[a], ["b"], [b, c, d]]), "not a response id"),
        ("tiers", dict(tiers=[[a, True], [b, c, d]]), "not a response id"),
        ("tiers", dict(tiers=[a, b, c, d]), "must be a list"),
        ("tiers", dict(tiers=[]), "non-empty list"),
        ("tiers", dict(tiers="abcd"), "non-empty list"),
        ("ratings", dict(ratings={str(a): 8}), "from 1 to 7"),
        ("ratings", dict(ratings={str(a): 0}), "from 1 to 7"),
        ("ratings", dict(ratings={str(a): "5"}), "from 1 to 7"),
        ("ratings", dict(ratings={str(a): 4.5}), "from 1 to 7"),
        ("ratings", dict(ratings={"424242": 4}), "not one of the responses"),
        ("ratings", dict(ratings=[5, 5, 5, 5]), "must be an object"),
        ("flags", dict(flags={str(a): ["rude"]}), "unknown flag 'rude'"),
        ("flags", dict(flags={str(a): "harmful"}), "list of flag keys"),
        ("flags", dict(flags={"x": ["harmful"]}), "not one of the responses"),
        ("rationale", dict(rationale="x" * 5001), "limit is 5000"),
        ("rationale", dict(rationale=["why"]), "must be text"),
        ("all_bad", dict(all_bad="yes"), "true or false"),
        ("seconds_spent", dict(seconds_spent=-1), "0 or more"),
        ("seconds_spent", dict(seconds_spent=float("nan")), "0 or more"),
    ]


@pytest.mark.parametrize("case", range(23))
def test_invalid_submissions_name_the_field_and_write_nothing(leased, alice, case):
    field, overrides, message = _bad_cases(leased.display_order)[case]
    Draft.objects.create(assignment=leased, state={"rationale": "keep me"}, revision=4)
    payload = {"tiers": [[rid] for rid in leased.display_order], **overrides}
    with pytest.raises(ValidationError) as exc:
        submit_ranking(annotator=alice, assignment_id=leased.pk, **payload)
    errors = exc.value.message_dict
    assert field in errors, errors
    assert any(message in m for m in errors[field]), errors
    assert not Ranking.objects.exists()
    leased.refresh_from_db()
    assert leased.state == Assignment.State.LEASED
    assert Draft.objects.get(assignment=leased).state == {"rationale": "keep me"}


def test_all_bad_field_errors_are_reported_together(leased, alice):
    with pytest.raises(ValidationError) as exc:
        submit_ranking(annotator=alice, assignment_id=leased.pk, tiers=[[999999]], ratings={"999999": 9}, flags=[], all_bad=1)
    assert set(exc.value.message_dict) == {"tiers", "ratings", "flags", "all_bad"}


def test_someone_elses_assignment_is_not_found(leased, bob):
    with pytest.raises(TaskNotFound):
        submit_ranking(annotator=bob, assignment_id=leased.pk, tiers=[leased.display_order])
    assert not Ranking.objects.exists()


def test_a_skipped_task_cannot_be_submitted(leased, alice):
    skip_task(annotator=alice, assignment_id=leased.pk, reason="unclear")
    with pytest.raises(TaskConflict) as exc:
        submit_ranking(annotator=alice, assignment_id=leased.pk, tiers=[leased.display_order])
    assert exc.value.code == "skipped"
    assert not Ranking.objects.exists()


def test_late_submit_is_accepted_while_the_slot_is_free(make_project, alice, bob):
    project = make_project(prompts=1, per_prompt=2, lease_minutes=5, members=[alice, bob])
    lease = lease_next_task(annotator=alice, project=project)
    later = timezone.now() + timedelta(minutes=30)
    # bob takes one of the two slots; the other is still free for alice's late ranking
    assert lease_next_task(annotator=bob, project=project, now=later).prompt_id == lease.prompt_id
    result = submit_ranking(annotator=alice, assignment_id=lease.pk, tiers=[lease.display_order], now=later)
    assert result.created


def test_late_submit_is_refused_when_someone_took_the_slot(make_project, alice, bob):
    project = make_project(prompts=1, lease_minutes=5, members=[alice, bob])
    lease = lease_next_task(annotator=alice, project=project)
    Draft.objects.create(assignment=lease, state={"rationale": "mine"}, revision=1)
    later = timezone.now() + timedelta(minutes=30)
    assert lease_next_task(annotator=bob, project=project, now=later).prompt_id == lease.prompt_id
    with pytest.raises(TaskConflict) as exc:
        submit_ranking(annotator=alice, assignment_id=lease.pk, tiers=[lease.display_order], now=later)
    assert exc.value.code == "lease_lost"
    assert not Ranking.objects.exists()
    assert Draft.objects.filter(assignment=lease).exists()  # nothing the annotator did is lost


def test_simulated_source_is_recorded(leased, alice):
    result = submit_ranking(
        annotator=alice, assignment_id=leased.pk, tiers=[leased.display_order], source=Ranking.Source.SIMULATED
    )
    assert result.ranking.source == "simulated"
