"""Demonstrations: leases and overlap, autosave revisions and the stale-draft conflict, idempotent submit,
skip, staff review, and the annotator's history."""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from annotate.models import Demonstration, Project
from annotate.services.demonstrations import (
    StaleDemonstration,
    annotator_demonstrations,
    lease_next_demonstration,
    review_demonstration,
    save_demonstration_draft,
    skip_demonstration,
    starting_responses,
    submit_demonstration,
)
from annotate.services.errors import TaskConflict, TaskNotFound
from annotate.services.queue import lease_next_task

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo_project(make_project, alice, bob, carol):
    return make_project("Demos", prompts=2, members=[alice, bob, carol], task_types=Project.TaskTypes.DEMONSTRATIONS)


def test_ranking_only_projects_offer_no_demonstrations(make_project, alice):
    make_project("Ranks", prompts=2, members=[alice])
    assert lease_next_demonstration(annotator=alice) is None


def test_lease_resumes_and_never_overassigns(demo_project, alice, bob, carol):
    first = lease_next_demonstration(annotator=alice)
    assert first.status == "draft" and first.lease_expires_at > timezone.now()
    assert lease_next_demonstration(annotator=alice).pk == first.pk  # resume, not a second task
    other = lease_next_demonstration(annotator=bob)
    assert other.prompt_id != first.prompt_id  # one annotator per prompt: bob gets the other prompt
    assert lease_next_demonstration(annotator=carol) is None  # both slots held by live leases


def test_overlap_gives_each_annotator_their_own(make_project, alice, bob, carol):
    project = make_project("Overlap", prompts=1, per_prompt=2, members=[alice, bob, carol],
                           task_types=Project.TaskTypes.BOTH)
    a, b = lease_next_demonstration(annotator=alice), lease_next_demonstration(annotator=bob)
    assert a.prompt_id == b.prompt_id and a.pk != b.pk
    assert lease_next_demonstration(annotator=carol) is None
    # A "both" project still hands out ranking tasks, independently of the demonstration leases.
    assert lease_next_task(annotator=carol, project=project) is not None


def test_expired_lease_frees_the_slot_and_late_submit_is_refused(demo_project, alice, bob, carol):
    now = timezone.now()
    lease_next_demonstration(annotator=alice, now=now)
    lease_next_demonstration(annotator=bob, now=now)
    later = now + timedelta(minutes=demo_project.lease_minutes + 1)
    theirs = lease_next_demonstration(annotator=carol, now=later)  # the expired leases count no more
    assert theirs is not None
    submit_demonstration(annotator=carol, demonstration_id=theirs.pk, text="Carol's answer.", now=later)
    owner = Demonstration.objects.get(prompt=theirs.prompt, status="draft")
    with pytest.raises(TaskConflict) as caught:
        submit_demonstration(annotator=owner.annotator, demonstration_id=owner.pk, text="late", now=later)
    assert caught.value.code == "lease_lost"
    # The other expired lease is still honoured: its prompt's slot is free.
    other = Demonstration.objects.exclude(prompt=theirs.prompt).get(status="draft")
    done = submit_demonstration(annotator=other.annotator, demonstration_id=other.pk, text="late but ok", now=later)
    assert done.created


def test_autosave_revisions_and_conflict(demo_project, alice):
    demo = lease_next_demonstration(annotator=alice)
    one = save_demonstration_draft(annotator=alice, demonstration_id=demo.pk, text="Dra", base_revision=0)
    two = save_demonstration_draft(annotator=alice, demonstration_id=demo.pk, text="Draft", base_revision=1)
    assert (one.demonstration.revision, two.demonstration.revision) == (1, 2)
    with pytest.raises(StaleDemonstration) as stale:  # another tab still on revision 1
        save_demonstration_draft(annotator=alice, demonstration_id=demo.pk, text="Other tab", base_revision=1)
    assert stale.value.demonstration.text == "Draft" and stale.value.demonstration.revision == 2
    kept = save_demonstration_draft(annotator=alice, demonstration_id=demo.pk, text="Other tab", base_revision=2)
    assert kept.demonstration.text == "Other tab"
    assert Demonstration.objects.get(pk=demo.pk).text == "Other tab"


def test_draft_validation_names_the_field(demo_project, alice, bob):
    demo = lease_next_demonstration(annotator=alice)
    for kwargs, field in [({"text": 5, "base_revision": 0}, "text"), ({"text": "x" * 20_001, "base_revision": 0}, "text"),
                          ({"text": "ok", "base_revision": -1}, "revision"),
                          ({"text": "ok", "base_revision": 0, "seconds_spent": "a"}, "seconds_spent"),
                          ({"text": "ok", "base_revision": 0, "started_from_id": 10**9}, "started_from")]:
        with pytest.raises(ValidationError) as caught:
            save_demonstration_draft(annotator=alice, demonstration_id=demo.pk, **kwargs)
        assert field in caught.value.message_dict
    assert Demonstration.objects.get(pk=demo.pk).revision == 0  # nothing written
    with pytest.raises(TaskNotFound):
        save_demonstration_draft(annotator=bob, demonstration_id=demo.pk, text="mine now", base_revision=0)


def test_submit_is_idempotent_and_final(demo_project, alice):
    demo = lease_next_demonstration(annotator=alice)
    with pytest.raises(ValidationError) as blank:
        submit_demonstration(annotator=alice, demonstration_id=demo.pk, text="   ")
    assert "text" in blank.value.message_dict
    first = submit_demonstration(annotator=alice, demonstration_id=demo.pk, text="The ideal answer.", seconds_spent=40)
    again = submit_demonstration(annotator=alice, demonstration_id=demo.pk, text="The ideal answer.")
    assert first.created and not again.created and again.demonstration.pk == demo.pk
    assert again.demonstration.status == "submitted" and again.demonstration.seconds_spent == 40
    with pytest.raises(TaskConflict):
        submit_demonstration(annotator=alice, demonstration_id=demo.pk, text="Changed my mind.")
    with pytest.raises(TaskConflict):
        save_demonstration_draft(annotator=alice, demonstration_id=demo.pk, text="more", base_revision=0)
    nxt = lease_next_demonstration(annotator=alice)
    assert nxt is not None and nxt.prompt_id != demo.prompt_id


def test_skip_gives_the_prompt_to_someone_else(make_project, alice, bob):
    make_project("One", prompts=1, members=[alice, bob], task_types=Project.TaskTypes.DEMONSTRATIONS)
    demo = lease_next_demonstration(annotator=alice)
    assert lease_next_demonstration(annotator=bob) is None
    skip_demonstration(annotator=alice, demonstration_id=demo.pk, reason="Not my language")
    skip_demonstration(annotator=alice, demonstration_id=demo.pk)  # a repeat is a no-op
    assert lease_next_demonstration(annotator=alice) is None  # never offered the skipped prompt again
    assert lease_next_demonstration(annotator=bob).prompt_id == demo.prompt_id


def test_review_accept_reject_edit(demo_project, alice, bob, staff):
    demo = lease_next_demonstration(annotator=alice)
    with pytest.raises(TaskConflict):  # a draft is not reviewable
        review_demonstration(reviewer=staff, demonstration_id=demo.pk, action="accept")
    submit_demonstration(annotator=alice, demonstration_id=demo.pk, text="Good answr.")
    with pytest.raises(ValidationError) as no_note:
        review_demonstration(reviewer=staff, demonstration_id=demo.pk, action="reject")
    assert "note" in no_note.value.message_dict
    with pytest.raises(ValidationError):
        review_demonstration(reviewer=staff, demonstration_id=demo.pk, action="approve")
    accepted = review_demonstration(reviewer=staff, demonstration_id=demo.pk, action="accept", text="Good answer.")
    assert accepted.status == "accepted" and accepted.text == "Good answer."
    assert accepted.submitted_text == "Good answr." and accepted.reviewer == staff
    edited = review_demonstration(reviewer=staff, demonstration_id=demo.pk, action="edit", text="Good answer!")
    assert edited.status == "accepted" and edited.text == "Good answer!"

    other = lease_next_demonstration(annotator=bob)
    submit_demonstration(annotator=bob, demonstration_id=other.pk, text="meh")
    rejected = review_demonstration(reviewer=staff, demonstration_id=other.pk, action="reject", note="Too short.")
    assert rejected.status == "rejected" and rejected.review_note == "Too short."
    history = annotator_demonstrations(annotator=bob)
    assert [d.pk for d in history] == [other.pk] and history[0].review_note == "Too short."


def test_rejected_frees_the_slot(make_project, alice, bob, staff):
    make_project("Redo", prompts=1, members=[alice, bob], task_types=Project.TaskTypes.DEMONSTRATIONS)
    demo = lease_next_demonstration(annotator=alice)
    submit_demonstration(annotator=alice, demonstration_id=demo.pk, text="meh")
    assert lease_next_demonstration(annotator=bob) is None
    review_demonstration(reviewer=staff, demonstration_id=demo.pk, action="reject", note="Off topic.")
    assert lease_next_demonstration(annotator=bob).prompt_id == demo.prompt_id


def test_starting_responses_only_where_the_project_allows(make_project, alice):
    project = make_project("Start", prompts=1, k=4, members=[alice], task_types=Project.TaskTypes.DEMONSTRATIONS)
    demo = lease_next_demonstration(annotator=alice)
    assert starting_responses(demonstration=demo) == []
    project.demonstration_start = Project.DemonstrationStart.EDIT_BEST
    project.save()
    demo.refresh_from_db()
    responses = starting_responses(demonstration=demo)
    assert len(responses) == 4 and {r.prompt_id for r in responses} == {demo.prompt_id}
    saved = save_demonstration_draft(annotator=alice, demonstration_id=demo.pk, text=responses[0].text,
                                     base_revision=0, started_from_id=responses[0].pk)
    assert saved.demonstration.started_from_id == responses[0].pk


def test_stats_per_annotator_with_acceptance_counts(make_project, alice, bob, staff, client):
    from django.urls import reverse

    from annotate.services.demonstrations import demonstration_stats

    project = make_project("Stats", prompts=12, members=[alice, bob], task_types=Project.TaskTypes.DEMONSTRATIONS)
    for i in range(11):
        demo = lease_next_demonstration(annotator=alice)
        submit_demonstration(annotator=alice, demonstration_id=demo.pk, text=f"answer {i}", seconds_spent=30)
        review_demonstration(reviewer=staff, demonstration_id=demo.pk, action="accept" if i < 8 else "reject",
                             note="" if i < 8 else "weak")
    demo = lease_next_demonstration(annotator=bob)
    submit_demonstration(annotator=bob, demonstration_id=demo.pk, text="one", seconds_spent=60)
    stats = demonstration_stats(project=project)
    rows = {r["annotator"]: r for r in stats["rows"]}
    assert (rows["alice"]["total"], rows["alice"]["accepted"], rows["alice"]["rejected"]) == (11, 8, 3)
    assert rows["alice"]["per_hour"] == pytest.approx(120) and rows["alice"]["acceptance"] == pytest.approx(8 / 11)
    assert rows["bob"]["pending"] == 1 and rows["bob"]["acceptance"] is None
    assert (stats["accepted"], stats["rejected"], stats["pending"]) == (8, 3, 1)
    client.force_login(staff)
    page = client.get(reverse("training:project_stats", args=[project.pk])).content.decode()
    assert "Demonstrations" in page and "0.73 [" in page and "too few (n = 0)" in page


def test_demonstrations_only_projects_hand_out_no_ranking_tasks(make_project, alice):
    project = make_project("Only demos", prompts=2, k=4, members=[alice], task_types=Project.TaskTypes.DEMONSTRATIONS)
    assert lease_next_task(annotator=alice, project=project) is None
    assert lease_next_task(annotator=alice) is None
    assert lease_next_demonstration(annotator=alice, project=project) is not None


def test_prompt_counts_follow_every_status_change(make_project, alice, bob, staff):
    """Prompt.num_demonstrations (the queue's index) = submitted + accepted, through the services and bulk writes."""
    from annotate.models import Prompt

    project = make_project("Counts", prompts=1, per_prompt=2, members=[alice, bob],
                           task_types=Project.TaskTypes.DEMONSTRATIONS)
    prompt = Prompt.objects.get(project=project)

    def count():
        return Prompt.objects.get(pk=prompt.pk).num_demonstrations

    a = lease_next_demonstration(annotator=alice)
    save_demonstration_draft(annotator=alice, demonstration_id=a.pk, text="x", base_revision=0)
    assert count() == 0
    submit_demonstration(annotator=alice, demonstration_id=a.pk, text="x")
    assert count() == 1
    review_demonstration(reviewer=staff, demonstration_id=a.pk, action="accept")
    assert count() == 1
    review_demonstration(reviewer=staff, demonstration_id=a.pk, action="reject", note="no")
    assert count() == 0
    Demonstration.objects.bulk_create([Demonstration(prompt=prompt, text="imp", status="accepted", source="imported")])
    assert count() == 1
    Demonstration.objects.filter(source="imported").update(status="rejected")
    assert count() == 0
    Demonstration.objects.filter(source="imported").delete()
    b = lease_next_demonstration(annotator=bob)
    submit_demonstration(annotator=bob, demonstration_id=b.pk, text="y")
    assert count() == 1
