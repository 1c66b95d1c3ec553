"""Smoke tests of the PPO trainer on a random tiny GPT-2 and a random-init reward model: a few iterations change
the trainable weights and leave the frozen ones alone (full and LoRA memory mode), outputs load, metrics,
samples and the evaluation are reported, and a resumed run reaches the same state as an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.rlhf.recording import RecordingReporter
from training.rlhf import ppo_trainer
from training.rlhf.configs import ConfigError
from training.rlhf.ppo_config import PPOConfig
from training.rlhf.ppo_trainer import resolve_resume, train_ppo

REQUIRED_METRICS = {
    "reward", "rm_score", "kl", "beta", "entropy", "approx_kl", "clip_fraction", "value_loss", "policy_loss",
    "explained_variance", "ratio_mean", "response_length", "eos_rate", "tokens_per_s", "value_clip_fraction",
    "lr", "critic_lr", "grad_norm_actor", "grad_norm_critic",
}


@pytest.fixture(autouse=True)
def _one_thread(_torch_threads):
    """Tiny matrices: one thread is faster than two fighting over a shared machine."""
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def random_rm_dir(random_lm_dir, tmp_path_factory) -> Path:
    from training.rlhf.reward_model import RewardModel

    torch.manual_seed(1)
    return RewardModel.from_backbone(str(random_lm_dir)).save_pretrained(tmp_path_factory.mktemp("rm") / "rm")


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    places = ["harbour cafe", "night train", "jazz club", "village bakery", "city library", "bike shop"]
    rows = [{"prompt": f"Write a short review of the {p} number {i}:", "metadata": {"i": i}}
            for i in range(2) for p in places]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_config(lm, rm, prompts, out, **overrides) -> PPOConfig:
    values = dict(policy=str(lm), reward_model=str(rm), prompts=str(prompts), output_dir=str(out), iterations=2,
                  rollout_batch_size=8, mini_batch_size=4, micro_batch_size=2, ppo_epochs=2, response_length=8,
                  sample_every=1, samples_per_table=3, checkpoint_every=0, eval_fraction=0.2, lr=1e-3,
                  critic_lr=1e-3, seed=3,
                  # the mechanics under test here; the defences (best-policy selection, KL stop) have their
                  # own tests in test_ppo_defences.py
                  select_every=0, kl_stop_factor=0.0)
    values.update(overrides)
    return PPOConfig(**values)


@pytest.fixture
def captured(monkeypatch):
    """The PPOModels the trainer builds, with a copy of every parameter as built."""
    holder: dict = {}
    original = ppo_trainer.build_ppo_models

    def build(settings, *, device):
        models = original(settings, device=device)
        holder["models"] = models
        holder["initial"] = {
            role: {n: p.detach().clone() for n, p in module.named_parameters()}
            for role, module in _roles(models).items()
        }
        return models

    monkeypatch.setattr(ppo_trainer, "build_ppo_models", build)
    return holder


def _roles(models) -> dict[str, torch.nn.Module]:
    roles = {"actor": models.actor, "critic": models.critic, "reward_model": models.reward_model}
    if models.reference is not None:
        roles["reference"] = models.reference
    return roles


def _changes(holder) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(changed trainable parameters, changed frozen parameters) per role."""
    changed_trainable, changed_frozen = {}, {}
    for role, module in _roles(holder["models"]).items():
        initial = holder["initial"][role]
        for name, param in module.named_parameters():
            differs = not torch.equal(param.detach(), initial[name])
            bucket = changed_trainable if param.requires_grad else changed_frozen
            if differs:
                bucket.setdefault(role, []).append(name)
    return changed_trainable, changed_frozen


def test_full_mode_trains_actor_and_critic_only_and_reports_everything(
    random_lm_dir, random_rm_dir, prompt_file, tmp_path, captured
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.rlhf.policy import ValueModel

    ptx = tmp_path / "ptx.txt"
    ptx.write_text("The coffee was warm and the staff were friendly.\nThe train was late.\n", encoding="utf-8")
    reporter = RecordingReporter()
    config = make_config(random_lm_dir, random_rm_dir, prompt_file, tmp_path / "out", ptx_coef=0.5,
                         ptx_dataset=str(ptx), ptx_batch_size=2, kl_target=0.5, kl_horizon=100)
    result = train_ppo(config, reporter=reporter)

    assert result.iterations == 2 and not result.stopped
    trainable, frozen = _changes(captured)
    assert frozen == {}, f"frozen weights changed: {frozen}"
    assert "actor" in trainable and "critic" in trainable
    models = captured["models"]
    assert all(not p.requires_grad for p in models.reference.parameters())
    assert all(not p.requires_grad for p in models.reward_model.parameters())
    assert len(trainable["actor"]) > 10 and "value_head.weight" in trainable["critic"]

    # Metrics every iteration, a sample table, the evaluation before and after.
    assert sorted(reporter.by_step()) == [1, 2]
    for metrics in reporter.by_step().values():
        assert REQUIRED_METRICS <= set(metrics), REQUIRED_METRICS - set(metrics)
        assert "ptx_loss" in metrics and metrics["ptx_loss"] > 0
    assert reporter.by_step()[1]["beta"] == pytest.approx(0.05)
    assert reporter.by_step()[2]["beta"] != reporter.by_step()[1]["beta"]  # adaptive KL moved β
    assert reporter.samples[1] and {"prompt", "response", "reward", "score", "kl"} <= set(reporter.samples[1][0])
    assert "before" in reporter.evaluations[0]
    final = reporter.evaluations[-1]
    assert {"rm_score", "kl", "n_prompts"} <= set(final["before"]) and final["before"]["kl"] == 0.0
    assert {"rm_score", "kl", "win_rate"} <= set(final["after"])
    assert 0.0 <= final["after"]["win_rate"] <= 1.0
    assert "oracle_score" not in final["after"]  # not demo prompts

    # Outputs: the policy in Hugging Face format with its tokenizer, the value model, config.json.
    policy = AutoModelForCausalLM.from_pretrained(result.policy_dir)
    AutoTokenizer.from_pretrained(result.policy_dir)
    start = AutoModelForCausalLM.from_pretrained(random_lm_dir)
    assert any(not torch.equal(a, b) for a, b in zip(policy.state_dict().values(), start.state_dict().values()))
    value_model = ValueModel.from_pretrained(result.value_model_dir)
    torch.testing.assert_close(value_model.value_head.weight, models.critic.value_head.weight.detach().cpu())
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["rollout_batch_size"] == 8 and (tmp_path / "out" / "evaluation.json").exists()
    assert reporter.starts == [(2, 0)]
    assert reporter.outputs == [{"policy": str(result.policy_dir), "value_model": str(result.value_model_dir)}]


def models_logprobs(models):
    """(reference log-probs, actor log-probs, sequences) of a fixed response under the PPOModels."""
    from training.rlhf.rollout import join_prompt_response, response_logprobs
    from training.rlhf.sampling import left_pad

    tokenizer = models.tokenizer
    prompt_ids, prompt_mask = left_pad([tokenizer("Review the jazz club:")["input_ids"]], tokenizer.pad_token_id)
    sequences = join_prompt_response(prompt_ids, prompt_mask, torch.tensor([[40, 41, 42]]), torch.ones(1, 3))
    with torch.no_grad():
        reference = models.reference_logprobs(sequences, temperature=1.0)
        adapted, _ = response_logprobs(models.actor, sequences, temperature=1.0)
    return reference, adapted, sequences


def test_lora_memory_mode_trains_adapters_only(
    random_lm_dir, random_rm_dir, prompt_file, tmp_path, captured, monkeypatch
):
    from transformers import AutoModelForCausalLM

    from training.rlhf.reward_model import RewardModel, pad_sequences
    from training.rlhf.rollout import response_logprobs

    checked: dict = {}
    original_save = ppo_trainer.save_policy

    def save_policy(actor, tokenizer, directory):  # the LoRA actor is merged on save: compare before that
        checked["changes"] = _changes(captured)
        checked["reference"] = models_logprobs(captured["models"])
        return original_save(actor, tokenizer, directory)

    monkeypatch.setattr(ppo_trainer, "save_policy", save_policy)
    config = make_config(random_lm_dir, random_rm_dir, prompt_file, tmp_path / "out", lora=True, critic_lora=True,
                         lora_r=4, lora_alpha=8.0, lr=5e-3, critic_lr=5e-3, evaluate=False,
                         gradient_checkpointing=True)
    reporter = RecordingReporter()
    result = train_ppo(config, reporter=reporter)
    models = captured["models"]
    assert models.reference is None and models.critic_shares_reward_backbone

    trainable, frozen = checked["changes"]
    assert frozen == {}, f"frozen weights changed: {frozen}"
    assert trainable["actor"] and all("lora_" in name for name in trainable["actor"])
    assert any("lora_" in n for n in trainable["critic"]) and "value_head.weight" in trainable["critic"]
    assert all("lora_" in n or n.startswith("value_head") for n in trainable["critic"])

    # The reference (adapter disabled) is still the starting policy; the adapter itself has moved.
    reference, adapted, sequences = checked["reference"]
    start = AutoModelForCausalLM.from_pretrained(random_lm_dir).eval()
    with torch.no_grad():
        expected, _ = response_logprobs(start, sequences, temperature=1.0)
    torch.testing.assert_close(reference, expected)
    assert not torch.allclose(adapted, expected)
    tokenizer = models.tokenizer

    # The reward model (critic adapter disabled) scores exactly as a freshly loaded copy.
    fresh = RewardModel.from_pretrained(random_rm_dir)
    ids, mask = pad_sequences([[5, 6, 7, tokenizer.eos_token_id], [8, 9, tokenizer.eos_token_id]], pad_id=fresh.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(models.reward_scores(ids, mask), fresh(ids, mask))
        assert not torch.allclose(models.critic(ids, mask)[torch.arange(2), mask.sum(1) - 1], fresh(ids, mask, calibrated=False))

    merged = AutoModelForCausalLM.from_pretrained(result.policy_dir)
    assert not any("lora" in name for name in merged.state_dict())
    assert (result.output_dir / "policy_adapter" / "adapter_config.json").exists()
    [outputs] = reporter.outputs
    assert set(outputs) == {"policy", "value_model", "policy_adapter"}
    assert all(Path(path).is_dir() for path in outputs.values())


def test_resumed_run_reaches_the_same_state(random_lm_dir, random_rm_dir, prompt_file, tmp_path):
    from safetensors.torch import load_file

    common = dict(iterations=4, checkpoint_every=2, sample_every=0, evaluate=False, kl_target=0.5, kl_horizon=64,
                  score_norm="running", kl_estimator="k3")
    straight = train_ppo(make_config(random_lm_dir, random_rm_dir, prompt_file, tmp_path / "a", **common))
    first = RecordingReporter(stop_after=2)
    half = train_ppo(make_config(random_lm_dir, random_rm_dir, prompt_file, tmp_path / "b", **common), reporter=first)
    assert half.stopped and half.iterations == 2 and half.checkpoint.name == "iter-000002"
    assert half.policy_dir is None and sorted(first.by_step()) == [1, 2]
    with pytest.raises(ConfigError, match="resume"):  # a fresh start over existing checkpoints is refused
        resolve_resume(make_config(random_lm_dir, random_rm_dir, prompt_file, tmp_path / "b", **common))
    second = RecordingReporter()
    resumed = train_ppo(make_config(random_lm_dir, random_rm_dir, prompt_file, tmp_path / "b", resume="last",
                                    **common), reporter=second)
    assert resumed.iterations == straight.iterations == 4 and sorted(second.by_step()) == [3, 4]
    # on_start carries the resumed iteration; only a finished run reports outputs, which exist
    assert first.starts == [(4, 0)] and second.starts == [(4, 2)]
    assert first.outputs == [] and [sorted(o) for o in second.outputs] == [["policy", "value_model"]]
    assert all(Path(path).is_dir() for path in second.outputs[0].values())

    a, b = tmp_path / "a" / "checkpoints" / "iter-000004", tmp_path / "b" / "checkpoints" / "iter-000004"
    for name in ("model.safetensors", "model_1.safetensors"):  # actor, critic
        x, y = load_file(a / name), load_file(b / name)
        assert x.keys() == y.keys() and len(x) > 10
        for key in x:
            assert torch.equal(x[key], y[key]), f"{name}:{key} differs after resume"
    for name in ("optimizer.bin", "optimizer_1.bin", "scheduler.bin", "scheduler_1.bin"):
        x, y = torch.load(a / name, weights_only=False), torch.load(b / name, weights_only=False)
        _assert_same(x, y, name)
    kl_a, kl_b = (torch.load(d / "custom_checkpoint_0.pkl", weights_only=False) for d in (a, b))
    assert kl_a == kl_b and kl_a["value"] != 0.05
    state_a, state_b = (torch.load(d / "custom_checkpoint_1.pkl", weights_only=False) for d in (a, b))
    state_a.pop("elapsed"), state_b.pop("elapsed")
    _assert_same(state_a, state_b, "trainer state")
    assert state_a["iteration"] == 4
    assert straight.metrics["reward"] == resumed.metrics["reward"]
    assert straight.metrics["beta"] == resumed.metrics["beta"]


def _assert_same(x, y, where):
    if isinstance(x, torch.Tensor):
        assert torch.equal(x, y), where
    elif isinstance(x, dict):
        assert x.keys() == y.keys(), where
        for key in x:
            _assert_same(x[key], y[key], f"{where}.{key}")
    elif isinstance(x, list | tuple):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            _assert_same(u, v, f"{where}[{i}]")
    else:
        assert x == y, where


def test_temperature_is_used_for_the_ratio_and_the_kl(random_lm_dir, random_rm_dir, prompt_file, tmp_path):
    """One PPO epoch with the whole rollout as one mini-batch: every micro-batch sees the policy that sampled
    the rollout, so the ratio must be exactly 1 — which holds only if the rollout's log-probs and the
    update's use the same temperature. At iteration 1 the policy is the reference: the KL must be 0, which
    holds only if the reference's log-probs use that temperature too."""
    reporter = RecordingReporter()
    config = make_config(random_lm_dir, random_rm_dir, prompt_file, tmp_path / "out", iterations=1, ppo_epochs=1,
                         mini_batch_size=8, micro_batch_size=4, temperature=0.4, evaluate=False)
    train_ppo(config, reporter=reporter)
    metrics = reporter.by_step()[1]
    assert metrics["approx_kl"] < 1e-9
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["clip_fraction"] == 0.0
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6)


def test_temperature_mismatch_would_be_caught(random_lm_dir, random_rm_dir, prompt_file, tmp_path, monkeypatch):
    """The check above can fail: a trainer that forgot the temperature in the update shows a ratio ≠ 1."""
    from training.rlhf import rollout

    original = rollout.response_logprobs

    def forgetful(model, sequences, *, temperature, with_entropy=False):
        return original(model, sequences, temperature=1.0 if with_entropy else temperature,
                        with_entropy=with_entropy)

    monkeypatch.setattr(ppo_trainer, "response_logprobs", forgetful)
    reporter = RecordingReporter()
    config = make_config(random_lm_dir, random_rm_dir, prompt_file, tmp_path / "out", iterations=1, ppo_epochs=1,
                         mini_batch_size=8, micro_batch_size=4, temperature=0.4, evaluate=False)
    train_ppo(config, reporter=reporter)
    assert reporter.by_step()[1]["approx_kl"] > 1e-3


def test_critic_from_the_policy_and_a_reward_model_with_another_tokenizer(
    random_lm_dir, random_lm_no_pad_dir, prompt_file, tmp_path, captured
):
    """A reward model whose tokenizer differs from the policy's scores the response text (re-tokenised); the
    critic then starts from the policy's backbone with a zero value head (it cannot read the RM's ids)."""
    from transformers import AutoModelForCausalLM

    from training.rlhf.policy import ModelSettings, build_ppo_models, tokenizers_compatible
    from training.rlhf.reward_model import RewardModel

    other_rm = RewardModel.from_backbone(str(random_lm_no_pad_dir)).save_pretrained(tmp_path / "other-rm")
    with pytest.raises(ValueError, match="critic_init=policy"):
        build_ppo_models(ModelSettings(policy=str(random_lm_dir), reward_model=str(other_rm)))
    reporter = RecordingReporter()
    config = make_config(random_lm_dir, other_rm, prompt_file, tmp_path / "out", iterations=1, critic_init="policy",
                         evaluate=False, stop_token=".")
    train_ppo(config, reporter=reporter)
    models = captured["models"]
    assert not models.rm_reads_policy_ids
    assert not tokenizers_compatible(models.tokenizer, models.reward_model.tokenizer)
    initial = captured["initial"]["critic"]
    assert torch.count_nonzero(initial["value_head.weight"]) == 0 and torch.count_nonzero(initial["value_head.bias"]) == 0
    start = AutoModelForCausalLM.from_pretrained(random_lm_dir)
    torch.testing.assert_close(initial["backbone.h.0.attn.c_attn.weight"], start.transformer.h[0].attn.c_attn.weight)
    assert reporter.by_step()[1]["rm_score"] == reporter.by_step()[1]["rm_score"]  # scored (not NaN)


def test_stop_token_resolution(random_lm_dir):
    from transformers import AutoTokenizer

    from training.rlhf.ppo_trainer import resolve_stop_ids

    tokenizer = AutoTokenizer.from_pretrained(random_lm_dir)
    eos = tokenizer.eos_token_id
    assert resolve_stop_ids(tokenizer, "eos") == [eos]
    period = tokenizer(".", add_special_tokens=False)["input_ids"]
    assert resolve_stop_ids(tokenizer, ".") == [period[0], eos]
    with pytest.raises(ConfigError, match="single token"):
        resolve_stop_ids(tokenizer, "not one token at all")


@pytest.mark.parametrize("critic_lora", [False, True])
def test_critic_starts_from_the_calibrated_reward_model(random_lm_dir, tmp_path, critic_lora):
    """InstructGPT initialises the value function from the RM; the returns are built from the calibrated
    score, so the critic's value at the EOS token must equal the calibrated score, not the raw head output."""
    from training.rlhf.calibration import Calibration
    from training.rlhf.policy import ModelSettings, build_ppo_models
    from training.rlhf.reward_model import RewardModel, last_token_index, pad_sequences

    torch.manual_seed(2)
    rm = RewardModel.from_backbone(str(random_lm_dir))
    rm.calibration = Calibration(bias=1.74, gain=0.37)
    rm_dir = rm.save_pretrained(tmp_path / "rm")
    models = build_ppo_models(ModelSettings(policy=str(random_lm_dir), reward_model=str(rm_dir),
                                            lora=critic_lora, critic_lora=critic_lora))
    pairs = [("Review the jazz club:", " The band was loud."), ("Tell me about the bakery:", " Fresh bread!"),
             ("Describe the night train:", " Late.")]
    ids, mask = pad_sequences(models.reward_model.encode([p for p, _ in pairs], [r for _, r in pairs]),
                              pad_id=models.reward_model.pad_token_id, side="right")
    with torch.no_grad():
        values = models.critic(ids, mask)
        scores = models.reward_scores(ids, mask)
        raw = models.reward_model(ids, mask, calibrated=False)
    at_eos = values[torch.arange(len(pairs)), last_token_index(mask)]
    torch.testing.assert_close(at_eos, scores, atol=1e-5, rtol=1e-5)
    assert (at_eos - raw).abs().min() > 0.5  # the raw score is far off (the check can fail)


@pytest.mark.parametrize("critic_lora", [False, True])
def test_no_dropout_while_logprobs_are_computed(random_lm_dir, random_rm_dir, prompt_file, tmp_path, critic_lora):
    """lora_dropout > 0: the rollout's log-probs and the update's come from the same dropout-free policy, so
    with one PPO epoch of one mini-batch every ratio is 1 — at iteration 2 as well, where the adapters are no
    longer zero (at iteration 1 LoRA's zero-initialised B hides any dropout)."""
    reporter = RecordingReporter()
    config = make_config(random_lm_dir, random_rm_dir, prompt_file, tmp_path / "out", iterations=2, ppo_epochs=1,
                         mini_batch_size=8, micro_batch_size=4, lora=True, critic_lora=critic_lora,
                         lora_dropout=0.5, evaluate=False, kl_target=0.0, sample_every=0)
    train_ppo(config, reporter=reporter)
    for step in (1, 2):
        metrics = reporter.by_step()[step]
        assert metrics["approx_kl"] < 1e-12 and metrics["clip_fraction"] == 0.0, step
        assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-6), step
    assert reporter.by_step()[1]["kl"] == pytest.approx(0.0, abs=1e-6)
