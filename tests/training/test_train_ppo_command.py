"""`manage.py train_ppo`: a recorded PPO run (kind ppo) linked to its reward-model run, with metrics, sample
tables, checkpoints and the before/after evaluation; `--run-id` executes a queued run; clear errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from django.core.management import CommandError, call_command

from tests.rlhf.conftest import build_random_lm
from training.models import Checkpoint, Metric, Sample, TrainingRun
from training.services import create_run

pytestmark = pytest.mark.django_db

SMALL = ["--iterations", "2", "--rollout-batch-size", "8", "--mini-batch-size", "4", "--micro-batch-size", "4",
         "--ppo-epochs", "1", "--response-length", "6", "--sample-every", "1", "--samples-per-table", "2",
         "--eval-fraction", "0.25", "--checkpoint-every", "2", "--no-progress"]


@pytest.fixture(autouse=True)
def _one_thread(_torch_threads):
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> dict[str, Path]:
    from training.rlhf.reward_model import RewardModel

    root = tmp_path_factory.mktemp("ppo-command")
    lm = build_random_lm(root / "policy")
    torch.manual_seed(0)
    rm = RewardModel.from_backbone(str(lm)).save_pretrained(root / "rm")
    return {"policy": lm, "rm": rm, "root": root}


@pytest.fixture
def rm_run(models_dir):
    return TrainingRun.objects.create(kind="rm", status="succeeded", name="rm", output_dir=str(models_dir["rm"]),
                                      outputs={"reward_model": str(models_dir["rm"].resolve())})


@pytest.fixture
def project():
    from annotate.models import Project, Prompt

    project = Project.objects.create(name="Demo reviews")
    for i, place in enumerate(["harbour cafe", "night train", "jazz club", "bike shop"] * 2):
        Prompt.objects.create(project=project, text=f"Write a short review of the {place}{' again' * (i // 4)}:",
                              metadata={"task": "other"})
    Prompt.objects.create(project=project, text="Write a short review of the harbour cafe:", round=2)  # duplicate
    return project


def run_command(*args) -> str:
    out = io.StringIO()
    call_command("train_ppo", *args, stdout=out)
    return out.getvalue()


def test_command_records_a_ppo_run_with_metrics_samples_and_evaluation(models_dir, rm_run, project, tmp_path):
    out_dir = tmp_path / "ppo"
    output = run_command("--policy", str(models_dir["policy"]), "--reward-model", str(rm_run.pk), "--prompts",
                         project.name, "--out", str(out_dir), "--name", "first", *SMALL)
    run = TrainingRun.objects.get(kind="ppo")
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    assert run.reward_model_run == rm_run and run.project == project and run.name == "first"
    assert run.host and run.pid and run.started_at and run.finished_at
    assert Path(run.output_dir) == out_dir.resolve()
    # The project's 8 distinct prompts were exported and the config points at them.
    prompts = [json.loads(line) for line in (out_dir / "prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == 8 and run.config["prompts"] == str(out_dir.resolve() / "prompts.jsonl")
    assert run.config["reward_model"] == str(models_dir["rm"].resolve()) and run.config["iterations"] == 2
    names = set(Metric.objects.filter(run=run, step=2).values_list("name", flat=True))
    assert {"reward", "rm_score", "kl", "beta", "entropy", "approx_kl", "clip_fraction", "value_loss",
            "explained_variance", "ratio_mean", "response_length", "eos_rate", "tokens_per_s"} <= names
    assert Metric.objects.filter(run=run, name="reward").count() == 2
    samples = Sample.objects.filter(run=run)
    assert samples.filter(step=1).count() == 2 and samples.first().response is not None
    assert Checkpoint.objects.filter(run=run, step=2).exists()
    assert {"before", "after"} <= set(run.evaluation) and "win_rate" in run.evaluation["after"]
    assert run.summary["step"] == 2
    assert (out_dir / "policy" / "config.json").exists() and (out_dir / "value_model" / "value_model.json").exists()
    assert "succeeded" in output and "rm_score" in output and "win_rate" in output


def test_run_id_executes_a_queued_run_and_links_its_reward_model(models_dir, rm_run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"Review place {i}:" for i in range(8)) + "\n", encoding="utf-8")
    config = {"policy": str(models_dir["policy"]), "reward_model": str(models_dir["rm"]), "prompts": str(prompts),
              "output_dir": str(tmp_path / "queued"), "iterations": 1, "rollout_batch_size": 4, "mini_batch_size": 4,
              "micro_batch_size": 2, "ppo_epochs": 1, "response_length": 5, "evaluate": False}
    run = create_run(kind="ppo", config=config)
    run_command("--run-id", str(run.pk), "--no-progress")
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    assert run.reward_model_run == rm_run
    assert Metric.objects.filter(run=run, name="kl", step=1).exists()
    with pytest.raises(CommandError, match="already ended"):
        run_command("--run-id", str(run.pk))


def test_a_cancel_request_stops_with_a_checkpoint(models_dir, rm_run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Review one:\nReview two:\n", encoding="utf-8")
    config = {"policy": str(models_dir["policy"]), "reward_model": str(models_dir["rm"]), "prompts": str(prompts),
              "output_dir": str(tmp_path / "cancelled"), "iterations": 3, "rollout_batch_size": 2,
              "mini_batch_size": 2, "micro_batch_size": 2, "response_length": 4, "evaluate": False}
    run = create_run(kind="ppo", config=config)
    TrainingRun.objects.filter(pk=run.pk).update(cancel_requested=True)
    output = run_command("--run-id", str(run.pk), "--no-progress")
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.CANCELLED
    assert run.reward_model_run == rm_run and run.config["reward_model"] == str(models_dir["rm"].resolve())
    assert Checkpoint.objects.filter(run=run, step=0).exists()
    assert "stopped on request" in output


@pytest.mark.parametrize("args,message", [
    (["--reward-model", "RM", "--prompts", "P"], "--policy is required"),
    (["--policy", "POLICY", "--prompts", "P"], "--reward-model is required"),
    (["--policy", "POLICY", "--reward-model", "999999", "--prompts", "P"], "No training run with id 999999"),
    (["--policy", "POLICY", "--reward-model", "POLICY", "--prompts", "P"], "Not a reward model directory"),
    (["--policy", "POLICY", "--reward-model", "RM", "--prompts", "no such project"], "neither a file nor"),
    (["--policy", "POLICY", "--reward-model", "RM", "--prompts", "P", "--mini-batch-size", "3"], "--mini-batch-size"),
    (["--policy", "./missing-model", "--reward-model", "RM", "--prompts", "P"], "Model not found"),
    (["--run-id", "1", "--iterations", "3"], "stored config"),
])
def test_clear_errors_and_no_run_recorded(models_dir, project, args, message):
    replace = {"POLICY": str(models_dir["policy"]), "RM": str(models_dir["rm"]), "P": project.name}
    with pytest.raises(CommandError, match=message):
        run_command(*[replace.get(a, a) for a in args])
    assert not TrainingRun.objects.filter(kind="ppo").exists()


def test_reward_model_run_must_be_a_finished_rm_run(models_dir, project):
    ppo = TrainingRun.objects.create(kind="ppo", status="succeeded")
    running = TrainingRun.objects.create(kind="rm", status="running")
    for run_id, message in ((ppo.pk, "not a reward-model run"), (running.pk, "has not succeeded")):
        with pytest.raises(CommandError, match=message):
            run_command("--policy", str(models_dir["policy"]), "--reward-model", str(run_id), "--prompts", project.name)
