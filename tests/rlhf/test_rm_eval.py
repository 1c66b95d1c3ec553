"""Held-out evaluation metrics (training/rlhf/rm_eval.py) on hand-made rewards, and the oracle comparison on
demo-task records."""

import math

import pytest

from training.rlhf.data import RankingRecord
from training.rlhf.demo_task import (
    DEMO_TASK,
    SimulatedAnnotator,
    demo_prompts,
    oracle_score,
    sample_demo_responses,
)
from training.rlhf.rm_eval import (
    accuracy_by,
    evaluate_rankings_file,
    evaluation_report,
    oracle_metrics,
    ranking_metrics,
    unique_sequences,
)


def record(prompt, responses, ranking, annotator="a", task=None):
    return RankingRecord(prompt=prompt, responses=tuple(responses), ranking=tuple(tuple(t) for t in ranking),
                         annotator=annotator, metadata={"task": task} if task else {})


def test_ranking_metrics_known_answer():
    records = [
        record("p1", ["a", "b", "c"], [[0], [1], [2]], annotator="x"),  # 3 pairs
        record("p2", ["d", "e", "f", "g"], [[3], [0, 1], [2]], annotator="y"),  # 6 − 1 tie = 5 pairs
    ]
    rewards = [[3.0, 2.0, 2.5], [1.0, 0.0, -1.0, 0.5]]
    report = ranking_metrics(records, rewards)
    # p1: (0,1) +1 ✓, (0,2) +0.5 ✓, (1,2) −0.5 ✗ → 2/3
    # p2: (3,0) −0.5 ✗, (3,1) +0.5 ✓, (3,2) +1.5 ✓, (0,2) +2 ✓, (1,2) +1 ✓ → 4/5
    assert report["pairs"] == 8
    assert report["accuracy"] == pytest.approx(6 / 8)
    assert report["mean_margin"] == pytest.approx((1 + 0.5 - 0.5 - 0.5 + 0.5 + 1.5 + 2 + 1) / 8)
    assert report["per_annotator"]["x"] == {"accuracy": pytest.approx(2 / 3), "pairs": 3, "rankings": 1}
    assert report["per_annotator"]["y"]["accuracy"] == pytest.approx(4 / 5)
    assert set(report["per_k"]) == {"3", "4"} and report["per_k"]["4"]["pairs"] == 5
    assert report["rankings"] == 2 and report["prompts"] == 2
    p1_loss = (math.log1p(math.exp(-1)) + math.log1p(math.exp(-0.5)) + math.log1p(math.exp(0.5))) / 3
    p2_loss = sum(math.log1p(math.exp(-m)) for m in (-0.5, 0.5, 1.5, 2, 1)) / 5
    assert report["loss"] == pytest.approx((p1_loss + p2_loss) / 2)
    assert "oracle" not in evaluation_report(records, rewards)
    with pytest.raises(ValueError):
        ranking_metrics(records, rewards[:1])


def demo_records(n_prompts=12, k=5):
    prompts = demo_prompts(n=n_prompts, seed=4, split="test")
    annotator = SimulatedAnnotator(seed=1, name="sim-a")
    out = []
    for prompt in prompts:
        responses = sample_demo_responses(prompt, k=k, seed=2)
        out.append(record(prompt, responses, annotator.rank(prompt, responses), annotator="sim-a", task=DEMO_TASK))
    return out


def test_oracle_metrics_against_the_demo_oracle():
    records = demo_records()
    oracle_rewards = [[oracle_score(r.prompt, t) for t in r.responses] for r in records]
    perfect = oracle_metrics(records, oracle_rewards)
    assert perfect["accuracy"] == 1.0 and perfect["top1"] == 1.0 and perfect["prompts"] == 12
    assert perfect["pairs"] > 0
    reversed_ = oracle_metrics(records, [[-v for v in row] for row in oracle_rewards])
    assert reversed_["accuracy"] == 0.0
    constant = oracle_metrics(records, [[0.0] * r.k for r in records])
    assert constant["accuracy"] == 0.5
    # the simulated annotator (agreement 0.73 between two of them) agrees with the oracle more often than not
    assert 0.6 < perfect["annotator_agreement"] < 1.0
    # several annotators ranking the same responses: each response set counts once
    doubled = records + [record(r.prompt, r.responses, r.ranking, annotator="sim-b", task=DEMO_TASK) for r in records]
    assert oracle_metrics(doubled, oracle_rewards * 2)["pairs"] == perfect["pairs"]
    # not demo data: no oracle section
    assert oracle_metrics([record("p", ["a", "b"], [[0], [1]])], [[1.0, 0.0]]) is None
    assert evaluation_report(records, oracle_rewards)["oracle"]["accuracy"] == 1.0


def test_unique_sequences_scores_each_response_once():
    records = [record("p", ["a", "b"], [[0], [1]]), record("p", ["b", "a"], [[1], [0]], annotator="z"),
               record("q", ["a", "c"], [[0], [1]])]
    pairs, layout = unique_sequences(records)
    assert pairs == [("p", "a"), ("p", "b"), ("q", "a"), ("q", "c")]
    assert layout == [[0, 1], [1, 0], [2, 3]]


def test_accuracy_by_groups_on_fields_and_metadata():
    records = [
        record("p1", ["a", "b"], [[0], [1]], annotator="x"),
        record("p2", ["c", "d", "e"], [[0], [1], [2]], annotator="y"),
        record("p3", ["f", "g"], [[0, 1]], annotator="y"),  # all tied: no pair, left out
    ]
    records[1] = RankingRecord(prompt="p2", responses=("c", "d", "e"), ranking=((0,), (1,), (2,)), annotator="y",
                               metadata={"round": 2})
    rewards = [[1.0, 0.0], [0.0, 1.0, -1.0], [0.0, 0.0]]  # p1: 1/1; p2: (c>d ✗, c>e ✓, d>e ✓) 2/3
    assert accuracy_by(records, rewards, name="annotator") == {
        "x": {"accuracy": 1.0, "pairs": 1, "rankings": 1}, "y": {"accuracy": 2 / 3, "pairs": 3, "rankings": 1}}
    assert set(accuracy_by(records, rewards, name="round")) == {"(none)", "2"}
    assert accuracy_by(records, rewards, name="k")["3"]["pairs"] == 3


@pytest.mark.parametrize("seed", [0, 1])
def test_evaluate_rankings_file_is_the_report_of_the_models_scores(random_lm_dir, tmp_path, make_rankings,
                                                                  write_jsonl_rows, seed):
    """A saved reward model and an exported rankings file → the same report as scoring the records by hand,
    with the breakdowns asked for."""
    import torch

    from training.rlhf.data import load_ranking_records
    from training.rlhf.reward_model import RewardModel

    torch.manual_seed(seed)
    model_dir = RewardModel.from_backbone(str(random_lm_dir)).save_pretrained(tmp_path / "rm")
    rows = make_rankings(6, k=4, seed=seed, annotators=2)
    for i, row in enumerate(rows):
        row["metadata"] = {**(row.get("metadata") or {}), "round": 1 + i % 2}
    path = write_jsonl_rows(rows, tmp_path / "new.jsonl")

    report = evaluate_rankings_file(reward_model=model_dir, dataset=path, by=("round", "source"))

    records = load_ranking_records(path)
    model = RewardModel.from_pretrained(model_dir)
    expected = ranking_metrics(records, [model.score_texts([r.prompt] * r.k, list(r.responses), calibrated=False)
                                         for r in records])
    assert report["pairs"] == expected["pairs"] > 0 and report["rankings"] == len(records)
    assert report["accuracy"] == pytest.approx(expected["accuracy"])
    assert report["per_annotator"].keys() == expected["per_annotator"].keys() and len(report["per_annotator"]) == 2
    assert set(report["per_round"]) == {"1", "2"}
    assert sum(v["pairs"] for v in report["per_round"].values()) == report["pairs"]
    assert report["dataset"] == str(path) and report["split"] == "train"
