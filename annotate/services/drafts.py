"""Autosaved drafts: the partial work on an assignment, restored on reload or on another device.

Two devices must not clobber each other silently, so saves use optimistic concurrency: every save names the
``base_revision`` it was built on (the revision the client loaded or last saved; 0 when there is no draft yet).
If the stored draft has moved on (another device saved meanwhile) the save is refused with `StaleDraft`, which
carries the stored draft; the page then offers "load the other version" or "keep mine" (which re-saves with the
newer revision as its base — an explicit, informed overwrite). One device's own saves never conflict: the page
sends them one at a time, each based on the revision the previous one returned.

Saving also extends a live lease, so an annotator who keeps working never loses their task.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from annotate.models import Assignment, Draft
from annotate.services.errors import TaskConflict, TaskNotFound
from annotate.services.queue import get_assignment, is_lease_live
from annotate.services.validation import clean_draft_state


class StaleDraft(TaskConflict):
    """The draft was saved from elsewhere since the client loaded it."""

    def __init__(self, draft: Draft):
        super().__init__(
            "This task was changed on another device or tab since you opened it. Load that version, or keep "
            "yours to overwrite it.",
            code="stale_draft",
        )
        self.draft = draft


@dataclass(frozen=True)
class DraftSave:
    draft: Draft
    lease_live: bool
    lease_expires_at: datetime


def get_draft(*, annotator, assignment_id: int) -> Draft | None:
    assignment = get_assignment(annotator=annotator, assignment_id=assignment_id)
    return Draft.objects.filter(assignment=assignment).first()


def save_draft(
    *, annotator, assignment_id: int, state: Any, base_revision: Any, now: datetime | None = None
) -> DraftSave:
    """Store the annotator's partial work. Raises ValidationError (bad state or revision), TaskNotFound,
    TaskConflict (task already submitted or skipped) or StaleDraft (saved elsewhere meanwhile)."""
    now = now or timezone.now()
    if isinstance(base_revision, bool) or not isinstance(base_revision, int) or base_revision < 0:
        raise ValidationError({"revision": ["revision must be the draft revision you started from (0 for none)."]})
    with transaction.atomic():
        assignment = (
            Assignment.objects.select_for_update(of=("self",))
            .select_related("prompt__project")
            .filter(pk=assignment_id, annotator_id=annotator.pk)
            .first()
        )
        if assignment is None:
            raise TaskNotFound(f"Task {assignment_id} does not exist or is not yours.")
        if assignment.state in (Assignment.State.SUBMITTED, Assignment.State.SKIPPED):
            raise TaskConflict(
                f"This task was already {assignment.get_state_display().lower()}; there is nothing left to save.",
                code=assignment.state,
            )
        clean = clean_draft_state(state, display_order=assignment.display_order)
        draft = Draft.objects.filter(assignment=assignment).first()
        current = draft.revision if draft is not None else 0
        if base_revision != current:
            if draft is None:  # the client thinks a draft exists; it was discarded (e.g. responses changed)
                draft = Draft(assignment=assignment, state={}, revision=0)
            raise StaleDraft(draft)
        if draft is None:
            draft = Draft(assignment=assignment)
        draft.state = clean
        draft.revision = current + 1
        draft.save()

        live = is_lease_live(assignment=assignment, now=now)
        if live:
            renewed = now + timedelta(minutes=assignment.prompt.project.lease_minutes)
            if renewed > assignment.lease_expires_at:
                assignment.lease_expires_at = renewed
                assignment.save(update_fields=["lease_expires_at"])
    return DraftSave(draft=draft, lease_live=live, lease_expires_at=assignment.lease_expires_at)
