"""The annotation statistics page: progress, throughput, agreement/tau-b/consensus, biases as charts, flagged
responses, policies head to head, and RM checks. Known answers on a hand-made project."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from annotate.models import Assignment, Prompt, Ranking, Response
from annotate.services import project_stats
from tests.training.conftest import make_ranking
from training import jobs
from training.models import Job

pytestmark = pytest.mark.django_db


def test_progress_by_round_counts_prompts_ready_and_rankings_capped_per_prompt(world):
    project = world["project"]
    # Round 1: 3 prompts with 4 responses; 2 rankings needed each; prompt 0 and 1 have 2, prompt 2 none.
    rows = project_stats.progress_by_round(project=project)
    assert rows == [{"round": 1, "prompts": 3, "ready": 3, "needed": 6, "done": 4, "rankings": 4, "complete": 2,
                     "percent": 67}]
    # A third ranking of a full prompt does not count towards progress; a prompt short of K is not ready.
    extra = Prompt.objects.create(project=project, text="Short of responses", round=2)
    Response.objects.create(prompt=extra, text="only one")
    prompt, ids = world["prompts"][0]
    make_ranking(prompt=prompt, annotator=world["ann1"], tiers=[[i] for i in ids])
    rows = project_stats.progress_by_round(project=project)
    assert rows[0]["done"] == 4 and rows[0]["rankings"] == 5
    assert rows[1] == {"round": 2, "prompts": 1, "ready": 0, "needed": 0, "done": 0, "rankings": 0, "complete": 0,
                       "percent": 0}


def test_throughput_per_annotator(world):
    ann2 = world["ann2"]
    old = Ranking.objects.filter(annotator=ann2).order_by("pk").first()
    Ranking.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=3), seconds_spent=90)
    prompt = world["prompts"][2][0]
    Assignment.objects.create(prompt=prompt, annotator=ann2, state="skipped", leased_at=timezone.now(),
                              lease_expires_at=timezone.now())
    data = project_stats.throughput(project=world["project"])
    rows = {row["annotator"]: row for row in data["rows"]}
    assert rows["ann1"]["total"] == 2 and rows["ann1"]["day"] == 2 and rows["ann1"]["week"] == 2
    assert rows["ann2"]["total"] == 2 and rows["ann2"]["day"] == 1 and rows["ann2"]["week"] == 2
    assert rows["ann2"]["median_seconds"] == 60 and rows["ann2"]["skips"] == 1
    assert rows["ann1"]["per_hour"] == pytest.approx(3600 / 30)
    assert len(data["days"]) == 14 and rows["ann2"]["daily"][-1] == 1 and rows["ann2"]["daily"][-4] == 1
    assert sum(rows["ann1"]["daily"]) == 2


def test_flagged_responses_and_all_bad(world):
    flagged = project_stats.flagged_responses(project=world["project"])
    first = world["prompts"][0][1][0]
    assert flagged["total"] == 1 and flagged["all_bad"] == 1
    assert flagged["rows"][0]["response"].pk == first
    assert flagged["rows"][0]["flags"] == [("Unhelpful", 1), ("Broken or unreadable text", 1)]
    assert dict(flagged["by_flag"]) == {"Unhelpful": 1, "Broken or unreadable text": 1}


def test_policies_head_to_head_within_a_round(world):
    project = world["project"]
    prompt = Prompt.objects.create(project=project, text="AB prompt", round=2)
    new = [Response.objects.create(prompt=prompt, text=f"new {i}", model_path="/runs/ppo-2/policy", round=2).pk
           for i in range(2)]
    old = [Response.objects.create(prompt=prompt, text=f"old {i}", model_path="/models/sft", round=2).pk
           for i in range(2)]
    # new0 > old0 > new1 > old1: new beats old in 3 of 4 cross pairs.
    make_ranking(prompt=prompt, annotator=world["ann1"], tiers=[[new[0]], [old[0]], [new[1]], [old[1]]])
    rows = project_stats.policy_ab(project=project)
    assert rows == [{"round": 2, "a": "/models/sft", "b": "/runs/ppo-2/policy", "pairs": 4, "a_win_rate": 0.25}]


def test_the_statistics_page_shows_figures_and_chart_data(staff_client, world):
    project = world["project"]
    job = jobs.launch_rm_check(project=project, rm_run=world["rm"])
    Job.objects.filter(pk=job.pk).update(status="succeeded", result={
        "accuracy": 0.625, "pairs": 8, "rankings": 2, "since": "2026-01-01T00:00:00", "by_round": {"1": {
            "pairs": 8, "accuracy": 0.625}}})
    html = staff_client.get(f"/dashboard/projects/{project.pk}/").content.decode()
    data = json.loads(re.search(r'<script type="application/json" id="stats-data">(.*?)</script>', html, re.S)[1])
    quality = project_stats.quality(project=project)
    assert html.count("%") > 5
    assert f'<dd id="overall-agreement">{100 * quality["overall"]["agreement"]:.1f} %</dd>' in html
    assert [label.split(" (n = ")[0] for label in data["consensus"]["labels"]] == ["ann1", "ann2"]  # with their n
    assert data["consensus"]["agreement"] == [a["consensus"]["agreement"] for a in quality["annotators"]]
    assert [p["position"] for p in data["position"]] == [1, 2, 3, 4]
    assert data["length"]["longer_preferred"] == quality["length_bias"]["longer_preferred"]
    assert [a["label"] for a in data["throughput"]["annotators"]] == ["ann1", "ann2"]
    for canvas in ("chart-throughput", "chart-consensus", "chart-position", "chart-length"):
        assert f'id="{canvas}"' in html
    assert "62.5 %" in html  # the RM check
    assert "Broken or unreadable text" in html  # flagged
    assert "67 %" in html  # progress


def test_known_agreement_figures(world):
    """ann1 and ann2 share prompts 0 and 1. Both rank prompt 0 longest first (6 agreeing pairs, tau-b +1); on
    prompt 1 ann2 ranks shortest first (6 disagreeing pairs, tau-b −1): agreement 0.5, mean tau-b 0. Longer
    responses win 6 + 6 + 6 of the 24 strict pairs, shorter ones 6."""
    quality = project_stats.quality(project=world["project"])
    assert quality["overall"]["agreement"] == 0.5 and quality["overall"]["tau_b"] == 0.0
    assert quality["length_bias"]["longer_preferred"] == 0.75


def test_project_list(staff_client, world):
    html = staff_client.get("/dashboard/projects/").content.decode()
    assert f'/dashboard/projects/{world["project"].pk}/' in html and "Reviews" in html
