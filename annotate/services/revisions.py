"""Taking back one's own submitted ranking while its lease lasts ("Undo" / "edit my last ranking").

A submitted Ranking is immutable (annotate.models): nothing ever edits its row. What an annotator can do,
right after submitting, is *reopen* it: the ranking goes back to being their draft, they change it and submit
again, which makes a new Ranking. This is allowed only while nothing can have used the ranking yet:

- the assignment's lease would still be live (its expiry, as extended by the autosaves, lies in the future), so
  the reopened task holds exactly the slot the ranking held — the prompt's counts do not move and nobody else
  can have been handed the slot meanwhile;
- no dataset snapshot of the project was exported since the ranking was made (a snapshot on disk, and any
  reward model trained on it, keeps the version it read; it could not be made to agree afterwards);
- it is the annotator's own, human ranking of an assignment of theirs.

In one transaction the Ranking row is deleted, its content becomes the assignment's Draft (same tiers, ratings,
flags, rationale, "all bad" and time spent), and the assignment is leased again until the same expiry. The
reopening is recorded in Django's admin log (a `LogEntry` on the ranking, its content in the message), so an
admin can see what was taken back, by whom and when.
"""

from __future__ import annotations

import json
from datetime import datetime

from django.contrib.admin.models import DELETION, LogEntry
from django.db import transaction
from django.utils import timezone

from annotate.models import Assignment, DatasetSnapshot, Draft, Ranking
from annotate.services.errors import TaskConflict, TaskNotFound
from annotate.services.queue import lock_user


def reopen_blocker(*, annotator, assignment: Assignment, now: datetime | None = None) -> str | None:
    """Why this assignment's ranking cannot be reopened now, or None when it can (no locks: for display)."""
    now = now or timezone.now()
    if assignment.annotator_id != annotator.pk:
        return "This task is not yours."
    if assignment.state != Assignment.State.SUBMITTED:
        return "This task has no submitted ranking."
    if assignment.lease_expires_at <= now:
        return ("The time to change this ranking ran out with your reservation "
                f"(at {timezone.localtime(assignment.lease_expires_at):%H:%M}); it is final now.")
    ranking = Ranking.objects.filter(assignment=assignment).only("pk", "source", "created_at", "prompt_id").first()
    if ranking is None:
        return "This task has no submitted ranking."
    if ranking.source != Ranking.Source.HUMAN:
        return "Only a ranking made on the ranking page can be reopened."
    exported = (
        DatasetSnapshot.objects.filter(project_id=assignment.prompt.project_id, created_at__gte=ranking.created_at)
        .order_by("created_at")
        .first()
    )
    if exported is not None:
        return (f"A dataset of this project was exported at {timezone.localtime(exported.created_at):%H:%M}, "
                "after this ranking; it may hold it, so the ranking is final now.")
    return None


def reopen_ranking(*, annotator, assignment_id: int, now: datetime | None = None) -> Draft:
    """Turn the annotator's submitted ranking of this assignment back into their draft (see the module doc).

    Raises TaskNotFound (no such assignment of theirs) or TaskConflict (code ``final``: the window has passed,
    a snapshot was exported since, or there is nothing to reopen). Returns the new draft."""
    now = now or timezone.now()
    with transaction.atomic():
        lock_user(user=annotator)  # the same lock order as submitting: user, assignment, prompt
        assignment = (
            Assignment.objects.select_for_update(of=("self",))
            .select_related("prompt__project")
            .filter(pk=assignment_id, annotator_id=annotator.pk)
            .first()
        )
        if assignment is None:
            raise TaskNotFound(f"Task {assignment_id} does not exist or is not yours.")
        blocker = reopen_blocker(annotator=annotator, assignment=assignment, now=now)
        if blocker is not None:
            raise TaskConflict(blocker, code="final")
        ranking = Ranking.objects.get(assignment=assignment)
        content = {
            "tiers": ranking.tiers,
            "ratings": ranking.ratings,
            "flags": ranking.flags,
            "rationale": ranking.rationale,
            "all_bad": ranking.all_bad,
            "seconds_spent": ranking.seconds_spent,
        }
        # The lease first, so that the ranking's delete recounts the prompt with the slot held by the lease.
        assignment.state = Assignment.State.LEASED
        assignment.finished_at = None
        assignment.save(update_fields=["state", "finished_at"])
        LogEntry.objects.log_actions(
            user_id=annotator.pk,
            queryset=[ranking],
            action_flag=DELETION,
            change_message=json.dumps(
                {"reopened": {"assignment": assignment.pk, "created_at": ranking.created_at.isoformat(), **content}}
            ),
            single_object=True,
        )
        ranking.delete()
        draft, _ = Draft.objects.update_or_create(
            assignment=assignment, defaults={"state": content, "revision": 1}
        )
    return draft
