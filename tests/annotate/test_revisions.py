"""Undo of a submit (annotate.services.revisions): the ranking becomes the same annotator's draft again while the
lease lasts and no snapshot was exported since; otherwise it is final. The prompt's queue counts never move."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.urls import reverse
from django.utils import timezone

from annotate.models import Assignment, DatasetSnapshot, Draft, Prompt, Ranking
from annotate.services.errors import TaskConflict, TaskNotFound
from annotate.services.queue import lease_next_task
from annotate.services.revisions import reopen_blocker, reopen_ranking
from annotate.services.submission import submit_ranking

pytestmark = pytest.mark.django_db


def submitted(project, user, **extra):
    lease = lease_next_task(annotator=user, project=project)
    tiers = [[rid] for rid in reversed(lease.display_order)]
    ranking = submit_ranking(annotator=user, assignment_id=lease.pk, tiers=tiers, ratings={str(tiers[0][0]): 6},
                             rationale="why", **extra).ranking
    lease.refresh_from_db()
    return lease, ranking


def test_reopen_turns_the_ranking_into_the_draft_and_keeps_the_counts(make_project, alice):
    project = make_project(prompts=2, members=[alice])
    lease, ranking = submitted(project, alice)
    before = Prompt.objects.values_list("num_rankings", "open_from").get(pk=lease.prompt_id)
    assert before[0] == 1
    draft = reopen_ranking(annotator=alice, assignment_id=lease.pk)
    lease.refresh_from_db()
    assert lease.state == Assignment.State.LEASED and lease.finished_at is None
    assert not Ranking.objects.filter(pk=ranking.pk).exists()
    assert draft.state["tiers"] == ranking.tiers and draft.state["ratings"] == ranking.ratings
    assert draft.state["rationale"] == "why" and draft.revision == 1
    after = Prompt.objects.values_list("num_rankings", "open_from").get(pk=lease.prompt_id)
    assert after[0] == 0 and after[1] is not None and after[1] >= timezone.now()  # held by the live lease
    entry = LogEntry.objects.get(object_id=str(ranking.pk))
    assert entry.action_flag == DELETION and entry.user_id == alice.pk and '"reopened"' in entry.change_message
    # Submitting again makes a new ranking for the same task.
    again = submit_ranking(annotator=alice, assignment_id=lease.pk, tiers=draft.state["tiers"]).ranking
    assert again.pk != ranking.pk and not Draft.objects.filter(assignment=lease).exists()


def test_reopen_is_refused_after_the_lease_after_an_export_and_for_others(make_project, alice, bob):
    project = make_project(prompts=3, members=[alice, bob])
    lease, _ = submitted(project, alice)
    with pytest.raises(TaskNotFound):
        reopen_ranking(annotator=bob, assignment_id=lease.pk)
    later = lease.lease_expires_at + timedelta(seconds=1)
    assert "ran out" in reopen_blocker(annotator=alice, assignment=lease, now=later)
    with pytest.raises(TaskConflict) as exc:
        reopen_ranking(annotator=alice, assignment_id=lease.pk, now=later)
    assert exc.value.code == "final"

    second, _ = submitted(project, alice)
    DatasetSnapshot.objects.create(project=project, path="/tmp/x", format="jsonl", content_hash="0" * 64)
    with pytest.raises(TaskConflict, match="exported"):
        reopen_ranking(annotator=alice, assignment_id=second.pk)
    assert Ranking.objects.filter(assignment=second).exists()

    third = lease_next_task(annotator=alice, project=project)  # not submitted: nothing to reopen
    with pytest.raises(TaskConflict, match="no submitted ranking"):
        reopen_ranking(annotator=alice, assignment_id=third.pk)


def test_history_page_shows_only_ones_own_rankings_and_reopen_redirects(client, make_project, alice, bob):
    project = make_project(prompts=2, per_prompt=2, members=[alice, bob])
    mine, _ = submitted(project, alice)
    bobs = lease_next_task(annotator=bob, project=project)
    submit_ranking(annotator=bob, assignment_id=bobs.pk, tiers=[bobs.display_order], rationale="BOBS-SECRET")
    client.force_login(alice)
    html = client.get(reverse("annotate:history")).content.decode()
    assert html.count('class="card history-row"') == 1 and "BOBS-SECRET" not in html and "Edit this ranking" in html
    assert client.get(reverse("annotate:history") + "?page=999999999999").status_code == 200
    response = client.post(reverse("annotate:reopen", args=[mine.pk]))
    assert response.status_code == 302 and response["Location"] == reverse("annotate:rank", args=[mine.pk])
    again = client.post(reverse("annotate:reopen", args=[mine.pk]))  # nothing submitted now: back to the history
    assert again.status_code == 302 and again["Location"] == reverse("annotate:history")
    client.force_login(bob)
    assert client.post(reverse("annotate:reopen", args=[mine.pk])).status_code == 404


def test_favicon_and_the_403_page(client, alice):
    icon = client.get("/favicon.ico")
    assert icon.status_code == 301 and icon["Location"].endswith("favicon.svg")
    client.force_login(alice)
    page = client.get("/dashboard/")
    assert page.status_code == 403 and "You may not open this page" in page.content.decode()
