"""The demo's size plans are consistent: every stage can complete with the people and configs it names."""

import pytest

from training.demo import DEMO_ANNOTATORS, PLANS
from training.rlhf.ppo_config import PPOConfig
from training.rlhf.rm_config import RewardModelConfig
from training.rlhf.sft_config import SFTConfig


@pytest.mark.parametrize("size", list(PLANS))
def test_plan_is_consistent(size):
    plan = PLANS[size]
    assert 4 <= plan.k <= 9 and 0 < plan.new_round_baseline < plan.k
    assert 0 < plan.prompts <= 120  # the demo task's pool of distinct prompts
    assert plan.simulated_annotators >= plan.annotators_per_prompt  # round 1 can be fully ranked
    assert len(DEMO_ANNOTATORS) >= plan.annotators_per_prompt  # ... and the humans' round too
    assert plan.new_round_prompts <= plan.prompts
    # one demonstration per prompt, some held out of SFT, and the best of several samples
    assert 0 < plan.demonstrations <= plan.prompts and plan.demonstrations * plan.export_test_fraction >= 2
    assert plan.best_of >= 2
    sft = SFTConfig(model="m", dataset="d", output_dir="out", **plan.sft)  # validates
    assert sft.max_new_tokens <= plan.max_new_tokens and sft.checkpoint_every == 0
    RewardModelConfig(model="m", dataset="d", output_dir="out", **plan.rm)  # validates
    ppo = PPOConfig(policy="p", reward_model="r", prompts="prompts.jsonl", output_dir="out",
                    task="demo", **plan.ppo)
    assert ppo.num_iterations >= 1
