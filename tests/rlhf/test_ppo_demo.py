"""Integration on the demo task: with the reward model trained on simulated rankings (`demo_reward_model_dir`),
PPO with the default settings — the adaptive KL controller (target 3 nats, horizon a tenth of the run), early
stopping at 2 × the target, and the final policy chosen by the oracle on selection prompts held out of
training — raises the tiny policy's hidden-oracle score on held-out prompts by a margin outside the
evaluation's own noise, at a bounded KL, and wins against the starting policy under the reward model.

The floors below come from 10 runs (5 seeds × 1 and 2 torch threads, bench/bench_ppo_overopt.py, table in
bench/RESULTS.md "PPO over-optimisation on the demo task"), with a margin: they are properties every one of
those trajectories had, not the figures of one of them (a machine with other float kernels — AVX2 instead
of AVX-512 — follows another trajectory; the issue-14 run without these defences measured KL 7.40 there).
"""

from __future__ import annotations

import json

import pytest
import torch

from training.rlhf.demo_task import DEMO_TASK, demo_prompts
from training.rlhf.ppo_config import PPOConfig
from training.rlhf.ppo_trainer import train_ppo

pytestmark = pytest.mark.slow

ORACLE_GAIN_FLOOR = 0.25  # held-out oracle score, after − before (10 runs: +0.32 to +1.11; seed 0: +1.03)
KL_CEILING = 7.0  # nats per response of the final policy against the start (10 runs: 2.0 to 5.3)
WIN_RATE_FLOOR = 0.6  # new vs starting policy under the RM (10 runs: 0.79 to 0.95)


class Curve:
    def __init__(self) -> None:
        self.metrics: dict[int, dict[str, float]] = {}
        self.samples: dict[int, list[dict]] = {}

    def on_metrics(self, step, metrics):
        self.metrics[step] = metrics

    def on_samples(self, step, samples):
        self.samples[step] = samples

    def on_checkpoint(self, step, path):
        pass

    def on_start(self, *, total_steps, start_step):
        pass

    def on_outputs(self, outputs):
        pass

    def on_evaluation(self, results):
        pass

    def on_log(self, message):
        print(message, flush=True)

    def should_stop(self):
        return False


@pytest.fixture(autouse=True)
def _one_thread(_torch_threads):
    torch.set_num_threads(1)  # a 1M-parameter model: one thread beats two on a shared machine
    yield


def _write(path, prompts):
    path.write_text("".join(json.dumps({"prompt": p, "metadata": {"task": DEMO_TASK}}) + "\n" for p in prompts),
                    encoding="utf-8")
    return path


def test_ppo_raises_the_oracle_score_at_a_bounded_kl(tiny_model_dir, demo_reward_model_dir, tmp_path):
    train = _write(tmp_path / "train.jsonl", demo_prompts(n=96, seed=0, split="train"))
    held_out = _write(tmp_path / "test.jsonl", demo_prompts(n=192, seed=0, split="test"))  # 24 prompts × 8
    config = PPOConfig(policy=str(tiny_model_dir), reward_model=str(demo_reward_model_dir), prompts=str(train),
                       eval_prompts=str(held_out), eval_max_prompts=192, output_dir=str(tmp_path / "ppo"),
                       sample_every=10)
    curve = Curve()
    result = train_ppo(config, reporter=curve)

    before, after = result.evaluation["before"], result.evaluation["after"]
    gain = result.evaluation["delta_ci"]["oracle_score"]
    selection = result.evaluation["selection"]
    steps = sorted(curve.metrics)
    oracle = [round(curve.metrics[i]["oracle_score"], 2) for i in steps]
    kl = [round(curve.metrics[i]["kl_k1"], 2) for i in steps]
    print(f"rollout oracle score per iteration: {oracle}\nrollout KL per iteration: {kl}\n"
          f"before: {before}\nafter: {after}\ngain: {gain}\nselection: {selection}")
    assert before["kl"] == 0.0 and before["n_prompts"] == after["n_prompts"] == 192
    # the run ends at its last iteration, or earlier when the KL passed 2 × the target (and only then)
    assert not result.stopped and result.iterations == selection["last_iteration"] == steps[-1]
    assert result.iterations == config.num_iterations == 40 or selection["stopped_early"]
    assert all(k <= config.kl_stop for k in kl[:-1])
    # the gold gain is outside the evaluation's noise: its 95 % interval over the 24 prompts is above 0
    assert gain["n_prompts"] == 24 and gain["low"] > 0
    assert after["oracle_score"] - before["oracle_score"] >= ORACLE_GAIN_FLOOR
    assert after["kl"] <= KL_CEILING
    assert after["win_rate"] >= WIN_RATE_FLOOR
    assert after["rm_score"] > before["rm_score"]
    assert after["eos_rate"] >= before["eos_rate"] - 0.05  # the missing-EOS penalty keeps responses ending
    # the final policy is the best selection point (the start included), by the oracle on held-out prompts
    assert selection["signal"] == "oracle" and selection["history"][0][0] == 0
    assert selection["best_score"] == max(score for _, score in selection["history"])
    assert selection["best_iteration"] > 0  # PPO did better than the start on the selection prompts
    periodic = [curve.metrics[i]["eval/oracle_score"] for i in steps if "eval/oracle_score" in curve.metrics[i]]
    assert len(periodic) >= 3 and all("rm_score" in curve.metrics[i] for i in steps)
    assert curve.samples[10] and "oracle" in curve.samples[10][0]
