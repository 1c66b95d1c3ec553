"""`manage.py train_rm`: a recorded run with metrics, evaluation and output directory; snapshots by id or
hash; queued runs by --run-id; failures recorded with their traceback; graceful cancel; clear errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from training.models import Checkpoint, Metric, TrainingRun
from training.rlhf.reward_model import RewardModel

pytestmark = pytest.mark.django_db

FAST = {"max_steps": 2, "batch_size": 4, "learning_rate": 1e-3, "eval_batch_size": 32, "checkpoint_every": 0,
        "no_progress": True}


def ranking_rows(n_prompts: int, *, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for p in range(n_prompts):
        responses = [f" It was {rng.choice(['fresh', 'cold', 'lovely', 'awful'])} number {i}." for i in range(4)]
        order = list(range(4))
        rng.shuffle(order)
        rows.append({"prompt_id": str(p), "prompt": f"Review place {p}:", "responses": responses,
                     "ranking": [[order[0]], [order[1], order[2]], [order[3]]], "annotator": "a1"})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def runs_root(settings, tmp_path) -> Path:
    root = tmp_path / "runs"
    settings.WORKBENCH_RUNS_ROOT = root
    return root


@pytest.fixture
def snapshot_dir(tmp_path) -> Path:
    """A snapshot directory in the jsonl format of docs/architecture.md."""
    rows = ranking_rows(16)
    root = tmp_path / "snap"
    write_jsonl(root / "kwise" / "train.jsonl", rows[:12])
    write_jsonl(root / "kwise" / "test.jsonl", rows[12:])
    (root / "manifest.json").write_text(json.dumps({"format": "jsonl", "content_hash": "c0ffee" + "0" * 58}))
    return root


def test_train_rm_records_a_succeeded_run(tiny_model_dir, snapshot_dir, tmp_path, runs_root, capsys):
    out = tmp_path / "rm-out"
    call_command("train_rm", dataset=str(snapshot_dir), model=str(tiny_model_dir), output_dir=str(out),
                 name="first", **FAST)
    run = TrainingRun.objects.get()
    assert run.kind == TrainingRun.Kind.RM and run.status == TrainingRun.Status.SUCCEEDED and run.name == "first"
    assert run.output_dir == str(out.resolve()) and run.config["output_dir"] == str(out.resolve())
    assert run.config["model"] == str(tiny_model_dir) and run.config["max_steps"] == 2
    assert run.host and run.pid and run.started_at and run.finished_at and not run.error
    for name in ("loss", "accuracy", "margin", "lr", "tokens_per_s"):
        assert list(Metric.objects.filter(run=run, name=name).values_list("step", flat=True)) == [1, 2], name
    assert Metric.objects.filter(run=run, name="eval/accuracy").exists()
    heldout = run.evaluation["heldout"]
    assert heldout["rankings"] == 4 and 0 <= heldout["accuracy"] <= 1 and "calibration" in run.evaluation
    assert run.summary["step"] == 2
    model = RewardModel.from_pretrained(run.output_dir)
    assert json.loads((out / "reward_model.json").read_text())["snapshot_hash"].startswith("c0ffee")
    assert len(model.score_texts(["Review place 1:"], [" It was fresh."])) == 1
    printed = capsys.readouterr().out
    assert f"Created {run}" in printed and "succeeded" in printed and "held-out accuracy" in printed


def test_snapshot_by_id_or_hash_links_the_run(tiny_model_dir, snapshot_dir, runs_root):
    from annotate.models import DatasetSnapshot, Project

    project = Project.objects.create(name="reviews")
    snapshot = DatasetSnapshot.objects.create(project=project, path=str(snapshot_dir), format="jsonl",
                                              content_hash="c0ffee" + "0" * 58)
    call_command("train_rm", snapshot="c0ffee00", model=str(tiny_model_dir), **FAST)
    run = TrainingRun.objects.get()
    assert run.status == TrainingRun.Status.SUCCEEDED
    assert run.snapshot == snapshot and run.project == project and run.config["dataset"] == str(snapshot_dir)
    assert run.output_dir == str((runs_root / f"rm-{run.pk}").resolve())  # the default output directory
    assert (Path(run.output_dir) / "reward_model.json").exists()
    with pytest.raises(CommandError, match="No dataset snapshot with id 999"):
        call_command("train_rm", snapshot="999", model=str(tiny_model_dir))
    with pytest.raises(CommandError, match="hash starts with abcdef"):
        call_command("train_rm", snapshot="abcdef", model=str(tiny_model_dir))


def test_a_broken_dataset_marks_the_run_failed_with_its_traceback(tiny_model_dir, tmp_path, runs_root):
    rows = ranking_rows(8)
    rows[5]["ranking"] = [[0], [1], [9]]
    path = write_jsonl(tmp_path / "broken.jsonl", rows)
    with pytest.raises(CommandError, match=r"failed: .*broken\.jsonl:6: field 'ranking'"):
        call_command("train_rm", dataset=str(path), model=str(tiny_model_dir), **FAST)
    run = TrainingRun.objects.get()
    assert run.status == TrainingRun.Status.FAILED and run.finished_at
    assert "Traceback" in run.error and "broken.jsonl:6" in run.error and "DatasetError" in run.error


@pytest.mark.parametrize(
    "options, message",
    [
        ({"dataset": "/nowhere/data.jsonl"}, "Dataset not found: /nowhere/data.jsonl"),
        ({"model": "/nowhere/model"}, "Model not found: /nowhere/model"),
        ({"epochs": 0}, "--epochs: must be an integer ≥ 1"),
        ({"snapshot": "1"}, "not both"),
        ({"dataset": None}, "Give --snapshot"),
        ({"model": None}, "--model is required"),
        ({"calibration_set": "/nowhere/demos.jsonl"}, "Calibration file not found"),
    ],
)
def test_bad_options_are_command_errors_and_create_no_run(tiny_model_dir, snapshot_dir, runs_root, options, message):
    values = {"dataset": str(snapshot_dir), "model": str(tiny_model_dir), **options}
    values = {k: v for k, v in values.items() if v is not None}
    with pytest.raises(CommandError, match=message):
        call_command("train_rm", **values)
    assert not TrainingRun.objects.exists()


def test_run_id_executes_a_queued_run_from_its_stored_config(tiny_model_dir, snapshot_dir, runs_root):
    from training.rlhf.configs import config_to_dict
    from training.rlhf.rm_config import RewardModelConfig
    from training.services import create_run

    config = RewardModelConfig(model=str(tiny_model_dir), dataset=str(snapshot_dir), max_steps=1, batch_size=4,
                               checkpoint_every=0)
    run = create_run(kind="rm", config=config_to_dict(config))
    with pytest.raises(CommandError, match="give no other training options"):
        call_command("train_rm", run_id=run.pk, epochs=2)
    call_command("train_rm", run_id=run.pk, no_progress=True)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED and run.summary["step"] == 1
    assert run.output_dir == str((runs_root / f"rm-{run.pk}").resolve()) == run.config["output_dir"]
    assert (Path(run.output_dir) / "reward_model.json").exists()
    with pytest.raises(CommandError, match="already ended"):
        call_command("train_rm", run_id=run.pk)
    with pytest.raises(CommandError, match="No training run with id 4242"):
        call_command("train_rm", run_id=4242)
    ppo = create_run(kind="ppo", config={})
    with pytest.raises(CommandError, match="not a reward-model run"):
        call_command("train_rm", run_id=ppo.pk)


def test_a_cancel_request_stops_with_a_checkpoint(tiny_model_dir, snapshot_dir, runs_root):
    from training.rlhf.configs import config_to_dict
    from training.rlhf.rm_config import RewardModelConfig
    from training.services import create_run

    config = RewardModelConfig(model=str(tiny_model_dir), dataset=str(snapshot_dir), max_steps=3, batch_size=4,
                               checkpoint_every=0)
    run = create_run(kind="rm", config=config_to_dict(config))
    TrainingRun.objects.filter(pk=run.pk).update(cancel_requested=True)  # as if asked right after it started
    call_command("train_rm", run_id=run.pk, no_progress=True)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.CANCELLED and run.summary["step"] == 1
    [checkpoint] = Checkpoint.objects.filter(run=run)
    assert checkpoint.step == 1 and (Path(checkpoint.path) / "trainer_state.json").exists()
    assert not (Path(run.output_dir) / "reward_model.json").exists()


def test_only_the_main_process_writes_to_the_database(tiny_model_dir, snapshot_dir, runs_root, monkeypatch):
    from training.rlhf.configs import config_to_dict
    from training.rlhf.rm_config import RewardModelConfig
    from training.services import create_run

    config = RewardModelConfig(model=str(tiny_model_dir), dataset=str(snapshot_dir), max_steps=1, batch_size=4,
                               checkpoint_every=0, calibration_set="none")
    run = create_run(kind="rm", config=config_to_dict(config))
    monkeypatch.setenv("RANK", "1")  # what accelerate launch sets in the second process
    call_command("train_rm", run_id=run.pk, no_progress=True)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.QUEUED and not run.output_dir and not run.started_at
    assert not Metric.objects.filter(run=run).exists()
    with pytest.raises(CommandError, match="give --out"):
        call_command("train_rm", dataset=str(snapshot_dir), model=str(tiny_model_dir))
    assert TrainingRun.objects.count() == 1


def test_a_queued_run_with_an_invalid_config_is_marked_failed(runs_root):
    from training.services import create_run

    run = create_run(kind="rm", config={"model": "m", "dataset": "d", "epochs": 0})
    with pytest.raises(CommandError, match="invalid config: epochs"):
        call_command("train_rm", run_id=run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED and "epochs" in run.error
