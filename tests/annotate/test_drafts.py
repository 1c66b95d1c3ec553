"""Autosaved drafts: revisions, stale saves from another device, validation, lease renewal."""

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from annotate.models import Draft
from annotate.services.drafts import StaleDraft, get_draft, save_draft
from annotate.services.errors import TaskConflict, TaskNotFound
from annotate.services.queue import lease_next_task
from annotate.services.submission import submit_ranking

pytestmark = pytest.mark.django_db


@pytest.fixture
def leased(make_project, alice):
    project = make_project(prompts=1, lease_minutes=20, members=[alice])
    return lease_next_task(annotator=alice, project=project)


def state_for(assignment, **extra):
    a, b, c, d = assignment.display_order
    return {"tiers": [[b], [a, c], [d]], "ratings": {str(b): 6}, "flags": {str(d): ["harmful"]},
            "rationale": "B is best ", "all_bad": False, "seconds_spent": 12.5, **extra}


def test_save_and_restore(leased, alice):
    assert get_draft(annotator=alice, assignment_id=leased.pk) is None
    saved = save_draft(annotator=alice, assignment_id=leased.pk, state=state_for(leased), base_revision=0)
    assert saved.draft.revision == 1 and saved.lease_live
    again = save_draft(annotator=alice, assignment_id=leased.pk, state=state_for(leased, rationale="B!"),
                       base_revision=1)
    assert again.draft.revision == 2
    draft = get_draft(annotator=alice, assignment_id=leased.pk)
    assert draft.state["rationale"] == "B!" and draft.state["tiers"] == state_for(leased)["tiers"]
    assert draft.state["seconds_spent"] == 12.5


def test_partial_state_is_fine(leased, alice):
    saved = save_draft(annotator=alice, assignment_id=leased.pk, state={"rationale": "thinking"}, base_revision=0)
    assert saved.draft.state["rationale"] == "thinking" and "tiers" not in saved.draft.state


def test_a_stale_save_from_another_device_is_refused_with_the_stored_draft(leased, alice):
    save_draft(annotator=alice, assignment_id=leased.pk, state=state_for(leased, rationale="laptop"), base_revision=0)
    # The phone loaded the task before the laptop saved: it still thinks revision 0.
    with pytest.raises(StaleDraft) as exc:
        save_draft(annotator=alice, assignment_id=leased.pk, state=state_for(leased, rationale="phone"),
                   base_revision=0)
    assert exc.value.draft.revision == 1 and exc.value.draft.state["rationale"] == "laptop"
    assert Draft.objects.get(assignment=leased).state["rationale"] == "laptop"
    # "Keep mine": an informed overwrite based on the revision the conflict reported.
    kept = save_draft(annotator=alice, assignment_id=leased.pk, state=state_for(leased, rationale="phone"),
                      base_revision=exc.value.draft.revision)
    assert kept.draft.revision == 2 and kept.draft.state["rationale"] == "phone"


@pytest.mark.parametrize(
    "state, field",
    [
        ("not a dict", "state"),
        ({"tierz": []}, "state"),
        ({"tiers": [[999998, 999999]]}, "tiers"),
        ({"ratings": {"999999": 3}}, "ratings"),
        ({"flags": {}, "all_bad": "no"}, "all_bad"),
    ],
)
def test_invalid_drafts_are_refused(leased, alice, state, field):
    with pytest.raises(ValidationError) as exc:
        save_draft(annotator=alice, assignment_id=leased.pk, state=state, base_revision=0)
    assert field in exc.value.message_dict
    assert not Draft.objects.exists()


@pytest.mark.parametrize("revision", [None, -1, "1", True])
def test_the_revision_must_be_given(leased, alice, revision):
    with pytest.raises(ValidationError) as exc:
        save_draft(annotator=alice, assignment_id=leased.pk, state={}, base_revision=revision)
    assert "revision" in exc.value.message_dict


def test_only_the_owner_can_save_or_read(leased, bob):
    with pytest.raises(TaskNotFound):
        save_draft(annotator=bob, assignment_id=leased.pk, state={}, base_revision=0)
    with pytest.raises(TaskNotFound):
        get_draft(annotator=bob, assignment_id=leased.pk)


def test_no_draft_after_submit(leased, alice):
    submit_ranking(annotator=alice, assignment_id=leased.pk, tiers=[leased.display_order])
    with pytest.raises(TaskConflict) as exc:
        save_draft(annotator=alice, assignment_id=leased.pk, state={}, base_revision=0)
    assert exc.value.code == "submitted"


def test_saving_extends_a_live_lease(leased, alice):
    soon = leased.lease_expires_at - timedelta(minutes=1)
    saved = save_draft(annotator=alice, assignment_id=leased.pk, state={}, base_revision=0, now=soon)
    assert saved.lease_live and saved.lease_expires_at == soon + timedelta(minutes=20)
    leased.refresh_from_db()
    assert leased.lease_expires_at == soon + timedelta(minutes=20)


def test_saving_after_expiry_keeps_the_work_but_does_not_revive_the_lease(leased, alice):
    later = timezone.now() + timedelta(hours=1)
    saved = save_draft(annotator=alice, assignment_id=leased.pk, state={"rationale": "x"}, base_revision=0, now=later)
    assert not saved.lease_live and saved.draft.revision == 1
    leased.refresh_from_db()
    assert leased.lease_expires_at < later
