"""The trainer's defences against reward over-optimisation (issue 14): the paired-difference interval of the
evaluation, keeping the best policy by a held-out signal, and early stopping on KL. The demo-task figures are
in test_ppo_demo.py and bench/RESULTS.md."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.rlhf.recording import RecordingReporter
from training.rlhf.ppo_config import PPOConfig
from training.rlhf.ppo_eval import paired_mean_ci, student_t_975
from training.rlhf.ppo_trainer import BestPolicy, train_ppo


@pytest.mark.parametrize(("df", "expected"), [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (5, 2.5706),
                                              (9, 2.2622), (10, 2.2281), (20, 2.0860), (30, 2.0423),
                                              (120, 1.9799)])
def test_student_t_quantiles_match_the_table(df, expected):
    assert student_t_975(df) == pytest.approx(expected, abs=6e-4)


def test_paired_interval_by_hand():
    # prompt a: after 2, 4 (mean 3), before 2 → d = 1; b: d = 2; c: d = 3; d only after → left out
    after = [{"prompt": "a", "oracle": 2.0}, {"prompt": "a", "oracle": 4.0}, {"prompt": "b", "oracle": 2.0},
             {"prompt": "c", "oracle": 3.0}, {"prompt": "d", "oracle": 9.0}]
    before = [{"prompt": "a", "oracle": 2.0}, {"prompt": "b", "oracle": 0.0}, {"prompt": "c", "oracle": 0.0}]
    ci = paired_mean_ci(after, before, "oracle")
    half = 4.302653 * 1.0 / math.sqrt(3)  # t_{0.975, 2} · sd(1, 2, 3) / √3
    assert ci["n_prompts"] == 3 and ci["mean"] == pytest.approx(2.0)
    assert ci["low"] == pytest.approx(2.0 - half, abs=1e-5) and ci["high"] == pytest.approx(2.0 + half, abs=1e-5)
    one = paired_mean_ci(after[:1], before[:1], "oracle")
    assert one["n_prompts"] == 1 and math.isnan(one["low"])
    constant = paired_mean_ci([{"prompt": p, "x": 1.5} for p in "abc"], [{"prompt": p, "x": 1.0} for p in "abc"], "x")
    assert constant["low"] == constant["high"] == pytest.approx(0.5)


def test_best_policy_keeps_the_best_weights_and_restores_them():
    model = torch.nn.Linear(2, 1)
    frozen = torch.nn.Parameter(torch.ones(1), requires_grad=False)
    model.register_parameter("frozen", frozen)
    best = BestPolicy()
    with torch.no_grad():
        model.weight.fill_(1.0)
    assert best.offer(0, 0.5, model)
    with torch.no_grad():
        model.weight.fill_(2.0)
    assert best.offer(1, 0.9, model)
    with torch.no_grad():
        model.weight.fill_(3.0)
    assert not best.offer(2, 0.7, model) and not best.offer(3, float("nan"), model)
    assert "frozen" not in best.weights  # only trainable weights are kept
    best.restore(model)
    assert best.iteration == 1 and torch.all(model.weight == 2.0)
    assert [h[0] for h in best.history] == [0, 1, 2, 3]
    clone = BestPolicy()
    clone.load_state_dict(best.state_dict())
    assert clone.iteration == 1 and clone.score == 0.9


@pytest.fixture(scope="module")
def rm_dir(random_lm_dir, tmp_path_factory):
    from training.rlhf.reward_model import RewardModel

    torch.manual_seed(1)
    return RewardModel.from_backbone(str(random_lm_dir)).save_pretrained(tmp_path_factory.mktemp("rm") / "rm")


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Write a short review of the cafe number {i}:"}) + "\n"
                            for i in range(16)), encoding="utf-8")
    return path


def _config(lm, rm, prompts, out, **overrides) -> PPOConfig:
    values = dict(policy=str(lm), reward_model=str(rm), prompts=str(prompts), output_dir=str(out), iterations=3,
                  rollout_batch_size=4, mini_batch_size=4, micro_batch_size=4, ppo_epochs=2, response_length=6,
                  sample_every=0, checkpoint_every=0, eval_fraction=0.2, lr=1e-3, critic_lr=1e-3, seed=3)
    values.update(overrides)
    return PPOConfig(**values)


def test_the_final_policy_is_the_best_one_by_the_selection_signal(random_lm_dir, rm_dir, prompts, tmp_path):
    """Selection every iteration with scripted scores: iteration 1 is best, so the saved policy holds the
    weights the actor had after iteration 1, not the last ones; the selection metrics are reported."""
    from transformers import AutoModelForCausalLM

    scripted = iter([0.0, 5.0, 1.0, 2.0])  # the start, iterations 1, 2, 3
    kept: dict[int, dict[str, torch.Tensor]] = {}
    original = BestPolicy.offer

    def offer(self, iteration, score, actor):
        kept[iteration] = {k: v.detach().clone() for k, v in actor.state_dict().items()}
        return original(self, iteration, next(scripted), actor)

    reporter = RecordingReporter()
    config = _config(random_lm_dir, rm_dir, prompts, tmp_path / "out", select_every=1, select_fraction=0.25,
                     select_samples=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BestPolicy, "offer", offer)
        result = train_ppo(config, reporter=reporter)
    selection = result.evaluation["selection"]
    assert selection["signal"] == "penalised_score" and selection["best_iteration"] == 1
    assert [h[0] for h in selection["history"]] == [0, 1, 2, 3] and selection["last_iteration"] == 3
    assert not selection["stopped_early"]
    saved = AutoModelForCausalLM.from_pretrained(result.policy_dir).state_dict()
    changed = [k for k in kept[1] if not torch.equal(kept[1][k], kept[3][k])]
    assert changed, "training did not move the actor between iterations 1 and 3"
    for name in changed:
        if name in saved:
            torch.testing.assert_close(saved[name], kept[1][name], rtol=0, atol=0)
    by_step = dict(reporter.metrics)
    assert {"eval/rm_score", "eval/kl", "eval/selection_score", "eval/best_iteration"} <= set(by_step[2])
    assert by_step[3]["eval/best_iteration"] == 1.0
    # the selection prompts are held out of training
    assert any("for choosing the best policy" in line for line in reporter.logs)


def test_training_stops_early_when_the_kl_passes_a_multiple_of_the_target(random_lm_dir, rm_dir, prompts,
                                                                         tmp_path):
    reporter = RecordingReporter()
    config = _config(random_lm_dir, rm_dir, prompts, tmp_path / "out", iterations=8, kl_target=1e-4,
                     kl_stop_factor=1.5, lr=3e-3, select_every=0)
    result = train_ppo(config, reporter=reporter)
    kls = [m["kl_k1"] for _, m in reporter.metrics]
    assert result.iterations < 8 and not result.stopped
    assert kls[-1] > 1.5e-4 and all(kl <= 1.5e-4 for kl in kls[:-1])
    assert result.evaluation["selection"]["stopped_early"] and result.policy_dir.is_dir()
    assert any(line.startswith("stopping early") for line in reporter.logs)
    assert "after" in result.evaluation  # the evaluation still runs on the policy it stopped with


def test_selection_needs_a_signal_that_exists(random_lm_dir, rm_dir, prompts, tmp_path):
    from training.rlhf.configs import ConfigError

    with pytest.raises(ConfigError, match="selection_reward_model"):
        _config(random_lm_dir, rm_dir, prompts, tmp_path / "a", select_signal="held_out_rm")
    with pytest.raises(ConfigError, match="select_signal"):
        train_ppo(_config(random_lm_dir, rm_dir, prompts, tmp_path / "b", select_signal="oracle"))
    with pytest.raises(ConfigError, match="kl_stop_factor"):
        _config(random_lm_dir, rm_dir, prompts, tmp_path / "c", kl_stop_factor=0.5)


