"""The worker with the real trainer: `manage.py train_rm --run-id N` on the tiny model and a tiny K-wise
dataset. A crash (missing data) ends failed with the trainer's traceback; a cancel stops at the next step with
a checkpoint, and resuming continues from that checkpoint in the same directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.helpers import cancel_after_step, write_kwise_snapshot
from training import launching, tasks
from training.models import Checkpoint, Metric, TrainingRun

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def rm_config(roots_in_tmp, tiny_model_dir):
    dataset = roots_in_tmp["data"] / "snap"
    write_kwise_snapshot(dataset, train=32, test=8)

    def make(**overrides) -> dict:
        return {"model": str(tiny_model_dir), "dataset": str(dataset), "batch_size": 2, "learning_rate": 1e-3,
                "log_every": 1, "checkpoint_every": 0, **overrides}

    return make


def test_a_crashing_trainer_leaves_its_traceback_on_the_run(rm_config, roots_in_tmp):
    config = rm_config(dataset=str(roots_in_tmp["data"] / "gone"), max_steps=2)
    run = launching.launch_run(kind="rm", options=config)
    tasks.execute_training_run.call(run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED
    assert run.exit_code == 1
    assert "Traceback (most recent call last)" in run.error and "gone" in run.error
    assert "CommandError" in Path(run.log_path).read_text()  # the command's one-line summary in the log


def test_cancel_stops_with_a_checkpoint_and_resume_continues_from_it(rm_config):
    run = launching.launch_run(kind="rm", options=rm_config(epochs=40))  # 640 steps: far from done

    canceller = cancel_after_step(run, step=3)
    tasks.execute_training_run.call(run.pk)
    canceller.join(timeout=10)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.CANCELLED, run.error
    checkpoint = Checkpoint.objects.get(run=run)
    assert Path(checkpoint.path, "trainer_state.json").is_file()
    stopped_at = checkpoint.step
    assert 3 <= stopped_at < 640
    assert max(Metric.objects.filter(run=run, name="loss").values_list("step", flat=True)) == stopped_at

    resumed = launching.resume_run(run=run)
    assert resumed.config["resume"] == "last" and resumed.output_dir == run.output_dir
    # Shorten the rest of the schedule so the test ends soon: stop a few steps after the checkpoint.
    TrainingRun.objects.filter(pk=resumed.pk).update(config={**resumed.config, "max_steps": stopped_at + 2})
    tasks.execute_training_run.call(resumed.pk)
    resumed.refresh_from_db()
    assert resumed.status == TrainingRun.Status.SUCCEEDED, resumed.error
    steps = sorted(Metric.objects.filter(run=resumed, name="loss").values_list("step", flat=True))
    assert resumed.pk == run.pk  # one run page per training
    assert steps == [*range(1, stopped_at + 3)]  # continued from the checkpoint, appended to the same run
    assert Path(resumed.output_dir, "reward_model.json").is_file()
