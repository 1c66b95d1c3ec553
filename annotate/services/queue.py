"""The work queue: which prompt an annotator ranks next, leased so that no prompt is ever over-assigned.

A prompt *needs* ``project.annotators_per_prompt`` rankings. Its open slots are

    needed − rankings − live leases of other annotators

where a lease is live while ``state == leased`` and ``lease_expires_at > now``. An expired lease simply stops
counting, so its slot returns to the pool without any background job.

Concurrency
-----------
Every change to a prompt's slot count (a new lease, a late submit after a lease expired) happens while holding
that prompt's row lock, and the slot count is re-read *after* the lock is taken:

* PostgreSQL: candidates are locked with ``SELECT … FOR NO KEY UPDATE SKIP LOCKED`` so concurrent annotators
  fan out over different prompts instead of queueing on one (NO KEY: inserting rankings and assignments that
  reference the prompt is not blocked by the lock, only other leases of it are). When every remaining candidate is locked by someone else
  the annotator waits for one (plain ``FOR UPDATE``) rather than being told there is no work. Under READ
  COMMITTED the recount after the lock sees every lease committed before the lock was granted; it is one
  statement, so a submit committing meanwhile (a lease becoming a ranking) is counted once, not zero times.
* SQLite: the settings open every transaction with ``BEGIN IMMEDIATE``, so the whole lease transaction is
  serialised (``select_for_update`` is a no-op there) and the recount is trivially exact.

An annotator's own requests are serialised by locking their user row first (two tabs asking at once get the
same task). Lock order everywhere: user → assignment → prompt.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import Count, Exists, IntegerField, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotate.models import Assignment, Draft, Project, Prompt, Ranking, Response, refresh_queue_fields
from annotate.services.errors import TaskNotFound

LEASED = Assignment.State.LEASED
FINISHED_STATES = (Assignment.State.SUBMITTED, Assignment.State.SKIPPED)


# --- small query helpers ---------------------------------------------------------------------------------


def live_lease_q(*, now: datetime, prefix: str = "") -> Q:
    """Q for live leases; ``prefix`` lets it be used across a relation (``"assignments__"``)."""
    return Q(**{f"{prefix}state": LEASED, f"{prefix}lease_expires_at__gt": now})


def is_lease_live(*, assignment: Assignment, now: datetime | None = None) -> bool:
    now = now or timezone.now()
    return assignment.state == LEASED and assignment.lease_expires_at > now


def _count_subquery(model, *, now: datetime | None = None, exclude_annotator=None, live_only: bool = False):
    qs = model.objects.filter(prompt=OuterRef("pk"))
    if live_only:
        qs = qs.filter(live_lease_q(now=now))
    if exclude_annotator is not None:
        qs = qs.exclude(annotator=exclude_annotator)
    counted = qs.order_by().values("prompt").annotate(n=Count("pk")).values("n")
    return Coalesce(Subquery(counted, output_field=IntegerField()), Value(0))


def annotate_prompt_counts(qs: QuerySet[Prompt], *, now: datetime, annotator=None) -> QuerySet[Prompt]:
    """Add ``n_responses``, ``n_rankings`` and ``n_live_others`` (live leases of annotators other than
    ``annotator``; all live leases when it is None). Scalar subqueries, so the result can be locked FOR UPDATE
    (PostgreSQL refuses FOR UPDATE with GROUP BY)."""
    return qs.annotate(
        n_responses=_count_subquery(Response),
        n_rankings=_count_subquery(Ranking),
        n_live_others=_count_subquery(Assignment, now=now, exclude_annotator=annotator, live_only=True),
    )


def member_project_ids(*, annotator, project: Project | None = None) -> list[int]:
    """The projects the annotator may take work from (membership, staff included), narrowed to ``project``."""
    ids = Project.annotators.through.objects.filter(user_id=annotator.pk)
    if project is not None:
        ids = ids.filter(project_id=project.pk)
    return list(ids.values_list("project_id", flat=True))


def candidate_prompts(*, annotator, project_ids: list[int], now: datetime) -> QuerySet[Prompt]:
    """Prompts the annotator could be given now, best first (fewest rankings, oldest round, lowest id).

    Offered: rankable, not complete, not filled by live leases (``open_from`` has passed; see `Prompt`), and not
    already ranked or skipped by this annotator. For one project this walks the ``prompt_queue_order`` index from
    its start, so finding the first candidate costs O(log prompts) plus the rows it passes over: prompts that live
    leases fill and prompts this annotator finished, bounded by the leases out and their own history, not by the
    size of the project. ``open_from`` is a hint that errs towards open; the caller recounts under the lock.
    """
    finished_by_me = Assignment.objects.filter(prompt=OuterRef("pk"), annotator=annotator, state__in=FINISHED_STATES)
    ranked_by_me = Ranking.objects.filter(prompt=OuterRef("pk"), annotator=annotator)
    return (
        Prompt.objects.filter(project_id__in=project_ids, open_from__isnull=False, open_from__lte=now)
        .exclude(Exists(finished_by_me))
        .exclude(Exists(ranked_by_me))
        .order_by("num_rankings", "round", "pk")
    )


def _lock_next_candidate(*, annotator, project_ids: list[int], now: datetime, tried: list[int]) -> Prompt | None:
    """Lock the best candidate nobody else is leasing (``SKIP LOCKED``); when every candidate is locked by an
    annotator being leased right now, wait for one rather than report "no work" while work exists.

    Several projects: each project's head of the queue is read through its own index, and the projects are tried
    in the order of their heads (one ordered scan across projects would sort all their prompts)."""
    if len(project_ids) > 1:
        heads = []
        for project_id in project_ids:
            head = (candidate_prompts(annotator=annotator, project_ids=[project_id], now=now)
                    .exclude(pk__in=tried).values_list("num_rankings", "round", "pk").first())
            if head is not None:
                heads.append((head, project_id))
        project_ids = [project_id for _, project_id in sorted(heads)]
    for wait in (False, True):
        for project_id in project_ids:
            prompt = _first_candidate(annotator_id=annotator.pk, project_id=project_id, now=now, tried=tried,
                                      lock="wait" if wait else "skip_locked")
            if prompt is not None:
                return prompt
    return None


def _first_candidate(*, annotator_id: int, project_id: int, now: datetime, tried: list[int], lock: str) -> Prompt | None:
    """`candidate_prompts` for one project, its first row locked, in plain SQL: this runs on every lease, and
    compiling the ORM query cost more than running it. (The test suite checks both give the same prompt.)"""
    features = connection.features
    lock_sql = ""
    if features.has_select_for_update:
        lock_sql = " FOR NO KEY UPDATE OF p" if features.has_select_for_no_key_update else " FOR UPDATE OF p"
        if lock == "skip_locked":
            lock_sql += " SKIP LOCKED"
    not_tried = f"AND p.id NOT IN ({', '.join(['%s'] * len(tried))})" if tried else ""
    sql = f"""
        SELECT p.id, p.project_id FROM annotate_prompt p
        WHERE p.project_id = %s AND p.open_from IS NOT NULL AND p.open_from <= %s {not_tried}
          AND NOT EXISTS (SELECT 1 FROM annotate_assignment a WHERE a.prompt_id = p.id AND a.annotator_id = %s
                          AND a.state IN (%s, %s))
          AND NOT EXISTS (SELECT 1 FROM annotate_ranking r WHERE r.prompt_id = p.id AND r.annotator_id = %s)
        ORDER BY p.num_rankings, p.round, p.id
        LIMIT 1{lock_sql}"""
    params = [project_id, connection.ops.adapt_datetimefield_value(now), *tried, annotator_id, *FINISHED_STATES,
              annotator_id]
    return next(iter(Prompt.objects.raw(sql, params)), None)


def open_slots(*, prompt: Prompt, annotator, now: datetime) -> int:
    """Rankings the prompt still needs, not counting the annotator's own lease. Read fresh from the database;
    call it while holding the prompt's row lock.

    One statement, so one snapshot: a concurrent submit turns a live lease into a ranking in one transaction,
    and under READ COMMITTED two separate counts could see the ranking missing in the first and the lease gone
    in the second (the slot counted free twice over, and the prompt over-assigned)."""
    with connection.cursor() as cursor:
        cursor.execute(_OPEN_SLOTS_SQL, [annotator.pk, connection.ops.adapt_datetimefield_value(now), prompt.pk])
        return cursor.fetchone()[0]


# needed − rankings − live leases of others, in one statement (one snapshot); plain SQL for the reason above.
_OPEN_SLOTS_SQL = """
SELECT j.annotators_per_prompt
       - (SELECT COUNT(*) FROM annotate_ranking r WHERE r.prompt_id = p.id)
       - (SELECT COUNT(*) FROM annotate_assignment a WHERE a.prompt_id = p.id AND a.annotator_id <> %s
          AND a.state = 'leased' AND a.lease_expires_at > %s)
FROM annotate_prompt p JOIN annotate_project j ON j.id = p.project_id
WHERE p.id = %s
"""


def lock_prompt(*, prompt_id: int) -> Prompt:
    return Prompt.objects.select_for_update(of=("self",), no_key=True).get(pk=prompt_id)


def lock_user(*, user) -> None:
    """Serialise one annotator's own queue operations (no-op on SQLite, where writes are serialised anyway)."""
    list(get_user_model().objects.select_for_update(no_key=True).filter(pk=user.pk).values_list("pk", flat=True))


# --- display order --------------------------------------------------------------------------------------------


def display_order_for(*, prompt_id: int, annotator_id: int, response_ids: list[int], k_max: int) -> list[int]:
    """The order one annotator sees a prompt's responses in: a shuffle seeded by (prompt, annotator), so it
    differs between annotators (no position bias shared by all) but is reproducible. A prompt with more than
    ``k_max`` responses shows a seeded sample of ``k_max`` of them."""
    rng = random.Random(f"display-order:{prompt_id}:{annotator_id}")
    ids = sorted(response_ids)
    if len(ids) > k_max:
        ids = sorted(rng.sample(ids, k_max))
    rng.shuffle(ids)
    return ids


# --- leasing ----------------------------------------------------------------------------------------------------


def _grant(*, prompt: Prompt, project: Project, annotator, now: datetime) -> Assignment:
    lease_until = now + timedelta(minutes=project.lease_minutes)
    response_ids = list(Response.objects.filter(prompt_id=prompt.pk).values_list("pk", flat=True))
    assignment = Assignment.objects.filter(prompt_id=prompt.pk, annotator=annotator).first()
    if assignment is None:
        order = display_order_for(
            prompt_id=prompt.pk, annotator_id=annotator.pk, response_ids=response_ids, k_max=project.k_max
        )
        assignment = Assignment.objects.create(
            prompt=prompt,
            annotator=annotator,
            state=LEASED,
            display_order=order,
            leased_at=now,
            lease_expires_at=lease_until,
        )
        refresh_queue_fields(prompt_ids=[prompt.pk], now=now)
        return assignment
    # The annotator's own expired lease on this prompt: same row, same display order, so their draft still fits,
    # unless the prompt's responses changed underneath it.
    if not assignment.display_order or not set(assignment.display_order) <= set(response_ids):
        assignment.display_order = display_order_for(
            prompt_id=prompt.pk, annotator_id=annotator.pk, response_ids=response_ids, k_max=project.k_max
        )
        Draft.objects.filter(assignment=assignment).delete()
    assignment.state = LEASED
    assignment.leased_at = now
    assignment.lease_expires_at = lease_until
    assignment.finished_at = None
    assignment.save(update_fields=["state", "display_order", "leased_at", "lease_expires_at", "finished_at"])
    refresh_queue_fields(prompt_ids=[prompt.pk], now=now)
    return assignment


def lease_next_task(*, annotator, project: Project | None = None, now: datetime | None = None) -> Assignment | None:
    """Give the annotator their next task (an Assignment holding a live lease), or None when nothing needs them.

    1. A live lease they already hold (in ``project`` when given) comes back unchanged: resume.
    2. Otherwise their own expired task with a saved draft comes back if its slot is still free (work in
       progress is not thrown away).
    3. Otherwise the best candidate prompt (see `candidate_prompts`) is locked, its open slots recounted under
       the lock, and leased.
    """
    now = now or timezone.now()
    with transaction.atomic():
        lock_user(user=annotator)
        project_ids = member_project_ids(annotator=annotator, project=project)
        if not project_ids:
            return None
        mine = Assignment.objects.filter(annotator=annotator, prompt__project_id__in=project_ids)

        # 1. resume a live lease
        live = mine.filter(live_lease_q(now=now)).order_by("leased_at", "pk").first()
        if live is not None:
            return live
        # Own leases that ran out are marked so in the admin; counting never relied on it.
        Assignment.objects.filter(annotator=annotator, state=LEASED, lease_expires_at__lte=now).update(
            state=Assignment.State.EXPIRED
        )
        # A demonstrations-only project hands out no ranking tasks (annotate.services.demonstrations leases those).
        projects = {p.pk: p for p in Project.objects.filter(pk__in=project_ids) if p.wants_rankings}
        project_ids = [pid for pid in project_ids if pid in projects]
        if not project_ids:
            return None

        # 2. resume expired work in progress
        in_progress = mine.filter(state=Assignment.State.EXPIRED, draft__isnull=False,
                                  prompt__project_id__in=project_ids).order_by("leased_at", "pk")
        for assignment in in_progress:
            prompt = lock_prompt(prompt_id=assignment.prompt_id)
            if open_slots(prompt=prompt, annotator=annotator, now=now) > 0:
                return _grant(prompt=prompt, project=projects[prompt.project_id], annotator=annotator, now=now)

        # 3. the best candidate that still has a slot once locked
        tried: list[int] = []
        while True:
            prompt = _lock_next_candidate(annotator=annotator, project_ids=project_ids, now=now, tried=tried)
            if prompt is None:
                return None
            if open_slots(prompt=prompt, annotator=annotator, now=now) > 0:
                return _grant(prompt=prompt, project=projects[prompt.project_id], annotator=annotator, now=now)
            # Its hint was stale (a lease renewed by autosaves, a late submit): recount it so the index is right.
            refresh_queue_fields(prompt_ids=[prompt.pk], now=now)
            tried.append(prompt.pk)


def get_assignment(*, annotator, assignment_id: int, with_draft: bool = False) -> Assignment:
    """The annotator's own assignment (its prompt and project, and its draft with `with_draft`, in the same
    query); anybody else's (or a missing one) is `TaskNotFound`."""
    related = ("prompt", "prompt__project", "draft") if with_draft else ("prompt", "prompt__project")
    assignment = (
        Assignment.objects.select_related(*related)
        .filter(pk=assignment_id, annotator_id=annotator.pk)
        .first()
    )
    if assignment is None:
        raise TaskNotFound(f"Task {assignment_id} does not exist or is not yours.")
    return assignment


def responses_in_display_order(*, assignment: Assignment) -> list[Response]:
    by_id = Response.objects.in_bulk(assignment.display_order)
    return [by_id[i] for i in assignment.display_order if i in by_id]
