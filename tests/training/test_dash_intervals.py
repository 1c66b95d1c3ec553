"""Statistics with their sample size and an interval (issue 16, item 10) and a readable RM evaluation (item 9)."""

from __future__ import annotations

import pytest

from training.intervals import proportion_text, wilson_interval
from training.selectors import evaluation_view


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (8, 10, 0.4901625, 0.9433178),  # Wilson 1927; statsmodels proportion_confint(8, 10, method="wilson")
    (0, 10, 0.0, 0.2775328),
    (10, 10, 0.7224672, 1.0),
    (50, 100, 0.4038315, 0.5961685),
])
def test_wilson_known_answers(k, n, low, high):
    assert wilson_interval(k, n) == pytest.approx((low, high), abs=1e-6)


def test_wilson_properties():
    assert wilson_interval(0, 0) is None
    for n in (1, 3, 10, 97):
        for k in range(n + 1):
            low, high = wilson_interval(k, n)
            assert 0 <= low <= k / n <= high <= 1
            wider_low, wider_high = wilson_interval(k * 4, n * 4)  # four times the data: a narrower interval
            assert wider_high - wider_low < high - low


def test_too_few_is_marked_and_enough_gets_an_interval():
    assert proportion_text(0.429, 3) == "too few (n = 3)"
    assert proportion_text(0.8, 10) == "0.80 [0.49, 0.94], n = 10"


def test_rm_evaluation_tables_carry_n_and_interval_and_internals_are_tucked_away():
    view = evaluation_view({"accuracy": 0.75, "pairs": 40, "calibration": {"calibrated_mean": 1.269e-16},
                            "per_annotator": {"a1": {"accuracy": 0.9, "pairs": 20}, "a2": {"accuracy": 1.0, "pairs": 2}},
                            "per_k": {"4": {"accuracy": 0.8, "pairs": 30}}})
    assert not view["rows"]  # no key dump beside the figures
    assert "calibration.calibrated_mean" in [row["name"] for row in view["details"]]
    assert "95 % interval 59.8–85.8 %" in view["rm"]["figures"][0]["note"]
    annotators = next(t for t in view["rm"]["tables"] if t["title"] == "Accuracy per annotator")
    assert annotators["columns"][1].startswith("95 % interval")
    cells = {row["key"]: row["cells"][1] for row in annotators["rows"]}
    assert cells["a2"] == "too few (n = 2)" and cells["a1"] == "69.9–97.2 %"


@pytest.mark.django_db
def test_the_ab_table_names_runs_not_paths(world):
    from training.selectors import policy_ab_rows

    ppo = world["ppo"]
    policy = ppo.outputs["policy"]
    rows = policy_ab_rows([{"round": 2, "a": policy, "b": "/models/org/tiny", "pairs": 12, "a_win_rate": 0.75},
                           {"round": 2, "a": policy, "b": "imported", "pairs": 3, "a_win_rate": 1.0}])
    assert rows[0]["a_label"] == str(ppo) and rows[0]["b_label"] == "org/tiny"
    assert rows[0]["a_win_text"] == "46.8–91.1 %, n = 12" and rows[1]["a_win_text"] == "too few (n = 3)"


def test_agreement_shows_n_and_interval_or_too_few():
    from training.templatetags.dashboard import agreement_interval, pair_interval

    assert agreement_interval({"agree": 2, "disagree": 1}) == "too few (n = 3)"
    assert agreement_interval({"agree": 8, "disagree": 2}) == "0.80 [0.49, 0.94], n = 10"
    assert pair_interval({"agree": 8, "disagree": 2}) == "49.0–94.3 %, n = 10"
    assert pair_interval({"agree": 2, "disagree": 1}) == "too few (n = 3)"
    assert agreement_interval({}) == "too few (n = 0)"


@pytest.mark.django_db
def test_project_stats_page_shows_intervals(staff_client, world):
    html = staff_client.get(f"/dashboard/projects/{world['project'].pk}/").content.decode()
    assert "too few" in html and "95 % interval" in html


@pytest.mark.parametrize(("df", "t"), [(1, 12.706), (2, 4.303), (9, 2.262), (30, 2.042), (40, 2.021), (60, 2.000),
                                       (120, 1.980), (10_000, 1.960)])
def test_student_t_quantiles_known_answers(df, t):
    from training.intervals import t975

    assert t975(df) == pytest.approx(t, abs=1.5e-3)  # t tables (NIST e-Handbook 1.3.6.7.2)


def test_mean_interval_known_answer_and_too_few():
    from training.intervals import mean_interval, mean_text

    # 10 values with mean 0.4 and sd 0.3: 0.4 ± 2.262 · 0.3 / √10 = 0.4 ± 0.2146.
    assert mean_interval(0.4, 0.3, 10) == pytest.approx((0.18541, 0.61459), abs=1e-4)
    assert mean_text(0.4, 0.3, 10) == "0.400 [0.19, 0.61], n = 10"
    assert mean_text(0.9, 0.5, 10) == "0.900 [0.54, 1.00], n = 10"  # a tau-b stays within [−1, 1]
    assert mean_text(-0.138, 0.7, 3) == "-0.138, too few (n = 3)"  # the walk-through's tau from 3 rankings
    assert mean_text(None, None, 0) == "–"


def test_sample_sd_known_answer():
    from annotate.agreement import sample_sd

    assert sample_sd([1.0, -1.0]) == pytest.approx(2 ** 0.5)
    assert sample_sd([2, 4, 4, 4, 5, 5, 7, 9]) == pytest.approx(2.13809, abs=1e-5)
    assert sample_sd([0.5]) is None


def test_share_filter_gives_percent_interval_and_n_or_too_few():
    from training.templatetags.dashboard import share, ties_share

    assert share(0.8, 10) == "80.0 % [49.0–94.3 %], n = 10"
    assert share(3 / 7, 7) == "42.9 %, too few (n = 7)"  # the walk-through's 42.9 % agreement
    assert share(None, 10) == "–"
    assert ties_share({"agree": 6, "disagree": 2, "one_tied": 1, "both_tied": 1, "agreement_with_ties": 0.7}) == \
        "70.0 % [39.7–89.2 %], n = 10"


def test_ppo_before_after_shows_the_gains_intervals_and_the_win_rate_s():
    view = evaluation_view({
        "before": {"rm_score": -0.2, "oracle_score": 0.1, "n_prompts": 12},
        "after": {"rm_score": 0.9, "oracle_score": 0.3, "win_rate": 0.75, "n_prompts": 12},
        "delta_ci": {"rm_score": {"mean": 1.1, "low": 0.8, "high": 1.4, "n_prompts": 12},
                     "oracle_score": {"mean": 0.2, "low": float("nan"), "high": float("nan"), "n_prompts": 1}},
    })
    rows = {row["name"]: row["interval"] for row in view["comparison"]}
    assert rows["rm_score"] == "change [+0.8, +1.4], n = 12 prompts"
    assert rows["oracle_score"] == "too few (n = 1)"
    assert rows["win_rate"] == "0.75 [0.47, 0.91], n = 12 prompts"


@pytest.mark.django_db
def test_every_statistic_on_the_stats_page_has_its_n_and_an_interval_or_too_few(staff_client, world):
    from training import jobs
    from training.models import Job

    project = world["project"]
    job = jobs.launch_rm_check(project=project, rm_run=world["rm"])
    Job.objects.filter(pk=job.pk).update(status="succeeded", result={
        "accuracy": 0.625, "pairs": 8, "rankings": 2, "by_round": {"1": {"pairs": 40, "accuracy": 0.75}}})
    html = staff_client.get(f"/dashboard/projects/{project.pk}/").content.decode()
    # Two annotators, two shared prompts: every tau-b and agreement here rests on too few values.
    overall_tau = html.split('id="overall-tau">')[1].split("</dd>")[0]
    assert overall_tau == "0.000, too few (n = 1)"
    position = html.split('id="position-bias">')[1].split("</p>")[0]
    assert "25.0 %, too few (n = 4)" in position  # the response shown first won 1 of 4 rankings
    assert "n = 24" in position  # earlier preferred: 24 strict pairs
    length = html.split('id="length-bias">')[1].split("</p>")[0]
    assert "75.0 % [" in length and "n = 24" in length and "too few (n = 4)" in length
    assert "62.5 %, too few (n = 8)" in html  # the RM check's accuracy
    assert "round 1: 75.0 % [" in html and "n = 40" in html


@pytest.mark.django_db
def test_the_stats_page_renders_for_an_empty_project_and_a_queued_check(staff_client, world):
    from annotate.models import Project
    from training import jobs

    empty = Project.objects.create(name="Empty")
    assert staff_client.get(f"/dashboard/projects/{empty.pk}/").status_code == 200
    jobs.launch_rm_check(project=world["project"], rm_run=world["rm"])  # queued: no result yet
    html = staff_client.get(f"/dashboard/projects/{world['project'].pk}/").content.decode()
    assert "Queued" in html or "queued" in html
