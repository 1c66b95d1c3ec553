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
    assert rows[0]["a_win_text"].startswith("0.75 [") and rows[1]["a_win_text"] == "too few (n = 3)"


def test_agreement_shows_n_and_interval_or_too_few():
    from training.templatetags.dashboard import agreement_interval

    assert agreement_interval({"agree": 2, "disagree": 1}) == "too few (n = 3)"
    assert agreement_interval({"agree": 8, "disagree": 2}) == "0.80 [0.49, 0.94], n = 10"
    assert agreement_interval({}) == "too few (n = 0)"


@pytest.mark.django_db
def test_project_stats_page_shows_intervals(staff_client, world):
    html = staff_client.get(f"/dashboard/projects/{world['project'].pk}/").content.decode()
    assert "too few" in html and "95 % interval" in html
