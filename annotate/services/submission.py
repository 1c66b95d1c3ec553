"""Submitting and skipping tasks.

Submission is idempotent: the Ranking hangs off the Assignment by a one-to-one key, and the assignment row is
locked before anything is checked, so a double click or a retried request gets back the Ranking the first
request created. Everything is validated before the first write and written in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotate.models import Assignment, Draft, Ranking, refresh_queue_fields
from annotate.services.errors import TaskConflict, TaskNotFound
from annotate.services.queue import is_lease_live, lock_prompt, lock_user, open_slots
from annotate.services.validation import clean_submission

MAX_SKIP_REASON_CHARS = 1000


@dataclass(frozen=True)
class SubmissionResult:
    ranking: Ranking
    created: bool  # False when this was a retry of an earlier submission


def _lock_own_assignment(*, annotator, assignment_id: int) -> Assignment:
    assignment = (
        Assignment.objects.select_for_update(of=("self",))
        .select_related("prompt__project")
        .filter(pk=assignment_id, annotator_id=annotator.pk)
        .first()
    )
    if assignment is None:
        raise TaskNotFound(f"Task {assignment_id} does not exist or is not yours.")
    return assignment


def _ensure_slot(*, assignment: Assignment, annotator, now: datetime) -> None:
    """A lease that ran out is still honoured if nobody else took the prompt's slot meanwhile."""
    if is_lease_live(assignment=assignment, now=now):
        return
    prompt = lock_prompt(prompt_id=assignment.prompt_id)
    if open_slots(prompt=prompt, annotator=annotator, now=now) <= 0:
        raise TaskConflict(
            "Your reservation of this prompt ran out and other annotators have since taken the rankings it "
            "needed, so this ranking cannot be accepted. Your draft is kept; please take the next task.",
            code="lease_lost",
        )


def submit_ranking(
    *,
    annotator,
    assignment_id: int,
    tiers: Any,
    ratings: Any = None,
    flags: Any = None,
    rationale: Any = "",
    all_bad: Any = False,
    seconds_spent: Any = None,
    source: str = Ranking.Source.HUMAN,
    now: datetime | None = None,
) -> SubmissionResult:
    """Record the annotator's ranking of their assignment.

    ``tiers`` lists response ids best first (a tier of several is a tie) and must be a partition of exactly the
    displayed responses; ``ratings`` maps response id → Likert 1–7; ``flags`` maps response id → flag keys from
    `annotate.models.RESPONSE_FLAGS`. ``seconds_spent`` is the client's measure of active time; without it the
    time since the lease was taken is used.

    Raises ValidationError (bad input, nothing written), TaskNotFound (not theirs), TaskConflict (skipped, or the
    lease ran out and the slot was taken).
    """
    now = now or timezone.now()
    with transaction.atomic():
        lock_user(user=annotator)
        assignment = _lock_own_assignment(annotator=annotator, assignment_id=assignment_id)
        if assignment.state == Assignment.State.SUBMITTED:
            existing = Ranking.objects.filter(assignment=assignment).first()
            if existing is not None:
                return SubmissionResult(ranking=existing, created=False)
        if assignment.state == Assignment.State.SKIPPED:
            raise TaskConflict("You skipped this prompt; a skipped task cannot be submitted.", code="skipped")

        payload = clean_submission(
            display_order=assignment.display_order,
            tiers=tiers,
            ratings=ratings,
            flags=flags,
            rationale=rationale,
            all_bad=all_bad,
            seconds_spent=seconds_spent,
        )
        _ensure_slot(assignment=assignment, annotator=annotator, now=now)

        seconds = payload.seconds_spent
        if seconds is None:
            seconds = max(0.0, (now - assignment.leased_at).total_seconds())
        # The assignment is marked first so that the ranking's insert recounts the prompt's queue fields with
        # the lease already turned into a ranking (counted once, not twice).
        assignment.state = Assignment.State.SUBMITTED
        assignment.finished_at = now
        assignment.save(update_fields=["state", "finished_at"])
        try:
            with transaction.atomic():
                ranking = Ranking.objects.create(
                    prompt_id=assignment.prompt_id,
                    assignment=assignment,
                    annotator=annotator,
                    source=source,
                    tiers=payload.tiers,
                    display_order=list(assignment.display_order),
                    ratings=payload.ratings,
                    flags=payload.flags,
                    rationale=payload.rationale,
                    all_bad=payload.all_bad,
                    seconds_spent=seconds,
                    guideline_version=assignment.prompt.project.guidelines_version,
                )
        except IntegrityError:
            # Only reachable where the assignment lock is not a real lock: someone else's insert won the race.
            ranking = Ranking.objects.get(assignment=assignment)
            return SubmissionResult(ranking=ranking, created=False)
        Draft.objects.filter(assignment=assignment).delete()
    return SubmissionResult(ranking=ranking, created=True)


def skip_task(*, annotator, assignment_id: int, reason: Any, now: datetime | None = None) -> Assignment:
    """Skip a task with a reason; the prompt is never offered to this annotator again. Skipping twice is a no-op.

    Raises ValidationError (no reason), TaskNotFound, TaskConflict (already submitted)."""
    now = now or timezone.now()
    if not isinstance(reason, str) or not reason.strip():
        raise ValidationError({"reason": ["Say why you skip this prompt (it helps fix the data)."]})
    reason = reason.strip()
    if len(reason) > MAX_SKIP_REASON_CHARS:
        raise ValidationError({"reason": [f"The reason is too long ({len(reason)} characters; the limit is "
                                          f"{MAX_SKIP_REASON_CHARS})."]})
    with transaction.atomic():
        lock_user(user=annotator)
        assignment = _lock_own_assignment(annotator=annotator, assignment_id=assignment_id)
        if assignment.state == Assignment.State.SKIPPED:
            return assignment
        if assignment.state == Assignment.State.SUBMITTED:
            raise TaskConflict("This task was already submitted; it cannot be skipped.", code="submitted")
        assignment.state = Assignment.State.SKIPPED
        assignment.skip_reason = reason
        assignment.finished_at = now
        assignment.save(update_fields=["state", "skip_reason", "finished_at"])
        Draft.objects.filter(assignment=assignment).delete()
        refresh_queue_fields(prompt_ids=[assignment.prompt_id], now=now)  # a leased slot is free again
    return assignment
