"""The reward-model trainer on a random tiny GPT-2 (training/rlhf/rm_trainer.py, rm_config.py, rm_cli.py):
weights move (and frozen ones don't under LoRA), metrics every step, checkpoints, resume that continues the
same run, graceful stop, calibration, the saved directory, the config and the plain CLI."""

import argparse
import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from tests.rlhf.recording import RecordingReporter
from training.rlhf.configs import ConfigError, add_config_arguments, config_from_args, describe_fields
from training.rlhf.reward_model import RewardModel
from training.rlhf.rm_config import RewardModelConfig
from training.rlhf.rm_trainer import (
    EncodedRanking,
    RankingCollator,
    find_last_checkpoint,
    rewards_by_ranking,
    train_reward_model,
)


def config_for(model_dir, dataset, out, **overrides):
    values = {"model": str(model_dir), "dataset": str(dataset), "output_dir": str(out), "batch_size": 4,
              "learning_rate": 1e-3, "warmup_ratio": 0.0, "checkpoint_every": 0, "log_every": 1, "seed": 7,
              "eval_batch_size": 16}
    values.update(overrides)
    return RewardModelConfig(**values)


def trainable_snapshot(model: RewardModel) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_collator_keeps_each_rankings_responses_together():
    items = [EncodedRanking([[5, 6], [7]], [0, 1]), EncodedRanking([[1, 2, 3], [4], [5], [6]], [2, 0, 1, 1])]
    batch = RankingCollator(pad_id=0, padding_side="left")(items)
    assert batch["input_ids"].shape == (6, 3)
    assert batch["input_ids"][1].tolist() == [0, 0, 7] and batch["attention_mask"][1].tolist() == [0, 0, 1]
    assert batch["response_index"].tolist() == [[0, 1, -1, -1], [2, 3, 4, 5]]
    assert batch["response_mask"].tolist() == [[True, True, False, False], [True] * 4]
    assert batch["ranks"][1].tolist() == [2, 0, 1, 1]
    flat = torch.tensor([10.0, 11.0, 12.0, 13.0, 14.0, 15.0])
    assert rewards_by_ranking(flat, batch["response_index"])[1].tolist() == [12.0, 13.0, 14.0, 15.0]


def test_a_few_steps_change_the_weights_and_everything_is_reported(random_lm_dir, ranking_dataset, tmp_path):
    reporter = RecordingReporter()
    config = config_for(random_lm_dir, ranking_dataset, tmp_path / "out", max_steps=3, calibration_gain=True)
    torch.manual_seed(config.seed)
    initial = RewardModel.from_backbone(str(random_lm_dir))  # the same init the trainer draws (seeded)
    before = trainable_snapshot(initial)
    result = train_reward_model(config, reporter=reporter)

    assert result.steps == 3 and not result.stopped and result.model_dir == tmp_path / "out"
    assert reporter.train_steps() == [1, 2, 3]
    for _, metrics in reporter.metrics:
        if "loss" in metrics:
            assert {"loss", "accuracy", "margin", "lr", "tokens_per_s", "grad_norm", "epoch"} <= set(metrics)
            assert metrics["tokens_per_s"] > 0 and 0 <= metrics["accuracy"] <= 1
    trained = RewardModel.from_pretrained(result.model_dir)
    after = trainable_snapshot(trained)
    changed = [n for n in before if n in after and not torch.equal(before[n], after[n])]
    assert any(n.startswith("backbone.") for n in changed) and "score_head.bias" in changed

    # evaluation on the held-out split, reported once and saved with the model
    [evaluation] = reporter.evaluations
    heldout = evaluation["heldout"]
    assert heldout["rankings"] == 6 and heldout["pairs"] > 0 and 0 <= heldout["accuracy"] <= 1
    assert set(heldout["per_annotator"]) == {"ann-0"} and set(heldout["per_k"]) == {"4"}
    meta = json.loads((result.model_dir / "reward_model.json").read_text())
    assert meta["evaluation"]["heldout"]["accuracy"] == heldout["accuracy"]
    assert meta["training_config"]["max_steps"] == 3 and len(meta["snapshot_hash"]) == 64
    assert json.loads((result.model_dir / "config.json").read_text())["learning_rate"] == 1e-3
    assert json.loads((result.model_dir / "evaluation.json").read_text())["heldout"]["pairs"] == heldout["pairs"]

    # calibration (with gain): the held-out responses score mean 0, std 1 when the saved model is loaded
    from training.rlhf.data import load_ranking_records, unique_responses

    pairs = unique_responses(load_ranking_records(ranking_dataset, split="test"))
    scores = torch.tensor(trained.score_texts([p for p, _ in pairs], [r for _, r in pairs]), dtype=torch.float64)
    assert float(scores.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(scores.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    assert evaluation["calibration"]["n"] == len(pairs)


def test_lora_changes_adapters_and_head_but_not_frozen_weights(random_lm_dir, ranking_dataset, tmp_path):
    config = config_for(random_lm_dir, ranking_dataset, tmp_path / "lora", max_steps=2, lora=True, lora_r=4,
                        calibration_set="none")
    result = train_reward_model(config, reporter=RecordingReporter())
    trained = RewardModel.from_pretrained(result.model_dir)
    assert trained.is_lora and trained.calibration.bias == 0.0
    base = load_file(str(random_lm_dir / "model.safetensors"))
    state = trained.backbone.get_base_model().state_dict()
    frozen_checked = 0
    for name, tensor in state.items():
        if "lora_" in name:
            continue
        key = "transformer." + name.replace(".base_layer", "")
        if key in base and base[key].shape == tensor.shape:
            assert torch.equal(base[key], tensor), name
            frozen_checked += 1
    assert frozen_checked > 10
    lora_b = [t for n, t in state.items() if "lora_B" in n]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # B starts at 0: it moved
    assert float(trained.score_head.bias.detach().abs()) > 0  # the head (bias initialised to 0) trained


def test_should_stop_checkpoints_and_resume_continues_the_same_run(random_lm_dir, ranking_dataset, tmp_path):
    # the reference: 6 uninterrupted steps (2 epochs of 3 batches; the resume crosses an epoch boundary)
    straight = train_reward_model(config_for(random_lm_dir, ranking_dataset, tmp_path / "a", epochs=2,
                                             batch_size=6, calibration_set="none"), reporter=RecordingReporter())
    assert straight.total_steps == 6

    stopper = RecordingReporter(stop_after=4)
    config = config_for(random_lm_dir, ranking_dataset, tmp_path / "b", epochs=2, batch_size=6,
                        calibration_set="none")
    stopped = train_reward_model(config, reporter=stopper)
    assert stopped.stopped and stopped.steps == 4 and stopped.model_dir is None
    assert stopper.train_steps() == [1, 2, 3, 4]
    assert not (tmp_path / "b" / "reward_model.json").exists()
    checkpoint = find_last_checkpoint(tmp_path / "b")
    assert checkpoint == stopped.checkpoint and stopper.checkpoints == [(4, str(checkpoint))]
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["epoch"] == 1 and state["batches_in_epoch"] == 1
    saved_optimizer = torch.load(checkpoint / "optimizer.bin", weights_only=False)

    with pytest.raises(ConfigError, match="output_dir"):  # a fresh start must not mix with the old run
        train_reward_model(config, reporter=RecordingReporter())

    resumer = RecordingReporter()
    seen_optimizer = {}
    import training.rlhf.rm_trainer as trainer_module

    original = trainer_module._load_checkpoint

    def spy(run, checkpoint_dir, scheduler, total_steps):
        original(run, checkpoint_dir, scheduler, total_steps)
        seen_optimizer["state"] = copy.deepcopy(run.accelerator._optimizers[0].state_dict())  # live tensors
        seen_optimizer["step"] = run.step

    trainer_module._load_checkpoint = spy
    try:
        resumed = train_reward_model(config_for(random_lm_dir, ranking_dataset, tmp_path / "b", epochs=2,
                                                batch_size=6, calibration_set="none", resume="last"),
                                     reporter=resumer)
    finally:
        trainer_module._load_checkpoint = original
    assert resumer.train_steps() == [5, 6] and resumed.steps == 6 and not resumed.stopped
    # on_start carries the resumed step; only the finished run reports its output, a loadable directory
    assert stopper.starts == [(6, 0)] and resumer.starts == [(6, 4)]
    assert stopper.outputs == [] and resumer.outputs == [{"reward_model": str(tmp_path / "b")}]
    assert (tmp_path / "b" / "reward_model.json").exists()
    assert seen_optimizer["step"] == 4
    for key, values in saved_optimizer["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(values[name], seen_optimizer["state"]["state"][key][name])
    # the same result as never stopping: same data order, same optimizer and scheduler state
    a = RewardModel.from_pretrained(straight.model_dir)
    b = RewardModel.from_pretrained(resumed.model_dir)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(pa, pb, atol=1e-6), name


def test_periodic_checkpoints_are_pruned_and_eval_every_reports(random_lm_dir, ranking_dataset, tmp_path):
    reporter = RecordingReporter()
    config = config_for(random_lm_dir, ranking_dataset, tmp_path / "c", max_steps=4, batch_size=3,
                        checkpoint_every=1, keep_checkpoints=2, eval_every=2, calibration_set="train")
    result = train_reward_model(config, reporter=reporter)
    assert [s for s, _ in reporter.checkpoints] == [1, 2, 3]  # none at the last step: the model is saved
    remaining = sorted(p.name for p in (tmp_path / "c" / "checkpoints").iterdir())
    assert remaining == ["step-000002", "step-000003"]
    eval_steps = [s for s, m in reporter.metrics if "eval/accuracy" in m]
    assert eval_steps == [2, 4]  # every 2 steps, and the final evaluation
    assert result.evaluation["calibration"]["set"] == "train"


def test_left_padding_trains_the_same_as_right_padding(random_lm_dir, ranking_dataset, tmp_path):
    results = {}
    for side in ("right", "left"):
        reporter = RecordingReporter()
        train_reward_model(config_for(random_lm_dir, ranking_dataset, tmp_path / side, max_steps=2,
                                      padding_side=side, calibration_set="none"), reporter=reporter)
        results[side] = [m["loss"] for s, m in reporter.metrics if "loss" in m]
    assert results["left"] == pytest.approx(results["right"], abs=1e-5)


def test_mixed_k_single_file_with_a_prompt_split(random_lm_dir, tmp_path, make_rankings, write_jsonl_rows):
    rows = make_rankings(10, k=4, seed=2) + [
        {**r, "prompt_id": "k9-" + r["prompt_id"], "prompt": "K9 " + r["prompt"]} for r in make_rankings(10, k=9, seed=3)
    ]
    path = write_jsonl_rows(rows, tmp_path / "mine.jsonl")
    reporter = RecordingReporter()
    result = train_reward_model(config_for(random_lm_dir, path, tmp_path / "out", max_steps=2,
                                           heldout_fraction=0.3), reporter=reporter)
    heldout = result.evaluation["heldout"]
    assert result.evaluation["data"]["eval_source"].startswith("30%")
    assert heldout["prompts"] == 6 and set(heldout["per_k"]) <= {"4", "9"}


def test_bad_inputs_fail_before_training(random_lm_dir, tmp_path, make_rankings, write_jsonl_rows):
    bad = write_jsonl_rows([{"prompt": "p", "responses": ["a", "b"], "ranking": [[0], [5]]}], tmp_path / "bad.jsonl")
    from training.rlhf.data import DatasetError

    with pytest.raises(DatasetError, match=r"bad\.jsonl:1: field 'ranking'"):
        train_reward_model(config_for(random_lm_dir, bad, tmp_path / "o1"))
    only_train = write_jsonl_rows(make_rankings(4), tmp_path / "d" / "train.jsonl").parent
    with pytest.raises(ConfigError, match="calibration_set"):
        train_reward_model(config_for(random_lm_dir, only_train, tmp_path / "o2", heldout_fraction=0.0))
    with pytest.raises(ConfigError, match="output_dir"):
        train_reward_model(config_for(random_lm_dir, only_train, ""))
    with pytest.raises(OSError, match="could not load a tokenizer from .*no-model"):
        train_reward_model(config_for(tmp_path / "no-model", only_train, tmp_path / "o3"))


# --- config and CLI ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, field",
    [({"model": ""}, "model"), ({"dataset": " "}, "dataset"), ({"epochs": 0}, "epochs"),
     ({"learning_rate": 0.0}, "learning_rate"), ({"batch_size": 0}, "batch_size"),
     ({"warmup_ratio": 1.0}, "warmup_ratio"), ({"max_grad_norm": -1.0}, "max_grad_norm"),
     ({"lora_r": 0}, "lora_r"), ({"lora_dropout": 1.0}, "lora_dropout"), ({"bf16": "maybe"}, "bf16"),
     ({"padding_side": "up"}, "padding_side"), ({"lora_target_modules": []}, "lora_target_modules"),
     ({"lora_target_modules": ["all-linear", "c_attn"]}, "lora_target_modules"),
     ({"heldout_fraction": 1.0}, "heldout_fraction"), ({"eval_split": "train"}, "eval_split"),
     ({"max_length": 4}, "max_length"), ({"checkpoint_every": -1}, "checkpoint_every"),
     ({"calibration_set": ""}, "calibration_set"), ({"epochs": True}, "epochs")],
)
def test_config_validation_names_the_field(overrides, field):
    values = {"model": "m", "dataset": "d", **overrides}
    with pytest.raises(ConfigError) as info:
        RewardModelConfig(**values)
    assert info.value.field == field


def test_config_fields_all_have_help_and_parse_from_the_command_line():
    described = describe_fields(RewardModelConfig)
    assert all(len(d["help"]) > 15 for d in described)
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, RewardModelConfig)
    args = parser.parse_args(["--model", "m", "--dataset", "d", "--lora", "true", "--lora-target-modules", "q_proj",
                              "v_proj", "--bf16", "false", "--epochs", "2", "--calibration-gain", "yes"])
    config = config_from_args(RewardModelConfig, args)
    assert config.lora and config.lora_target_modules == ["q_proj", "v_proj"] and config.epochs == 2
    assert config.bf16 == "false" and config.calibration_gain and config.learning_rate == 1e-5
    assert RewardModelConfig(model="m", dataset="d", bf16=True).bf16 == "true"
    assert RewardModelConfig(model="m", dataset="d", lora_target_modules="c_attn, c_proj").lora_target_modules == [
        "c_attn", "c_proj"]


def test_plain_cli_trains_with_a_jsonl_reporter(random_lm_dir, ranking_dataset, tmp_path, capsys):
    from training.rlhf.rm_cli import main

    out = tmp_path / "cli"
    code = main(["--model", str(random_lm_dir), "--dataset", str(ranking_dataset), "--output-dir", str(out),
                 "--max-steps", "2", "--batch-size", "4", "--learning-rate", "1e-3"])
    assert code == 0
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    kinds = {e["event"] for e in events}
    assert {"log", "metrics", "evaluation"} <= kinds
    assert [e["step"] for e in events if e["event"] == "metrics" and "loss" in e["metrics"]] == [1, 2]
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["output_dir"] == str(out)
    assert RewardModel.from_pretrained(out).score_texts(["a"], [" b"])
    assert main(["--model", str(random_lm_dir), "--dataset", str(tmp_path / "missing"), "--output-dir",
                 str(tmp_path / "x")]) == 2
    with pytest.raises(SystemExit):
        main(["--model", "m", "--dataset", "d", "--output-dir", "o", "--epochs", "0"])
