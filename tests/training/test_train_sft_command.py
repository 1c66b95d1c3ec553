"""`manage.py train_sft`: a recorded SFT run with metrics, held-out loss and perplexity, samples and the saved
model; snapshots by id or hash (a rankings snapshot refused, and train_rm refusing an SFT one); the prompt format
from the snapshot's manifest; queued runs by --run-id; a graceful cancel with a checkpoint; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from tests.training.helpers import SFT_ANSWER, write_kwise_snapshot, write_sft_snapshot
from training.models import Checkpoint, Metric, Sample, TrainingRun

pytestmark = pytest.mark.django_db

FAST = {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-3, "warmup_ratio": 0.0, "checkpoint_every": 0,
        "sample_prompts": 2, "max_new_tokens": 12, "no_progress": True}


@pytest.fixture
def runs_root(roots_in_tmp) -> Path:
    return roots_in_tmp["runs"]


@pytest.fixture
def sft_dir(tmp_path) -> Path:
    write_sft_snapshot(tmp_path / "sft")
    return tmp_path / "sft"


def snapshot_row(path: Path, *, kind: str, digest: str):
    from annotate.models import DatasetSnapshot, Project

    project, _ = Project.objects.get_or_create(name="reviews")
    return DatasetSnapshot.objects.create(project=project, kind=kind, path=str(path), format="jsonl",
                                          content_hash=digest + "0" * (64 - len(digest)))


def test_train_sft_records_a_succeeded_run(tiny_model_dir, sft_dir, tmp_path, runs_root, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sft-out"
    call_command("train_sft", dataset=str(sft_dir), model=str(tiny_model_dir), output_dir=str(out), name="first",
                 **FAST)
    run = TrainingRun.objects.get()
    assert run.kind == TrainingRun.Kind.SFT and run.status == TrainingRun.Status.SUCCEEDED and run.name == "first"
    assert run.output_dir == str(out.resolve()) and run.config["max_steps"] == 4 and not run.error
    for name in ("loss", "lr", "grad_norm", "tokens_per_s"):
        assert list(Metric.objects.filter(run=run, name=name).values_list("step", flat=True)) == [1, 2, 3, 4], name
    assert Metric.objects.filter(run=run, name="eval/perplexity", step=4).exists()
    before, after = run.evaluation["before"], run.evaluation["after"]
    assert after["loss"] < before["loss"] - 0.3 and "oracle" in after["samples"]  # here 2.93 → 1.22
    assert run.summary["step"] == 4
    samples = list(Sample.objects.filter(run=run))
    assert len(samples) == 2 and samples[0].extra["demonstration"] == SFT_ANSWER and "before" in samples[0].extra
    assert run.outputs == {"model": str(out.resolve() / "model")} and run.output("model") is not None
    assert AutoModelForCausalLM.from_pretrained(run.output("model")) is not None
    printed = capsys.readouterr().out
    assert f"Created {run}" in printed and "succeeded" in printed and "held-out loss after" in printed


def test_snapshot_by_hash_links_the_run_and_brings_its_prompt_format(tiny_model_dir, tmp_path, runs_root):
    from training.rlhf.tiny_model import add_chat_template

    chat_model = add_chat_template(tiny_model_dir, tmp_path / "chat-model")
    write_sft_snapshot(tmp_path / "chat-sft", prompt_format="chat", system_prompt="Be kind.")
    snapshot = snapshot_row(tmp_path / "chat-sft", kind="sft", digest="5f7aaa")
    call_command("train_sft", snapshot="5f7aaa", model=str(chat_model), **{**FAST, "max_steps": 1})
    run = TrainingRun.objects.get()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    assert run.snapshot == snapshot and run.project == snapshot.project
    assert run.config["dataset"] == snapshot.path
    assert run.config["prompt_format"] == "chat" and run.config["system_prompt"] == "Be kind."  # from the manifest
    assert run.output_dir == str((runs_root / f"sft-{run.pk}").resolve())  # the default output directory
    # a format that contradicts the snapshot's is refused before any run is recorded
    with pytest.raises(CommandError, match="--prompt-format: The demonstrations were written for the chat template"):
        call_command("train_sft", snapshot=str(snapshot.pk), model=str(chat_model), prompt_format="plain")
    assert TrainingRun.objects.count() == 1


def test_each_trainer_refuses_the_other_kind_of_snapshot(tiny_model_dir, sft_dir, tmp_path, runs_root):
    write_kwise_snapshot(tmp_path / "rankings", train=4, test=2)
    rankings = snapshot_row(tmp_path / "rankings", kind="rankings", digest="aaaaaa")
    demos = snapshot_row(sft_dir, kind="sft", digest="bbbbbb")
    with pytest.raises(CommandError, match=rf"--snapshot: Snapshot {rankings.pk} \(rankings\) holds Rankings"
                                           r".*SFT needs a demonstrations \(SFT\) snapshot"):
        call_command("train_sft", snapshot=str(rankings.pk), model=str(tiny_model_dir))
    with pytest.raises(CommandError, match=rf"--snapshot: Snapshot {demos.pk} \(sft\) holds Demonstrations"
                                           r".*a reward model needs a rankings snapshot"):
        call_command("train_rm", snapshot="bbbbbb", model=str(tiny_model_dir))
    assert not TrainingRun.objects.exists()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"dataset": "/nowhere/demos.jsonl"}, "Dataset not found: /nowhere/demos.jsonl"),
        ({"model": "/nowhere/model"}, "Model not found: /nowhere/model"),
        ({"epochs": 0}, "--epochs: must be an integer ≥ 1"),
        ({"system_prompt": "Hi"}, "--system-prompt: system_prompt needs prompt_format 'chat'"),
        ({"snapshot": "1"}, "not both"),
        ({"dataset": None}, "Give --snapshot"),
        ({"model": None}, "--model is required"),
    ],
)
def test_bad_options_are_command_errors_and_create_no_run(tiny_model_dir, sft_dir, runs_root, options, message):
    values = {"dataset": str(sft_dir), "model": str(tiny_model_dir), **options}
    values = {k: v for k, v in values.items() if v is not None}
    with pytest.raises(CommandError, match=message):
        call_command("train_sft", **values)
    assert not TrainingRun.objects.exists()


def test_a_broken_dataset_marks_the_run_failed_with_its_traceback(tiny_model_dir, tmp_path, runs_root):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "p", "response": "r"}\n{"prompt": "q", "response": "  "}\n', encoding="utf-8")
    with pytest.raises(CommandError, match=r"failed: .*broken\.jsonl:2: field 'response': must not be blank"):
        call_command("train_sft", dataset=str(path), model=str(tiny_model_dir), **FAST)
    run = TrainingRun.objects.get()
    assert run.status == TrainingRun.Status.FAILED and "DatasetError" in run.error


def test_run_id_executes_a_queued_run_and_a_cancel_stops_it_with_a_checkpoint(tiny_model_dir, sft_dir, runs_root):
    from training.rlhf.configs import config_to_dict
    from training.rlhf.sft_config import SFTConfig
    from training.services import create_run

    config = SFTConfig(model=str(tiny_model_dir), dataset=str(sft_dir), max_steps=3, batch_size=4,
                       checkpoint_every=0, sample_prompts=0)
    run = create_run(kind="sft", config=config_to_dict(config))
    with pytest.raises(CommandError, match="give no other training options"):
        call_command("train_sft", run_id=run.pk, epochs=2)
    TrainingRun.objects.filter(pk=run.pk).update(cancel_requested=True)  # as if asked right after it started
    call_command("train_sft", run_id=run.pk, no_progress=True)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.CANCELLED and run.summary["step"] == 1
    [checkpoint] = Checkpoint.objects.filter(run=run)
    assert checkpoint.step == 1 and (Path(checkpoint.path) / "trainer_state.json").exists()
    assert run.output("model") is None
    rm = create_run(kind="rm", config={})
    with pytest.raises(CommandError, match="not a SFT run"):
        call_command("train_sft", run_id=rm.pk)


def test_only_the_main_process_writes_to_the_database(tiny_model_dir, sft_dir, runs_root, monkeypatch):
    monkeypatch.setenv("RANK", "1")  # what accelerate launch sets in the second process
    with pytest.raises(CommandError, match="give --out"):
        call_command("train_sft", dataset=str(sft_dir), model=str(tiny_model_dir))
    assert not TrainingRun.objects.exists()


def test_the_sft_model_is_the_reward_models_backbone_through_the_commands(tiny_model_dir, sft_dir, tmp_path,
                                                                         runs_root):
    from training import selectors
    from training.rlhf.reward_model import RewardModel

    call_command("train_sft", dataset=str(sft_dir), model=str(tiny_model_dir), **{**FAST, "sample_prompts": 0})
    sft = TrainingRun.objects.get(kind="sft")
    write_kwise_snapshot(tmp_path / "rankings", train=8, test=4)
    call_command("train_rm", dataset=str(tmp_path / "rankings"), model=str(sft.output("model")), max_steps=2,
                 batch_size=4, checkpoint_every=0, no_progress=True)
    rm = TrainingRun.objects.get(kind="rm")
    assert rm.status == TrainingRun.Status.SUCCEEDED and rm.config["model"] == str(sft.output("model"))
    assert RewardModel.from_pretrained(rm.output("reward_model")) is not None
    assert [node.label for node in selectors.lineage(run=rm).upstream][0] == str(sft)
    assert str(rm) in [node.label for node in selectors.lineage(run=sft).downstream]
