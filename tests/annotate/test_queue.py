"""The work queue: ordering, overlap, leases and their expiry, skip, membership, display order."""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from annotate.models import Assignment, Draft, Ranking
from annotate.services.errors import TaskConflict
from annotate.services.queue import display_order_for, lease_next_task
from annotate.services.submission import skip_task, submit_ranking

pytestmark = pytest.mark.django_db


def submit_displayed(user, assignment, **extra):
    return submit_ranking(
        annotator=user, assignment_id=assignment.pk, tiers=[[rid] for rid in assignment.display_order], **extra
    )


def test_lease_orders_by_fewest_rankings_then_oldest_round_then_id(make_project, new_prompt, alice, bob, carol):
    project = make_project(prompts=0, per_prompt=2, members=[alice, bob, carol])
    newer_round = new_prompt(project, round=2)
    first = new_prompt(project, round=1)
    second = new_prompt(project, round=1)
    # bob ranks `first` (1 ranking); the others have none.
    lease = lease_next_task(annotator=bob, project=project)
    assert lease.prompt == first  # round 1 before round 2, lower id first
    submit_displayed(bob, lease)

    assert lease_next_task(annotator=alice, project=project).prompt == second  # 0 rankings beats 1 ranking
    assert lease_next_task(annotator=carol, project=project).prompt == second  # still needs a second ranking
    # `second` now has 2 live leases (full): the round-2 prompt (0 rankings) comes before `first` (1 ranking).
    dave = type(alice).objects.create_user("dave")
    erin = type(alice).objects.create_user("erin")
    project.annotators.add(dave, erin)
    assert lease_next_task(annotator=dave, project=project).prompt == newer_round
    assert lease_next_task(annotator=erin, project=project).prompt == newer_round
    assert lease_next_task(annotator=alice, project=project).prompt == second  # resumed, not a new lease


def test_overlap_never_leases_more_than_needed(make_project, make_user):
    users = [make_user(f"u{i}") for i in range(7)]
    project = make_project(prompts=3, per_prompt=2, members=users)
    leases = [lease_next_task(annotator=u, project=project) for u in users]
    granted = [a for a in leases if a is not None]
    assert len(granted) == 6 and leases[-1] is None
    per_prompt = {}
    for a in granted:
        per_prompt.setdefault(a.prompt_id, set()).add(a.annotator_id)
    assert sorted(len(v) for v in per_prompt.values()) == [2, 2, 2]


def test_a_live_lease_is_resumed_not_duplicated(make_project, alice):
    project = make_project(prompts=3, members=[alice])
    first = lease_next_task(annotator=alice, project=project)
    again = lease_next_task(annotator=alice, project=project)
    anywhere = lease_next_task(annotator=alice)
    assert first.pk == again.pk == anywhere.pk
    assert Assignment.objects.filter(annotator=alice).count() == 1


def test_an_annotator_never_gets_a_prompt_they_ranked(make_project, alice):
    project = make_project(prompts=2, per_prompt=3, members=[alice])
    seen = set()
    while (lease := lease_next_task(annotator=alice, project=project)) is not None:
        assert lease.prompt_id not in seen
        seen.add(lease.prompt_id)
        submit_displayed(alice, lease)
    assert len(seen) == 2 and Ranking.objects.filter(annotator=alice).count() == 2


def test_only_members_get_work_and_the_project_filter_holds(make_project, alice, bob, staff):
    mine = make_project("Mine", prompts=1, members=[alice])
    theirs = make_project("Theirs", prompts=1, members=[bob])
    assert lease_next_task(annotator=alice, project=theirs) is None
    assert lease_next_task(annotator=staff) is None  # staff see everything but rank only where they are members
    lease = lease_next_task(annotator=alice)
    assert lease.prompt.project == mine


def test_expired_lease_returns_to_the_pool(make_project, alice, bob):
    project = make_project(prompts=1, per_prompt=1, lease_minutes=10, members=[alice, bob])
    alice_lease = lease_next_task(annotator=alice, project=project)
    assert lease_next_task(annotator=bob, project=project) is None  # the only slot is leased

    later = timezone.now() + timedelta(minutes=11)
    bob_lease = lease_next_task(annotator=bob, project=project, now=later)
    assert bob_lease is not None and bob_lease.prompt_id == alice_lease.prompt_id
    alice_lease.refresh_from_db()
    assert alice_lease.state == Assignment.State.LEASED  # alice's own row is only marked when she asks again
    assert lease_next_task(annotator=alice, project=project, now=later) is None
    alice_lease.refresh_from_db()
    assert alice_lease.state == Assignment.State.EXPIRED


def test_expired_lease_is_released_to_the_same_annotator_again(make_project, alice):
    project = make_project(prompts=1, lease_minutes=5, members=[alice])
    first = lease_next_task(annotator=alice, project=project)
    later = timezone.now() + timedelta(minutes=6)
    again = lease_next_task(annotator=alice, project=project, now=later)
    assert again.pk == first.pk
    assert again.display_order == first.display_order
    assert again.state == Assignment.State.LEASED and again.lease_expires_at > later


def test_expired_work_in_progress_is_resumed_before_fresh_prompts(make_project, alice):
    project = make_project(prompts=3, lease_minutes=5, members=[alice])
    first = lease_next_task(annotator=alice, project=project)
    Draft.objects.create(assignment=first, state={"rationale": "half done"}, revision=1)
    later = timezone.now() + timedelta(minutes=6)
    again = lease_next_task(annotator=alice, project=project, now=later)
    assert again.pk == first.pk
    assert again.draft.state == {"rationale": "half done"}


def test_expired_work_in_progress_is_not_resumed_when_someone_took_the_slot(make_project, alice, bob):
    project = make_project(prompts=2, lease_minutes=5, members=[alice, bob])
    first = lease_next_task(annotator=alice, project=project)
    Draft.objects.create(assignment=first, state={}, revision=1)
    later = timezone.now() + timedelta(minutes=6)
    bob_lease = lease_next_task(annotator=bob, project=project, now=later)
    assert bob_lease.prompt_id == first.prompt_id
    again = lease_next_task(annotator=alice, project=project, now=later)
    assert again.prompt_id != first.prompt_id


def test_prompts_with_too_few_responses_are_not_offered(make_project, new_prompt, alice):
    project = make_project(prompts=0, members=[alice])
    new_prompt(project, k=3)
    assert lease_next_task(annotator=alice, project=project) is None
    ok = new_prompt(project, k=4)
    assert lease_next_task(annotator=alice, project=project).prompt == ok


def test_display_order_is_a_stored_seeded_shuffle(make_project, new_prompt, alice, bob):
    project = make_project(prompts=0, per_prompt=2, members=[alice, bob])
    prompts = [new_prompt(project, k=9) for _ in range(3)]
    orders = {}
    for user in (alice, bob):
        for _ in prompts:
            lease = lease_next_task(annotator=user, project=project)
            ids = sorted(lease.prompt.responses.values_list("pk", flat=True))
            assert sorted(lease.display_order) == ids
            assert lease.display_order == display_order_for(
                prompt_id=lease.prompt_id, annotator_id=user.pk, response_ids=ids, k_max=project.k_max
            )
            orders[(user.pk, lease.prompt_id)] = lease.display_order
            submit_displayed(user, lease)
    # Shuffled: not every order is the ascending id order, and the two annotators do not share one order.
    assert any(order != sorted(order) for order in orders.values())
    assert any(orders[(alice.pk, p.pk)] != orders[(bob.pk, p.pk)] for p in prompts)


def test_more_responses_than_k_max_shows_a_sample_of_k_max(make_project, new_prompt, alice):
    project = make_project(prompts=0, members=[alice], k_min=4, k_max=5)
    prompt = new_prompt(project, k=8)
    lease = lease_next_task(annotator=alice, project=project)
    assert len(lease.display_order) == 5 and len(set(lease.display_order)) == 5
    assert set(lease.display_order) <= set(prompt.responses.values_list("pk", flat=True))


def test_skip_hides_the_prompt_from_that_annotator_only(make_project, alice, bob):
    project = make_project(prompts=1, per_prompt=2, members=[alice, bob])
    lease = lease_next_task(annotator=alice, project=project)
    skipped = skip_task(annotator=alice, assignment_id=lease.pk, reason="Can't judge Python code")
    assert skipped.state == Assignment.State.SKIPPED and skipped.skip_reason == "Can't judge Python code"
    assert lease_next_task(annotator=alice, project=project) is None
    assert lease_next_task(annotator=alice, project=project, now=timezone.now() + timedelta(days=2)) is None
    assert lease_next_task(annotator=bob, project=project).prompt_id == lease.prompt_id
    # Skipping frees the slot: a third annotator could take it.
    assert skip_task(annotator=alice, assignment_id=lease.pk, reason="again").skip_reason == "Can't judge Python code"


def test_skip_needs_a_reason_and_writes_nothing_without_one(make_project, alice):
    project = make_project(prompts=1, members=[alice])
    lease = lease_next_task(annotator=alice, project=project)
    with pytest.raises(ValidationError) as exc:
        skip_task(annotator=alice, assignment_id=lease.pk, reason="   ")
    assert "reason" in exc.value.message_dict
    lease.refresh_from_db()
    assert lease.state == Assignment.State.LEASED


def test_a_submitted_task_cannot_be_skipped(make_project, alice):
    project = make_project(prompts=1, members=[alice])
    lease = lease_next_task(annotator=alice, project=project)
    submit_displayed(alice, lease)
    with pytest.raises(TaskConflict):
        skip_task(annotator=alice, assignment_id=lease.pk, reason="changed my mind")
