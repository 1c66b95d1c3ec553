"""A reward model's evaluation in words (issue 16, item 9): figures with n and interval, calibration as a sentence,
annotators by username on the run page (staff only), the raw figures tucked under "All figures"."""

from __future__ import annotations

import pytest

from annotate.services.exporting import annotator_pseudonym
from training.intervals import percent_interval_text as interval_text
from training.rm_report import calibration_sentence, is_rm_evaluation, rm_evaluation_view
from training.selectors import evaluation_view

# What rm_trainer reported on the walk-through's run (b30_rm4_evaluation_section.png), abridged.
WALKTHROUGH = {
    "calibration": {"bias": 1.882, "calibrated_mean": 1.269e-16, "calibrated_std": 1.393, "gain": 1.0, "n": 42,
                    "raw_mean": -1.882, "raw_std": 1.393, "set": "heldout"},
    "data": {"dataset": "/tmp/walk/var/data/snapshots/1-walk-snapshot", "eval_rankings": 14,
             "eval_source": "split 'test'", "splits": ["train", "test"], "train_rankings": 87},
    "heldout": {"accuracy": 0.6616, "pairs": 198, "rankings": 14, "prompts": 7, "mean_margin": 0.2901,
                "mean_margin_calibrated": 0.2901, "loss": 0.6217, "reward_mean": -1.882, "reward_std": 1.393,
                "oracle": {"accuracy": 0.7677, "pairs": 99, "prompts": 7, "annotator_agreement": 0.7323,
                           "top1": 0.5714},
                "per_annotator": {"0f378ca3751f": {"accuracy": 0.7071, "pairs": 99, "rankings": 7},
                                  "a1b5899b5961": {"accuracy": 0.6162, "pairs": 99, "rankings": 7}},
                "per_k": {"6": {"accuracy": 0.6616, "pairs": 198, "rankings": 14}}},
    "steps": 44,
}


def test_interval_text_known_answers():
    assert interval_text(0.8, 10) == "49.0–94.3 %"  # Wilson (8, 10): 0.4902, 0.9433
    assert interval_text(0.5, 3) == "too few (n = 3)"
    assert interval_text(None, 10) == "–"


def test_the_walkthrough_evaluation_reads_as_figures_with_n_and_interval():
    view = rm_evaluation_view(WALKTHROUGH, annotator_names={"0f378ca3751f": "alice"})
    figures = {f["key"]: f for f in view["figures"]}
    assert list(figures) == ["accuracy", "oracle", "ceiling", "top1", "margin", "loss", "data"]
    assert figures["accuracy"]["value"] == "66.2 %"
    assert "n = 198 pairs, 14 rankings, 7 prompts" in figures["accuracy"]["note"]
    assert "95 % interval 59.3–72.4 %" in figures["accuracy"]["note"]
    assert figures["oracle"]["value"] == "76.8 %" and "99 pairs" in figures["oracle"]["note"]
    assert "too few (n = 7)" in figures["top1"]["note"]  # 7 prompts: no interval
    assert figures["margin"]["value"] == "0.29" and "after calibration" not in figures["margin"]["note"]
    assert figures["data"]["value"] == "44 steps" and "87 rankings for training; 14 held out" in figures["data"]["note"]
    # No raw float dump anywhere in the readable part.
    assert "e-16" not in str(view) and "1.269" not in str(view)
    annotators, per_k = view["tables"]
    assert annotators["title"] == "Accuracy per annotator"
    assert annotators["columns"] == ["Accuracy", "95 % interval (Wilson)", "Pairs", "Rankings"]
    assert annotators["rows"][0] == {"key": "alice", "pseudonym": "0f378ca3751f",
                                     "cells": ["70.7 %", "61.1–78.8 %", 99, 7]}
    assert annotators["rows"][1]["key"] == "a1b5899b5961"  # unknown pseudonym: shown as it is
    assert per_k["rows"] == [{"key": "6", "pseudonym": "", "cells": ["66.2 %", "59.3–72.4 %", 198, 14]}]


def test_calibration_in_words():
    assert calibration_sentence(WALKTHROUGH["calibration"]) == (
        "Rewards are shifted by +1.88 so that the 42 responses of the held-out split average 0 "
        "(before: mean -1.88, standard deviation 1.39).")
    with_gain = calibration_sentence({"bias": 1.35, "gain": 0.718, "n": 42, "raw_mean": -1.88, "raw_std": 1.393,
                                      "set": "train"})
    assert with_gain.startswith("Rewards are scaled by 0.718 and shifted by +1.35 so that the 42 responses of the "
                                "training split average 0 with standard deviation 1")
    assert calibration_sentence({}) == ""


def test_the_evaluation_view_tucks_the_raw_figures_away_and_keeps_ppo_as_before_after():
    view = evaluation_view(WALKTHROUGH)
    assert view["rm"]["figures"] and not view["rows"] and not view["tables"]
    assert "calibration.calibrated_mean" in [row["name"] for row in view["details"]]
    flat = evaluation_view({"accuracy": 0.75, "pairs": 40, "per_k": {"4": {"accuracy": 0.8, "pairs": 30}}})
    assert flat["rm"]["figures"][0]["value"] == "75.0 %"  # rm_eval's flat report (an RM check) reads the same
    ppo = {"before": {"rm_score": -0.2}, "after": {"rm_score": 0.9}, "calibration": {"bias": 1.0}}
    assert not is_rm_evaluation(ppo) and evaluation_view(ppo)["comparison"]


@pytest.mark.django_db
def test_the_rm_run_page_names_annotators_for_staff(staff_client, world):
    from training.models import TrainingRun

    rm, ann1 = world["rm"], world["ann1"]
    TrainingRun.objects.filter(pk=rm.pk).update(evaluation={
        **WALKTHROUGH, "heldout": {**WALKTHROUGH["heldout"], "per_annotator": {
            annotator_pseudonym(f"user:{ann1.pk}"): {"accuracy": 0.9, "pairs": 20, "rankings": 2},
            "0123456789ab": {"accuracy": 0.5, "pairs": 4, "rankings": 1}}}})
    html = staff_client.get(f"/dashboard/runs/{rm.pk}/").content.decode()
    assert "Accuracy per annotator" in html and ">ann1</th>" in html
    assert "<td>90.0 %</td><td>69.9–97.2 %</td><td>20</td>" in html
    assert "<td>too few (n = 4)</td>" in html
    assert "Rewards are shifted by +1.88" in html and 'id="rm-figures"' in html
    assert "heldout.per annotator" not in html
