"""The worker with the real SFT trainer: `manage.py train_sft --run-id N` on the tiny model and a tiny SFT
snapshot, queued through the run pipeline like train_rm. Live metrics reach the run while it trains; a cancel
stops at the next step with a checkpoint, and resuming continues from it in the same directory until the model
is saved and reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.helpers import cancel_after_step, write_sft_snapshot
from training import launching, tasks
from training.models import Checkpoint, Metric, TrainingRun

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def sft_options(roots_in_tmp, tiny_model_dir):
    dataset = roots_in_tmp["data"] / "sft"
    write_sft_snapshot(dataset, train=16, test=4)

    def make(**overrides) -> dict:
        return {"model": str(tiny_model_dir), "dataset": str(dataset), "batch_size": 2, "learning_rate": 1e-3,
                "log_every": 1, "checkpoint_every": 0, "sample_prompts": 2, "max_new_tokens": 8, **overrides}

    return make


def test_cancel_stops_with_a_checkpoint_and_resume_continues_to_the_saved_model(sft_options):
    run = launching.launch_run(kind="sft", options=sft_options(epochs=50))  # 400 steps: far from done
    assert run.status == TrainingRun.Status.QUEUED and run.task_id
    assert run.config["prompt_format"] == "plain"  # the snapshot's manifest

    canceller = cancel_after_step(run, step=3)
    tasks.execute_training_run.call(run.pk)
    canceller.join(timeout=10)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.CANCELLED, run.error
    assert run.command[-3:] == ["train_sft", "--run-id", str(run.pk)]  # the kind's command, run by the worker
    checkpoint = Checkpoint.objects.get(run=run)
    assert Path(checkpoint.path, "trainer_state.json").is_file()
    stopped_at = checkpoint.step
    assert 3 <= stopped_at < 400
    assert max(Metric.objects.filter(run=run, name="loss").values_list("step", flat=True)) == stopped_at
    assert run.output("model") is None

    resumed = launching.resume_run(run=run)
    assert resumed.config["resume"] == "last" and resumed.output_dir == run.output_dir
    # Shorten the rest of the schedule so the test ends soon: stop a few steps after the checkpoint.
    TrainingRun.objects.filter(pk=resumed.pk).update(config={**resumed.config, "max_steps": stopped_at + 2})
    tasks.execute_training_run.call(resumed.pk)
    resumed.refresh_from_db()
    assert resumed.status == TrainingRun.Status.SUCCEEDED, resumed.error
    assert resumed.pk == run.pk  # one run page per training
    steps = sorted(Metric.objects.filter(run=resumed, name="loss").values_list("step", flat=True))
    assert steps == [*range(1, stopped_at + 3)]  # continued from the checkpoint, appended to the same run
    assert resumed.output("model") is not None and Path(resumed.output("model"), "sft.json").is_file()
    assert "after" in resumed.evaluation and "before" in resumed.evaluation
