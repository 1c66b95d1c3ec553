"""Demonstrations: annotators write the ideal answer to a prompt (the SFT data), staff review it.

The lifecycle of one `Demonstration` row (the row is its own draft and lease):

    lease → draft (autosaves, each based on the revision it was built on) → submitted → accepted | rejected
                                          ↘ skipped

Leases, overlap and skips work as for rankings (`annotate.services.queue`): a prompt needs
``project.annotators_per_prompt`` demonstrations; its slots are filled by submitted and accepted
demonstrations and by other annotators' drafts whose lease is live; a rejected or skipped one frees its slot.
An annotator gets at most one demonstration per prompt. A lease that ran out is honoured on a later save or
submit while the prompt still has a free slot.

Autosave uses optimistic concurrency exactly like ranking drafts: a save names ``base_revision``; if the row has
moved on (another tab saved) it is refused with `StaleDemonstration`, which carries the stored text, and the
page offers "load the other version" or "keep mine". Submitting is idempotent: a retry with the same text
gets the submitted row back.

Lock order: user → prompt → demonstration (as in the ranking queue).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Exists, F, IntegerField, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotate.models import Demonstration, Project, Prompt, Response
from annotate.services.errors import TaskConflict, TaskNotFound
from annotate.services.queue import lock_prompt, lock_user, member_project_ids

MAX_DEMONSTRATION_CHARS = 20_000
MAX_NOTE_CHARS = 2000
DRAFT = Demonstration.Status.DRAFT
SUBMITTED = Demonstration.Status.SUBMITTED
ACCEPTED = Demonstration.Status.ACCEPTED
REJECTED = Demonstration.Status.REJECTED
SKIPPED = Demonstration.Status.SKIPPED
FILLING = (SUBMITTED, ACCEPTED)  # statuses that fill a prompt's slot for good
REVIEW_ACTIONS = ("accept", "reject", "edit")


class StaleDemonstration(TaskConflict):
    """The draft was saved from another tab or device since the client loaded it."""

    def __init__(self, demonstration: Demonstration):
        super().__init__(
            "This demonstration was changed on another device or tab since you opened it. Load that version, "
            "or keep yours to overwrite it.",
            code="stale_draft",
        )
        self.demonstration = demonstration


@dataclass(frozen=True)
class DemonstrationSave:
    demonstration: Demonstration
    lease_live: bool


@dataclass(frozen=True)
class DemonstrationSubmission:
    demonstration: Demonstration
    created: bool  # False for a retry of an earlier submit


# --- queue --------------------------------------------------------------------------------------------------


def _live_q(*, now: datetime, prefix: str = "") -> Q:
    return Q(**{f"{prefix}status": DRAFT, f"{prefix}lease_expires_at__gt": now})


def _live_others_subquery(*, now: datetime, annotator):
    """Per prompt: other annotators' drafts whose lease is live (they hold a slot for now)."""
    qs = Demonstration.objects.filter(prompt=OuterRef("pk")).filter(_live_q(now=now)).exclude(annotator=annotator)
    counted = qs.order_by().values("prompt").annotate(n=Count("pk")).values("n")
    return Coalesce(Subquery(counted, output_field=IntegerField()), Value(0))


def open_demonstration_slots(*, prompt: Prompt, annotator, now: datetime) -> int:
    """Demonstrations the prompt still needs, not counting the annotator's own draft (call under its lock)."""
    needed = Project.objects.values_list("annotators_per_prompt", flat=True).get(pk=prompt.project_id)
    filled = (Demonstration.objects.filter(prompt_id=prompt.pk)
              .filter(Q(status__in=FILLING) | (_live_q(now=now) & ~Q(annotator=annotator))).count())
    return needed - filled


def candidate_prompts(*, annotator, project: Project, now: datetime) -> QuerySet[Prompt]:
    """Prompts of one project that still need a demonstration and that this annotator has not written, skipped
    or drafted; fewest demonstrations first, oldest round, lowest id. This walks the ``prompt_demo_queue_order``
    index from its start (``num_demonstrations`` counts submitted + accepted ones), so finding the first costs
    the rows it passes over — prompts that live drafts of others fill and this annotator's own — not the size of
    the project. The caller recounts under the prompt's lock."""
    mine = Demonstration.objects.filter(prompt=OuterRef("pk"), annotator=annotator)
    needed = project.annotators_per_prompt
    return (
        Prompt.objects.filter(project_id=project.pk, num_demonstrations__lt=needed)
        .exclude(Exists(mine))
        .alias(n_live=_live_others_subquery(now=now, annotator=annotator))
        .filter(n_live__lt=needed - F("num_demonstrations"))
        .order_by("num_demonstrations", "round", "pk")
    )


def demonstration_project_ids(*, annotator, project: Project | None = None) -> list[int]:
    ids = member_project_ids(annotator=annotator, project=project)
    return list(Project.objects.filter(pk__in=ids, task_types__in=(Project.TaskTypes.DEMONSTRATIONS,
                                                                   Project.TaskTypes.BOTH))
                .values_list("pk", flat=True))


def lease_next_demonstration(*, annotator, project: Project | None = None,
                             now: datetime | None = None) -> Demonstration | None:
    """The annotator's next demonstration task (a draft holding a live lease), or None when nothing needs them.

    1. Their live draft comes back unchanged (resume). 2. Their expired draft comes back when its prompt still
    has a slot (work in progress is not thrown away). 3. Otherwise the best candidate prompt is locked, its
    slots recounted under the lock, and a new draft leased."""
    now = now or timezone.now()
    with transaction.atomic():
        lock_user(user=annotator)
        project_ids = demonstration_project_ids(annotator=annotator, project=project)
        if not project_ids:
            return None
        mine = Demonstration.objects.filter(annotator=annotator, prompt__project_id__in=project_ids, status=DRAFT)
        live = mine.filter(lease_expires_at__gt=now).order_by("leased_at", "pk").first()
        if live is not None:
            return live
        for draft in mine.order_by("leased_at", "pk"):
            prompt = lock_prompt(prompt_id=draft.prompt_id)
            if open_demonstration_slots(prompt=prompt, annotator=annotator, now=now) > 0:
                return _renew(draft, now=now)
        projects = {p.pk: p for p in Project.objects.filter(pk__in=project_ids)}
        tried: list[int] = []
        while True:
            heads = []  # each project's head through its own index; the best of them first
            for project_obj in projects.values():
                head = (candidate_prompts(annotator=annotator, project=project_obj, now=now).exclude(pk__in=tried)
                        .values_list("num_demonstrations", "round", "pk").first())
                if head is not None:
                    heads.append(head)
            if not heads:
                return None
            prompt = lock_prompt(prompt_id=min(heads)[2])
            if open_demonstration_slots(prompt=prompt, annotator=annotator, now=now) > 0:
                project_obj = projects[prompt.project_id]
                return Demonstration.objects.create(
                    prompt=prompt, annotator=annotator, status=DRAFT, leased_at=now,
                    lease_expires_at=now + timedelta(minutes=project_obj.lease_minutes),
                    guideline_version=project_obj.guidelines_version, source=Demonstration.Source.HUMAN,
                )
            tried.append(prompt.pk)


def _renew(demonstration: Demonstration, *, now: datetime) -> Demonstration:
    minutes = demonstration.prompt.project.lease_minutes
    demonstration.leased_at = now
    demonstration.lease_expires_at = now + timedelta(minutes=minutes)
    demonstration.save(update_fields=["leased_at", "lease_expires_at", "updated_at"])
    return demonstration


def get_demonstration(*, annotator, demonstration_id: int) -> Demonstration:
    """The annotator's own demonstration; anybody else's (or a missing one) is `TaskNotFound`."""
    found = (Demonstration.objects.select_related("prompt", "prompt__project", "reviewer")
             .filter(pk=demonstration_id, annotator_id=annotator.pk).first())
    if found is None:
        raise TaskNotFound(f"Demonstration {demonstration_id} does not exist or is not yours.")
    return found


def starting_responses(*, demonstration: Demonstration) -> list[Response]:
    """The sampled responses shown beside the editor (projects that start from them), best-ranked first when
    rankings exist, else in id order."""
    project = demonstration.prompt.project
    if project.demonstration_start != Project.DemonstrationStart.EDIT_BEST:
        return []
    responses = list(Response.objects.filter(prompt_id=demonstration.prompt_id).order_by("pk")[: project.k_max])
    score: dict[int, float] = {}
    for tiers in demonstration.prompt.rankings.values_list("tiers", flat=True):
        for depth, tier in enumerate(tiers):
            for rid in tier:
                score[rid] = score.get(rid, 0.0) + depth
    return sorted(responses, key=lambda r: (score.get(r.pk, float("inf")) if score else 0, r.pk))


# --- the annotator's writes ----------------------------------------------------------------------------------


def _clean_text(text, *, field: str = "text", allow_blank: bool = True) -> str:
    if not isinstance(text, str):
        raise ValidationError({field: ["must be a string."]})
    if len(text) > MAX_DEMONSTRATION_CHARS:
        raise ValidationError({field: [f"at most {MAX_DEMONSTRATION_CHARS} characters (got {len(text)})."]})
    if "\x00" in text:
        raise ValidationError({field: ["must not contain NUL characters."]})
    if not allow_blank and not text.strip():
        raise ValidationError({field: ["write the ideal answer before submitting (it is empty)."]})
    return text


def _clean_seconds(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 7 * 24 * 3600:
        raise ValidationError({"seconds_spent": ["must be a number of seconds ≥ 0."]})
    return float(value)


def _lock_own(*, annotator, demonstration_id: int) -> Demonstration:
    found = (Demonstration.objects.select_for_update(of=("self",)).select_related("prompt__project")
             .filter(pk=demonstration_id, annotator_id=annotator.pk).first())
    if found is None:
        raise TaskNotFound(f"Demonstration {demonstration_id} does not exist or is not yours.")
    return found


def _ensure_slot(demonstration: Demonstration, *, annotator, now: datetime) -> None:
    """A lease that ran out is still honoured while nobody else took the prompt's last slot."""
    if demonstration.lease_expires_at and demonstration.lease_expires_at > now:
        return
    prompt = lock_prompt(prompt_id=demonstration.prompt_id)
    if open_demonstration_slots(prompt=prompt, annotator=annotator, now=now) <= 0:
        raise TaskConflict(
            "Your reservation of this prompt ran out and other annotators have since written the "
            "demonstrations it needed, so this one cannot be accepted. Your text is kept; please take the next task.",
            code="lease_lost",
        )


def _not_draft(demonstration: Demonstration) -> TaskConflict:
    return TaskConflict(
        f"This demonstration was already {demonstration.get_status_display().lower()}; there is nothing left to "
        "save.", code=demonstration.status,
    )


def save_demonstration_draft(*, annotator, demonstration_id: int, text, base_revision,
                             started_from_id: int | None = None, seconds_spent=None,
                             now: datetime | None = None) -> DemonstrationSave:
    """Autosave the text. Raises ValidationError (bad text or revision), TaskNotFound, TaskConflict (already
    submitted / skipped, or the lease lost) or StaleDemonstration (saved elsewhere meanwhile)."""
    now = now or timezone.now()
    if isinstance(base_revision, bool) or not isinstance(base_revision, int) or base_revision < 0:
        raise ValidationError({"revision": ["revision must be the draft revision you started from (0 for none)."]})
    text = _clean_text(text)
    seconds = _clean_seconds(seconds_spent)
    with transaction.atomic():
        lock_user(user=annotator)
        demonstration = _lock_own(annotator=annotator, demonstration_id=demonstration_id)
        if demonstration.status != DRAFT:
            raise _not_draft(demonstration)
        if base_revision != demonstration.revision:
            raise StaleDemonstration(demonstration)
        if started_from_id is not None:
            if not Response.objects.filter(pk=started_from_id, prompt_id=demonstration.prompt_id).exists():
                raise ValidationError({"started_from": ["must be one of this prompt's responses."]})
            demonstration.started_from_id = started_from_id
        live = bool(demonstration.lease_expires_at and demonstration.lease_expires_at > now)
        if not live:
            _ensure_slot(demonstration, annotator=annotator, now=now)
        demonstration.text = text
        demonstration.revision += 1
        if seconds is not None:
            demonstration.seconds_spent = seconds
        renewed = now + timedelta(minutes=demonstration.prompt.project.lease_minutes)
        if demonstration.lease_expires_at is None or renewed > demonstration.lease_expires_at:
            demonstration.lease_expires_at = renewed
        demonstration.save()
    return DemonstrationSave(demonstration=demonstration, lease_live=live)


def submit_demonstration(*, annotator, demonstration_id: int, text, seconds_spent=None,
                         source: str = Demonstration.Source.HUMAN,
                         now: datetime | None = None) -> DemonstrationSubmission:
    """Submit the ideal answer for review. Idempotent: a retry with the same text returns the submitted row
    (created=False); a different text after submitting is a TaskConflict, as is a skipped task. `source` is
    "simulated" for the simulated annotators (`annotate.services.simulation`), as for their rankings."""
    if source not in (Demonstration.Source.HUMAN, Demonstration.Source.SIMULATED):
        raise ValidationError({"source": ["must be human or simulated."]})
    now = now or timezone.now()
    text = _clean_text(text, allow_blank=False)
    seconds = _clean_seconds(seconds_spent)
    with transaction.atomic():
        lock_user(user=annotator)
        demonstration = _lock_own(annotator=annotator, demonstration_id=demonstration_id)
        if demonstration.status in (SUBMITTED, ACCEPTED, REJECTED):
            if demonstration.submitted_text == text:
                return DemonstrationSubmission(demonstration=demonstration, created=False)
            raise TaskConflict("This demonstration was already submitted; a submitted answer cannot be changed.",
                               code="already_submitted")
        if demonstration.status == SKIPPED:
            raise TaskConflict("This task was skipped; it cannot be submitted.", code="skipped")
        _ensure_slot(demonstration, annotator=annotator, now=now)
        demonstration.text = demonstration.submitted_text = text
        demonstration.status = SUBMITTED
        demonstration.source = source
        demonstration.submitted_at = now
        if seconds is not None:
            demonstration.seconds_spent = seconds
        demonstration.save()
    return DemonstrationSubmission(demonstration=demonstration, created=True)


def skip_demonstration(*, annotator, demonstration_id: int, reason: str = "",
                       now: datetime | None = None) -> Demonstration:
    """Give the prompt back (its slot goes to someone else); repeat skips are no-ops."""
    if not isinstance(reason, str) or len(reason) > MAX_NOTE_CHARS:
        raise ValidationError({"reason": [f"must be a string of at most {MAX_NOTE_CHARS} characters."]})
    with transaction.atomic():
        lock_user(user=annotator)
        demonstration = _lock_own(annotator=annotator, demonstration_id=demonstration_id)
        if demonstration.status == SKIPPED:
            return demonstration
        if demonstration.status != DRAFT:
            raise _not_draft(demonstration)
        demonstration.status = SKIPPED
        demonstration.skip_reason = reason.strip()
        demonstration.lease_expires_at = now or timezone.now()
        demonstration.save()
    return demonstration


# --- staff review -------------------------------------------------------------------------------------------


def review_queue(*, project: Project, status: str = SUBMITTED) -> QuerySet[Demonstration]:
    return (Demonstration.objects.filter(prompt__project=project, status=status)
            .select_related("prompt", "annotator", "reviewer").order_by("submitted_at", "pk"))


def review_demonstration(*, reviewer, demonstration_id: int, action: str, text=None, note: str = "",
                         now: datetime | None = None) -> Demonstration:
    """Staff review: ``accept`` (optionally with an edited text), ``reject`` (a note is required: the annotator
    sees it in their history), or ``edit`` (change the text, status kept). The author's own text stays in
    ``submitted_text``. Only submitted, accepted or rejected demonstrations can be reviewed."""
    if action not in REVIEW_ACTIONS:
        raise ValidationError({"action": [f"must be one of {', '.join(REVIEW_ACTIONS)}."]})
    if not isinstance(note, str) or len(note) > MAX_NOTE_CHARS:
        raise ValidationError({"note": [f"must be a string of at most {MAX_NOTE_CHARS} characters."]})
    if action == "reject" and not note.strip():
        raise ValidationError({"note": ["say why it is rejected (the annotator sees this note)."]})
    if text is not None:
        text = _clean_text(text, allow_blank=False)
    if action == "edit" and text is None:
        raise ValidationError({"text": ["an edit needs the new text."]})
    with transaction.atomic():
        demonstration = (Demonstration.objects.select_for_update(of=("self",))
                         .filter(pk=demonstration_id).first())
        if demonstration is None:
            raise TaskNotFound(f"Demonstration {demonstration_id} does not exist.")
        if demonstration.status not in (SUBMITTED, ACCEPTED, REJECTED):
            raise TaskConflict(f"Demonstration {demonstration_id} is {demonstration.get_status_display().lower()}; "
                               "only submitted demonstrations can be reviewed.", code=demonstration.status)
        if text is not None:
            demonstration.text = text
        if action == "accept":
            demonstration.status = ACCEPTED
        elif action == "reject":
            demonstration.status = REJECTED
        if note.strip() or action != "edit":
            demonstration.review_note = note.strip()
        demonstration.reviewer = reviewer
        demonstration.reviewed_at = now or timezone.now()
        demonstration.save()
    return demonstration


# --- history -------------------------------------------------------------------------------------------------


def annotator_demonstrations(*, annotator, limit: int = 200) -> list[Demonstration]:
    """The annotator's demonstrations, newest first (drafts included, so work in progress can be resumed)."""
    return list(Demonstration.objects.filter(annotator=annotator).exclude(status=SKIPPED)
                .select_related("prompt__project").order_by("-updated_at", "-pk")[:limit])


# --- statistics ------------------------------------------------------------------------------------------------


def demonstration_stats(*, project: Project, now: datetime | None = None) -> dict:
    """Per annotator: demonstrations submitted (total, 7 days), median seconds each and demonstrations per hour
    of writing, accepted / rejected / awaiting review, and the counts behind the acceptance rate (accepted of
    reviewed; the page gives it with n and a Wilson interval, or "too few"). Imported ones form their own row."""
    import statistics

    now = now or timezone.now()
    rows: dict = {}
    names: dict = {}
    reviewed = (SUBMITTED, ACCEPTED, REJECTED)
    for annotator_id, username, source, status, submitted_at, spent in (
        Demonstration.objects.filter(prompt__project=project, status__in=reviewed)
        .values_list("annotator_id", "annotator__username", "source", "status", "submitted_at", "seconds_spent")
    ):
        key = annotator_id if annotator_id is not None else f"({source})"
        names[key] = username or f"({source})"
        row = rows.setdefault(key, {"total": 0, "week": 0, "accepted": 0, "rejected": 0, "pending": 0,
                                    "seconds": []})
        row["total"] += 1
        row["week"] += bool(submitted_at and submitted_at >= now - timedelta(days=7))
        row[{SUBMITTED: "pending", ACCEPTED: "accepted", REJECTED: "rejected"}[status]] += 1
        if spent:
            row["seconds"].append(spent)
    out = []
    for key, row in rows.items():
        spent = row.pop("seconds")
        out.append({
            "annotator": names[key], **row,
            "median_seconds": statistics.median(spent) if spent else None,
            "per_hour": 3600 * len(spent) / sum(spent) if spent and sum(spent) > 0 else None,
            "review": {"agree": row["accepted"], "disagree": row["rejected"]},
            "acceptance": row["accepted"] / (row["accepted"] + row["rejected"])
            if row["accepted"] + row["rejected"] else None,
        })
    out.sort(key=lambda r: (-r["total"], r["annotator"]))
    accepted = sum(r["accepted"] for r in out)
    rejected = sum(r["rejected"] for r in out)
    return {
        "rows": out,
        "enabled": project.wants_demonstrations or bool(out),
        "total": sum(r["total"] for r in out), "accepted": accepted, "rejected": rejected,
        "pending": sum(r["pending"] for r in out),
        "review": {"agree": accepted, "disagree": rejected},
        "acceptance": accepted / (accepted + rejected) if accepted + rejected else None,
        "drafts": Demonstration.objects.filter(prompt__project=project, status=DRAFT).count(),
    }
