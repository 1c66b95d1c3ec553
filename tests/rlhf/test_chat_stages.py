"""One prompt format through the reward model and PPO, on the tiny chat model (its tokenizer carries a chat
template of its own): the RM trains and scores on template-formatted prompts and records the format; PPO's
rollouts, scores and evaluations read the same format; a mismatch is refused with both formats named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.rlhf.recording import RecordingReporter
from training.rlhf import ppo_trainer, rm_trainer
from training.rlhf.chat_format import PLAIN, PromptFormat, PromptFormatError
from training.rlhf.configs import ConfigError
from training.rlhf.ppo_config import PPOConfig
from training.rlhf.prompts import load_prompts, split_prompts
from training.rlhf.reward_model import RewardModel, encode_pairs, saved_prompt_format
from training.rlhf.rm_config import RewardModelConfig
from training.rlhf.rm_eval import evaluate_rankings_file
from training.rlhf.rm_trainer import train_reward_model

CHAT = PromptFormat(kind="chat", system_prompt="Be brief.")
MARKERS = ("### System: Be brief.\n### User: ", "\n### Assistant:")


@pytest.fixture(autouse=True)
def _one_thread(_torch_threads):
    torch.set_num_threads(1)
    yield


def rm_config(model_dir, dataset, out, **overrides) -> RewardModelConfig:
    values = {"model": str(model_dir), "dataset": str(dataset), "output_dir": str(out), "batch_size": 4,
              "learning_rate": 1e-3, "warmup_ratio": 0.0, "checkpoint_every": 0, "seed": 7, "max_steps": 3,
              "eval_batch_size": 16, "prompt_format": "chat", "system_prompt": "Be brief."}
    values.update(overrides)
    return RewardModelConfig(**values)


@pytest.fixture(scope="module")
def chat_rm(tiny_chat_model_dir, tmp_path_factory, make_rankings, write_jsonl_rows):
    """A reward model trained for 3 steps on the chat model with the chat format, and what it was fed."""
    rows = make_rankings(16, k=4, seed=1)
    root = tmp_path_factory.mktemp("chat-rm")
    write_jsonl_rows(rows[:12], root / "kwise" / "train.jsonl")
    write_jsonl_rows(rows[12:], root / "kwise" / "test.jsonl")
    seen: list[list[int]] = []
    original = rm_trainer.encode_pairs

    def spy(tokenizer, prompts, responses, **kwargs):
        out = original(tokenizer, prompts, responses, **kwargs)
        seen.extend(out)
        return out

    patch = pytest.MonkeyPatch()
    patch.setattr(rm_trainer, "encode_pairs", spy)
    try:
        result = train_reward_model(rm_config(tiny_chat_model_dir, root / "kwise", root / "rm"),
                                    reporter=RecordingReporter())
    finally:
        patch.undo()
    return {"dir": result.model_dir, "dataset": root / "kwise", "seen": seen}


def test_rm_trains_on_template_formatted_prompts_and_records_the_format(chat_rm):
    model = RewardModel.from_pretrained(chat_rm["dir"])
    decoded = [model.tokenizer.decode(ids) for ids in chat_rm["seen"]]
    assert decoded and all(text.startswith(MARKERS[0]) and MARKERS[1] in text for text in decoded)
    assert all(text.endswith(model.tokenizer.eos_token) for text in decoded)  # the response, then EOS
    meta = json.loads((chat_rm["dir"] / "reward_model.json").read_text())
    assert meta["prompt_format"] == {"kind": "chat", "system_prompt": "Be brief."}
    assert meta["training_config"]["prompt_format"] == "chat"
    assert saved_prompt_format(chat_rm["dir"]) == CHAT and model.prompt_format == CHAT


def test_rm_scores_in_its_format(chat_rm):
    model = RewardModel.from_pretrained(chat_rm["dir"])
    [ids] = model.encode(["Review place 3:"], [" It was fresh."])
    assert model.tokenizer.decode(ids) == (
        f"{MARKERS[0]}Review place 3:{MARKERS[1]} It was fresh.{model.tokenizer.eos_token}")
    prompts, responses = ["Review place 3:", "Review place 4:"], [" It was fresh and warm.", " It was rude."]
    chat_scores = model.score_texts(prompts, responses)
    plain_ids = encode_pairs(model.tokenizer, prompts, responses, max_length=model.max_length, prompt_format=PLAIN)
    plain_scores = model.score_ids(plain_ids)
    assert any(abs(a - b) > 1e-6 for a, b in zip(chat_scores, plain_scores))  # the format reaches the model


def test_rm_evaluation_refuses_another_format_and_runs_with_its_own(chat_rm):
    with pytest.raises(PromptFormatError) as caught:
        evaluate_rankings_file(reward_model=chat_rm["dir"], dataset=chat_rm["dataset"], prompt_format=PLAIN)
    assert "the chat template" in str(caught.value) and "plain text" in str(caught.value)
    report = evaluate_rankings_file(reward_model=chat_rm["dir"], dataset=chat_rm["dataset"], prompt_format=CHAT)
    assert report["pairs"] > 0 and 0.0 <= report["accuracy"] <= 1.0


def test_rm_chat_format_needs_a_template(random_lm_dir, ranking_dataset, tmp_path):
    with pytest.raises(ConfigError) as caught:
        train_reward_model(rm_config(random_lm_dir, ranking_dataset, tmp_path / "rm"))
    assert caught.value.field == "prompt_format" and "no chat template" in str(caught.value)


# --- PPO --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("chat-prompts") / "prompts.jsonl"
    rows = [{"prompt": f"Review place {i}:"} for i in range(10)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def ppo_config(policy, rm, prompts, out, **overrides) -> PPOConfig:
    values = dict(policy=str(policy), reward_model=str(rm), prompts=str(prompts), output_dir=str(out), iterations=2,
                  rollout_batch_size=4, mini_batch_size=2, micro_batch_size=2, ppo_epochs=1, response_length=6,
                  sample_every=1, samples_per_table=2, checkpoint_every=0, eval_fraction=0.2, eval_max_prompts=2,
                  lr=1e-3, critic_lr=1e-3, seed=3, select_every=0, kl_stop_factor=0.0, task="none",
                  prompt_format="chat", system_prompt="Be brief.")
    values.update(overrides)
    return PPOConfig(**values)


def test_ppo_rollouts_scores_and_evaluation_use_the_chat_format(tiny_chat_model_dir, chat_rm, prompt_file,
                                                                tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    policy_saw: list[str] = []
    rm_saw: list[str] = []
    encode, rm_format = ppo_trainer.encode_prompts, RewardModel.format_prompt

    def spy_encode(tok, texts, **kwargs):
        out = encode(tok, texts, **kwargs)
        policy_saw.extend(tok.decode(ids) for ids in out)
        return out

    def spy_rm_format(self, prompt):
        text = rm_format(self, prompt)
        rm_saw.append(text)
        return text

    monkeypatch.setattr(ppo_trainer, "encode_prompts", spy_encode)
    monkeypatch.setattr(RewardModel, "format_prompt", spy_rm_format)
    reporter = RecordingReporter()
    config = ppo_config(tiny_chat_model_dir, chat_rm["dir"], prompt_file, tmp_path / "ppo")
    result = ppo_trainer.train_ppo(config, reporter=reporter)

    assert result.iterations == 2 and not result.stopped
    assert policy_saw and all(t.startswith(MARKERS[0]) and t.endswith(MARKERS[1]) for t in policy_saw)
    assert rm_saw and all(t.startswith(MARKERS[0]) and t.endswith(MARKERS[1]) for t in rm_saw)
    # the held-out evaluation ran through the same path: its prompts reached the policy in the chat format
    assert {"before", "after"} <= set(reporter.evaluations[-1])
    _, held_out = split_prompts(load_prompts(prompt_file), eval_fraction=config.eval_fraction,
                                max_eval=config.eval_max_prompts, seed=config.seed)
    assert held_out and all(f"{MARKERS[0]}{r.text}{MARKERS[1]}" in policy_saw for r in held_out)
    # samples show the prompt and the assistant's text alone, never the template
    rows = [row for table in reporter.samples.values() for row in table]
    assert rows and all("###" not in row["prompt"] and "###" not in row["response"] for row in rows)
    assert json.loads((tmp_path / "ppo" / "config.json").read_text())["prompt_format"] == "chat"
    assert tokenizer.chat_template  # the saved policy keeps the template for the next stage
    assert AutoTokenizer.from_pretrained(result.policy_dir).chat_template == tokenizer.chat_template


def test_ppo_refuses_a_reward_model_of_another_format_before_loading(tiny_chat_model_dir, chat_rm, prompt_file,
                                                                     tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("models were loaded before the format check")

    monkeypatch.setattr(ppo_trainer, "build_ppo_models", never)
    config = ppo_config(tiny_chat_model_dir, chat_rm["dir"], prompt_file, tmp_path / "ppo", prompt_format="plain",
                        system_prompt="")
    with pytest.raises(ConfigError) as caught:
        ppo_trainer.train_ppo(config)
    message = str(caught.value)
    assert caught.value.field == "prompt_format"
    assert str(chat_rm["dir"]) in message and "the chat template" in message and "plain text" in message
    other = ppo_config(tiny_chat_model_dir, chat_rm["dir"], prompt_file, tmp_path / "ppo2", system_prompt="Other.")
    with pytest.raises(ConfigError, match="system prompt 'Be brief.'"):
        ppo_trainer.train_ppo(other)


def test_ppo_chat_format_needs_the_policys_template(random_lm_dir, chat_rm, prompt_file, tmp_path):
    with pytest.raises(ConfigError) as caught:
        ppo_trainer.train_ppo(ppo_config(random_lm_dir, chat_rm["dir"], prompt_file, tmp_path / "ppo",
                                         critic_init="policy"))  # (the RM reads other token ids)
    assert caught.value.field == "prompt_format" and "no chat template" in str(caught.value)


def test_rm_training_warns_when_the_snapshot_was_exported_in_another_format(tiny_chat_model_dir, chat_rm,
                                                                            tmp_path):
    import shutil

    from training.rlhf.data import snapshot_prompt_format

    snapshot = tmp_path / "snapshot"
    shutil.copytree(chat_rm["dataset"], snapshot / "kwise")
    assert snapshot_prompt_format(snapshot) is None  # no manifest: a user's own data
    (snapshot / "manifest.json").write_text(json.dumps({"prompt_format": {"kind": "plain", "system_prompt": ""}}))
    assert snapshot_prompt_format(snapshot) == PLAIN
    reporter = RecordingReporter()
    train_reward_model(rm_config(tiny_chat_model_dir, snapshot, tmp_path / "rm", max_steps=1,
                                 calibration_set="none"), reporter=reporter)
    warning = [line for line in reporter.logs if line.startswith("warning: the snapshot")]
    assert warning and "plain text" in warning[0] and "the chat template" in warning[0]

    (snapshot / "manifest.json").write_text(json.dumps({"prompt_format": CHAT.as_dict()}))
    reporter = RecordingReporter()
    train_reward_model(rm_config(tiny_chat_model_dir, snapshot, tmp_path / "rm2", max_steps=1,
                                 calibration_set="none"), reporter=reporter)
    assert not [line for line in reporter.logs if line.startswith("warning: the snapshot")]


def test_a_resumed_rm_run_keeps_its_format(tiny_chat_model_dir, chat_rm, tmp_path):
    from training.rlhf.rm_trainer import find_last_checkpoint

    config = rm_config(tiny_chat_model_dir, chat_rm["dataset"], tmp_path / "rm", max_steps=3, calibration_set="none")
    assert train_reward_model(config, reporter=RecordingReporter(stop_after=1)).stopped
    state = json.loads((find_last_checkpoint(tmp_path / "rm") / "trainer_state.json").read_text())
    assert state["prompt_format"] == CHAT.as_dict()
    plain = rm_config(tiny_chat_model_dir, chat_rm["dataset"], tmp_path / "rm", max_steps=3, calibration_set="none",
                      resume="last", prompt_format="plain", system_prompt="")
    with pytest.raises(ConfigError) as caught:
        train_reward_model(plain)
    assert caught.value.field == "prompt_format" and "plain text" in str(caught.value)
