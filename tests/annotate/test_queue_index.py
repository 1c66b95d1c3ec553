"""The queue's stored index (Prompt.num_responses, num_rankings, open_from): kept exact through leases,
submits, skips, expiry, imports and project changes, and read through an index, not a scan of every prompt."""

import random
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from annotate.models import ALWAYS_OPEN, Assignment, Prompt, Ranking, Response
from annotate.services.drafts import save_draft
from annotate.services.queue import (
    _first_candidate,
    annotate_prompt_counts,
    candidate_prompts,
    lease_next_task,
    open_slots,
)
from annotate.services.submission import skip_task, submit_ranking

pytestmark = pytest.mark.django_db


def assert_index_holds(project, *, now):
    """For every prompt: the stored counts equal the rows; open_from is NULL exactly when the prompt is complete
    or unrankable; a prompt with a free slot now has open_from <= now (the hint may err towards open, never
    towards closed)."""
    rows = annotate_prompt_counts(Prompt.objects.filter(project=project), now=now)
    for p in rows:
        assert (p.num_responses, p.num_rankings) == (p.n_responses, p.n_rankings), p.pk
        closed = p.n_responses < project.k_min or p.n_rankings >= project.annotators_per_prompt
        assert (p.open_from is None) == closed, p.pk
        if not closed and p.n_rankings + p.n_live_others < project.annotators_per_prompt:
            assert p.open_from <= now, p.pk


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_queue_traffic_keeps_the_index_exact(seed, make_project, make_user):
    rng = random.Random(seed)
    users = [make_user(f"u{seed}-{i}") for i in range(5)]
    project = make_project(prompts=8, per_prompt=2, lease_minutes=10, members=users)
    now = timezone.now()
    for _ in range(60):
        now += timedelta(minutes=rng.choice([0, 1, 4, 11]))  # 11 > lease_minutes: leases run out
        user = rng.choice(users)
        task = lease_next_task(annotator=user, project=project, now=now)
        if task is None:
            continue
        action = rng.random()
        if action < 0.5:
            submit_ranking(annotator=user, assignment_id=task.pk, tiers=[[r] for r in task.display_order], now=now)
        elif action < 0.65:
            skip_task(annotator=user, assignment_id=task.pk, reason="off-topic", now=now)
        elif action < 0.8:
            base = task.draft.revision if hasattr(task, "draft") else 0
            save_draft(annotator=user, assignment_id=task.pk, state={"rationale": "half"}, base_revision=base,
                       now=now)
        # else: abandoned, the lease runs out
        assert_index_holds(project, now=now)
        for someone in users:  # the lease's plain-SQL queries say what the ORM versions say
            orm = candidate_prompts(annotator=someone, project_ids=[project.pk], now=now).first()
            raw = _first_candidate(annotator_id=someone.pk, project_id=project.pk, now=now, tried=[], lock="wait")
            assert (orm and orm.pk) == (raw and raw.pk)
            if orm is not None:
                counted = annotate_prompt_counts(Prompt.objects.filter(pk=orm.pk), now=now, annotator=someone).get()
                assert open_slots(prompt=orm, annotator=someone, now=now) == (
                    project.annotators_per_prompt - counted.n_rankings - counted.n_live_others)
    # Work remains offered exactly while it is needed: once everyone has been served, nothing is open.
    assert Ranking.objects.filter(prompt__project=project).count() <= 8 * 2


def test_responses_added_later_make_a_prompt_rankable(make_project, new_prompt, alice):
    project = make_project(prompts=0, members=[alice])
    prompt = new_prompt(project, k=2)
    assert Prompt.objects.get(pk=prompt.pk).open_from is None
    assert lease_next_task(annotator=alice, project=project) is None
    Response.objects.bulk_create([Response(prompt=prompt, text=f"late {i}") for i in range(2)])
    assert Prompt.objects.get(pk=prompt.pk).open_from == ALWAYS_OPEN
    assert lease_next_task(annotator=alice, project=project).prompt_id == prompt.pk


def test_raising_annotators_per_prompt_reopens_complete_prompts(make_project, alice, bob):
    project = make_project(prompts=1, members=[alice, bob])
    task = lease_next_task(annotator=alice, project=project)
    submit_ranking(annotator=alice, assignment_id=task.pk, tiers=[[r] for r in task.display_order])
    assert lease_next_task(annotator=bob, project=project) is None
    project.annotators_per_prompt = 2
    project.save()
    assert lease_next_task(annotator=bob, project=project).prompt_id == task.prompt_id


def test_a_prompt_full_of_leases_opens_when_the_first_lease_runs_out(make_project, alice, bob, carol):
    project = make_project(prompts=1, per_prompt=2, lease_minutes=10, members=[alice, bob, carol])
    now = timezone.now()
    first = lease_next_task(annotator=alice, project=project, now=now)
    lease_next_task(annotator=bob, project=project, now=now + timedelta(minutes=3))
    assert Prompt.objects.get(pk=first.prompt_id).open_from == first.lease_expires_at
    assert lease_next_task(annotator=carol, project=project, now=now + timedelta(minutes=9)) is None
    took = lease_next_task(annotator=carol, project=project, now=now + timedelta(minutes=11))
    assert took is not None and took.prompt_id == first.prompt_id
    assert Assignment.objects.filter(prompt_id=first.prompt_id, state=Assignment.State.LEASED).count() == 3


def test_a_renewed_lease_leaves_a_stale_hint_that_the_recount_corrects(make_project, alice, bob):
    project = make_project(prompts=1, lease_minutes=10, members=[alice, bob])
    now = timezone.now()
    task = lease_next_task(annotator=alice, project=project, now=now)
    save_draft(annotator=alice, assignment_id=task.pk, state={"rationale": "x"}, base_revision=0,
               now=now + timedelta(minutes=8))  # renewed to now + 18 min; the hint still says now + 10
    assert lease_next_task(annotator=bob, project=project, now=now + timedelta(minutes=11)) is None
    prompt = Prompt.objects.get(pk=task.prompt_id)
    assert prompt.open_from == now + timedelta(minutes=18)  # corrected by the recount under lock


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's plan; PostgreSQL's is measured by the bench")
def test_the_next_prompt_is_found_through_the_queue_index_without_sorting(make_project, alice):
    project = make_project(prompts=3, members=[alice])
    qs = candidate_prompts(annotator=alice, project_ids=[project.pk], now=timezone.now())[:1]
    sql, params = qs.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        plan = " | ".join(str(row[-1]) for row in cursor.fetchall())
    assert "prompt_queue_order" in plan, plan
    assert "TEMP B-TREE" not in plan, plan  # walked in index order, not sorted


def test_project_totals_are_exact_in_a_small_project_and_kept_briefly_in_a_large_one(make_project, alice,
                                                                                       monkeypatch):
    from django.core.cache import cache
    from django.test.utils import CaptureQueriesContext

    from annotate import selectors

    project = make_project(prompts=3, members=[alice])
    task = lease_next_task(annotator=alice, project=project)
    assert selectors.project_progress(project=project, user=alice).rankings_done == 0
    submit_ranking(annotator=alice, assignment_id=task.pk, tiers=[[r] for r in task.display_order])
    assert selectors.project_progress(project=project, user=alice).rankings_done == 1  # small: exact at once

    cache.clear()
    monkeypatch.setattr(selectors, "TOTALS_EXACT_BELOW", 3)  # this project now counts as large
    assert selectors.project_totals(project=project) == {"prompts": 3, "done": 1}
    task = lease_next_task(annotator=alice, project=project)
    submit_ranking(annotator=alice, assignment_id=task.pk, tiers=[[r] for r in task.display_order])
    with CaptureQueriesContext(connection) as queries:
        assert selectors.project_totals(project=project) == {"prompts": 3, "done": 1}  # kept: no pass over prompts
    assert not queries.captured_queries
    cache.clear()  # as when TOTALS_TTL_S runs out
    assert selectors.project_totals(project=project) == {"prompts": 3, "done": 2}
