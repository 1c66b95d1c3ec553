"""Many annotators at once: no prompt over-assigned, no ranking lost, none duplicated.

PostgreSQL: threads, each with its own connection, against the test database (row locks, SKIP LOCKED).
SQLite: the same workload on a file copy of the test database in WAL mode, each thread with its own connection,
so BEGIN IMMEDIATE really serialises separate connections (the in-memory test database cannot show that).
"""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import threading
import time
import traceback
from collections import Counter

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, connections
from django.utils import timezone

from annotate.models import Assignment, Project, Prompt, Ranking
from annotate.services.queue import annotate_prompt_counts, lease_next_task
from annotate.services.submission import submit_ranking


@contextlib.contextmanager
def using_database(settings_dict: dict | None):
    """In this thread, point the default connection at another database (None: leave it as it is)."""
    if settings_dict is None:
        try:
            yield
        finally:
            connection.close()
        return
    from django.db.backends.sqlite3.base import DatabaseWrapper

    original = connections["default"]
    connections["default"] = DatabaseWrapper(dict(settings_dict), "default")
    try:
        yield
    finally:
        connections["default"].close()
        connections["default"] = original


def run_threads(target, args_list, *, timeout: float = 120) -> list[str]:
    errors: list[str] = []
    barrier = threading.Barrier(len(args_list))

    def wrapper(*args):
        try:
            target(barrier, *args)
        except Exception:  # reported to the test, which fails listing them
            errors.append(traceback.format_exc())
            barrier.abort()  # a thread that fails before the barrier must not leave the others waiting forever

    threads = [threading.Thread(target=wrapper, args=args, daemon=True) for args in args_list]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a worker thread hung:\n" + "\n".join(errors)
    return errors


def annotate_until_done(barrier, db, user_id, project_id, needed, log, violations):
    with using_database(db):
        user = get_user_model().objects.get(pk=user_id)
        project = Project.objects.get(pk=project_id)
        rng = random.Random(user_id)
        barrier.wait()
        while (assignment := lease_next_task(annotator=user, project=project)) is not None:
            # One statement, one snapshot: rankings + live leases of the prompt right now.
            row = annotate_prompt_counts(Prompt.objects.filter(pk=assignment.prompt_id), now=timezone.now()).get()
            if row.n_rankings + row.n_live_others > needed:
                violations.append((assignment.prompt_id, row.n_rankings, row.n_live_others))
            time.sleep(rng.random() * 0.01)
            tiers = [[rid] for rid in rng.sample(assignment.display_order, len(assignment.display_order))]
            result = submit_ranking(annotator=user, assignment_id=assignment.pk, tiers=tiers)
            log.append((user_id, assignment.prompt_id, result.ranking.pk, result.created))


def check_full_run(*, project, users, prompts: int, needed: int, log, violations, errors):
    assert not errors, "\n".join(errors)
    assert not violations, f"over-assigned (prompt, rankings, live leases): {violations}"
    assert len(log) == prompts * needed
    assert all(created for *_, created in log)
    pairs = Counter((user_id, prompt_id) for user_id, prompt_id, *_ in log)
    assert max(pairs.values()) == 1, "an annotator ranked a prompt twice"
    per_prompt = Counter(
        Ranking.objects.filter(prompt__project=project).values_list("prompt_id", flat=True)
    )
    assert len(per_prompt) == prompts and set(per_prompt.values()) == {needed}, per_prompt
    assert Ranking.objects.count() == len(log)  # none lost, none duplicated
    assert set(Ranking.objects.values_list("pk", flat=True)) == {ranking_id for _, _, ranking_id, _ in log}
    assert not Assignment.objects.filter(state=Assignment.State.LEASED).exists()
    assert len({user_id for user_id, *_ in log}) > 1, "work should spread over the annotators"


def lease_once(barrier, db, user_id, project_id, granted):
    with using_database(db):
        user = get_user_model().objects.get(pk=user_id)
        project = Project.objects.get(pk=project_id)
        barrier.wait()
        assignment = lease_next_task(annotator=user, project=project)
        granted.append((user_id, assignment.prompt_id if assignment else None))


def submit_same(barrier, db, user_id, assignment_id, tiers, results):
    with using_database(db):
        user = get_user_model().objects.get(pk=user_id)
        barrier.wait()
        result = submit_ranking(annotator=user, assignment_id=assignment_id, tiers=tiers)
        results.append((result.ranking.pk, result.created))


def setup_project(make_user, make_project, *, annotators: int, prompts: int, needed: int):
    users = [make_user(f"worker-{i}") for i in range(annotators)]
    project = make_project("Concurrent", prompts=prompts, per_prompt=needed, members=users)
    return users, project


# --- PostgreSQL ------------------------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgres_many_annotators_rank_everything_exactly_once(postgres_only, make_user, make_project):
    prompts, needed = 24, 3
    users, project = setup_project(make_user, make_project, annotators=12, prompts=prompts, needed=needed)
    log, violations = [], []
    errors = run_threads(annotate_until_done, [(None, u.pk, project.pk, needed, log, violations) for u in users])
    check_full_run(project=project, users=users, prompts=prompts, needed=needed, log=log, violations=violations,
                   errors=errors)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgres_a_burst_of_leases_fills_every_slot_once(postgres_only, make_user, make_project):
    users, project = setup_project(make_user, make_project, annotators=10, prompts=3, needed=2)
    granted = []
    errors = run_threads(lease_once, [(None, u.pk, project.pk, granted) for u in users])
    assert not errors, "\n".join(errors)
    per_prompt = Counter(prompt_id for _, prompt_id in granted if prompt_id is not None)
    # Exactly the 6 open slots were leased (nobody was told "no work" while a slot was free), 2 per prompt.
    assert sorted(per_prompt.values()) == [2, 2, 2]
    assert sum(1 for _, prompt_id in granted if prompt_id is None) == 4


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgres_concurrent_double_submit_makes_one_ranking(postgres_only, make_user, make_project):
    users, project = setup_project(make_user, make_project, annotators=1, prompts=1, needed=1)
    assignment = lease_next_task(annotator=users[0], project=project)
    tiers = [[rid] for rid in assignment.display_order]
    results = []
    errors = run_threads(submit_same, [(None, users[0].pk, assignment.pk, tiers, results) for _ in range(8)])
    assert not errors, "\n".join(errors)
    assert len({pk for pk, _ in results}) == 1 and sum(created for _, created in results) == 1
    assert Ranking.objects.count() == 1


# --- SQLite ------------------------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_file_db(tmp_path):
    """A file copy (WAL) of the SQLite test database, for tests whose threads need separate connections."""
    if connection.vendor != "sqlite":
        pytest.skip("SQLite variant; the PostgreSQL pass runs the PostgreSQL tests")

    def snapshot() -> dict:
        path = tmp_path / "queue.sqlite3"
        with connection.cursor() as cursor:
            cursor.execute("VACUUM INTO %s", [str(path)])
        # Switch the copy to WAL once, here, as a real database is switched by its first connection: threads
        # that all connect at once and each run `PRAGMA journal_mode=WAL` on a fresh file can get "database is
        # locked" from the switch itself (busy timeout or not; seen in about 7 % of tries with 8 threads).
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("PRAGMA journal_mode=WAL")
        return {**connection.settings_dict, "NAME": str(path)}

    return snapshot


@pytest.mark.django_db(transaction=True)
def test_sqlite_many_annotators_rank_everything_exactly_once(sqlite_file_db, make_user, make_project):
    prompts, needed = 12, 3
    users, project = setup_project(make_user, make_project, annotators=8, prompts=prompts, needed=needed)
    db = sqlite_file_db()
    log, violations = [], []
    errors = run_threads(annotate_until_done, [(db, u.pk, project.pk, needed, log, violations) for u in users])
    with using_database(db):
        check_full_run(project=project, users=users, prompts=prompts, needed=needed, log=log,
                       violations=violations, errors=errors)


@pytest.mark.django_db(transaction=True)
def test_sqlite_a_burst_of_leases_fills_every_slot_once(sqlite_file_db, make_user, make_project):
    users, project = setup_project(make_user, make_project, annotators=8, prompts=3, needed=2)
    db = sqlite_file_db()
    granted = []
    errors = run_threads(lease_once, [(db, u.pk, project.pk, granted) for u in users])
    assert not errors, "\n".join(errors)
    per_prompt = Counter(prompt_id for _, prompt_id in granted if prompt_id is not None)
    assert sorted(per_prompt.values()) == [2, 2, 2]
    assert sum(1 for _, prompt_id in granted if prompt_id is None) == 2


@pytest.mark.django_db(transaction=True)
def test_sqlite_concurrent_double_submit_makes_one_ranking(sqlite_file_db, make_user, make_project):
    users, project = setup_project(make_user, make_project, annotators=1, prompts=1, needed=1)
    assignment = lease_next_task(annotator=users[0], project=project)
    db = sqlite_file_db()
    tiers = [[rid] for rid in assignment.display_order]
    results = []
    errors = run_threads(submit_same, [(db, users[0].pk, assignment.pk, tiers, results) for _ in range(6)])
    assert not errors, "\n".join(errors)
    assert len({pk for pk, _ in results}) == 1 and sum(created for _, created in results) == 1
    with using_database(db):
        assert Ranking.objects.count() == 1


# --- An import while annotators work ----------------------------------------------------------------------------


def save_drafts_while(barrier, db, user_id, assignment_id, project_id, running, log):
    """Autosave again and again while the import runs; record (started during the import, seconds, prompts seen)."""
    from annotate.services.drafts import save_draft

    with using_database(db):
        user = get_user_model().objects.get(pk=user_id)
        barrier.wait()
        revision = 0
        while running.is_set() or revision == 0:
            during = running.is_set()
            started = time.monotonic()
            revision = save_draft(annotator=user, assignment_id=assignment_id, state={"rationale": f"r{revision}"},
                                  base_revision=revision).draft.revision
            seen = Prompt.objects.filter(project_id=project_id).count()
            log.append((during, time.monotonic() - started, seen))
            time.sleep(0.02)


def import_while(barrier, db, path, project_name, running, summaries):
    from annotate.services.importing import import_file

    with using_database(db):
        barrier.wait()
        try:
            summaries.append(import_file(path=path, project_name=project_name))
        finally:
            running.clear()


def run_import_during_autosave(snapshot, tmp_path, make_user, make_project, *, records: int):
    users, project = setup_project(make_user, make_project, annotators=1, prompts=1, needed=1)
    assignment = lease_next_task(annotator=users[0], project=project)
    db = snapshot() if snapshot else None
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Imported prompt {i}",
                                        "responses": [f"{c} {i}" for c in "abcd"]}) + "\n" for i in range(records)))
    running, log, summaries = threading.Event(), [], []
    running.set()
    errors = run_threads(lambda barrier, kind, *args: (import_while if kind == "import" else save_drafts_while)(
        barrier, *args), [("import", db, path, project.name, running, summaries),
                          ("draft", db, users[0].pk, assignment.pk, project.pk, running, log)])
    assert not errors, "\n".join(errors)
    assert summaries and summaries[0].imported == records
    during = [(seconds, seen) for was_during, seconds, seen in log if was_during]
    # annotators kept saving while the import ran (SQLite: the import's short transactions let them in) …
    assert len(during) >= 3, log
    assert max(seconds for seconds, _ in during) < 5, during
    # … and never saw a partly imported project: the prompts appear all at once
    assert {seen for _, seen in during} <= {1, 1 + records}, during
    with using_database(db):
        assert Prompt.objects.filter(project=project).count() == 1 + records
        assert not Project.objects.filter(name__contains="import in progress").exists()


@pytest.mark.django_db(transaction=True)
def test_sqlite_autosave_goes_on_during_an_import(sqlite_file_db, tmp_path, make_user, make_project):
    run_import_during_autosave(sqlite_file_db, tmp_path, make_user, make_project, records=3000)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgres_autosave_goes_on_during_an_import(postgres_only, tmp_path, make_user, make_project):
    run_import_during_autosave(None, tmp_path, make_user, make_project, records=3000)
