"""Fixtures for the dashboard, job and worker tests."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from tests.training.helpers import use_file_sqlite_test_database
from training.models import TrainingRun

# Trainer processes started by the worker must reach the test database: make it a file (see the helper).
use_file_sqlite_test_database()

FAKE_TRAINER = Path(__file__).resolve().parent / "fake_trainer.py"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def roots_in_tmp(settings, tmp_path):
    """Model, data and runs roots in a temporary directory (what forms and launches may name)."""
    models = tmp_path / "models"
    data = tmp_path / "data"
    runs = tmp_path / "runs"
    for path in (models, data, runs):
        path.mkdir()
    settings.WORKBENCH_MODEL_ROOTS = [models.resolve()]
    settings.WORKBENCH_DATA_ROOT = data.resolve()
    settings.WORKBENCH_RUNS_ROOT = runs.resolve()
    return {"models": models.resolve(), "data": data.resolve(), "runs": runs.resolve()}


@pytest.fixture
def model_dir(roots_in_tmp):
    """A model directory under the model root (what the launch forms offer)."""
    path = roots_in_tmp["models"] / "org" / "tiny"
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("boss", password="pw-for-tests-1", is_staff=True)


@pytest.fixture
def annotator(django_user_model):
    return django_user_model.objects.create_user("annie", password="pw-for-tests-1")


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def fake_trainer(monkeypatch):
    """Make the worker run tests/training/fake_trainer.py in `mode` instead of train_rm/train_ppo."""

    def use(mode: str, *, steps: int = 5):
        from training import tasks

        def build_command(*, run):
            return [sys.executable, str(FAKE_TRAINER), "--run-id", str(run.pk), "--mode", mode, "--steps", str(steps)]

        monkeypatch.setattr(tasks, "build_command", build_command)

    return use


def make_ranking(*, prompt, annotator, tiers, display_order=None, flags=None, all_bad=False, seconds=30.0,
                 source="human"):
    from annotate.models import Ranking

    ids = [rid for tier in tiers for rid in tier]
    return Ranking.objects.create(
        prompt=prompt, annotator=annotator, tiers=tiers, display_order=display_order or sorted(ids),
        flags=flags or {}, all_bad=all_bad, seconds_spent=seconds, source=source,
    )


@pytest.fixture
def world(roots_in_tmp, staff, django_user_model):
    """A project with two annotators' rankings, a snapshot, a finished RM run (metrics, evaluation, checkpoint,
    output files), a finished PPO run (samples, before/after evaluation) and a live RM run."""
    from annotate.models import DatasetSnapshot, Project, Prompt, Response
    from training.models import Checkpoint, Metric, Sample

    ann1 = django_user_model.objects.create_user("ann1", password="x")
    ann2 = django_user_model.objects.create_user("ann2", password="x")
    project = Project.objects.create(name="Reviews", annotators_per_prompt=2)
    project.annotators.add(ann1, ann2)
    prompts = []
    for p in range(3):
        prompt = Prompt.objects.create(project=project, text=f"Write a short review of place {p}:")
        ids = [Response.objects.create(prompt=prompt, text=" " + "word " * (i + 1) + f"r{i}.").pk for i in range(4)]
        prompts.append((prompt, ids))
    # ann1 ranks longer first everywhere; ann2 agrees on prompt 0 and reverses prompt 1.
    for prompt, ids in prompts[:2]:
        make_ranking(prompt=prompt, annotator=ann1, tiers=[[ids[3]], [ids[2]], [ids[1]], [ids[0]]],
                     display_order=ids)
    make_ranking(prompt=prompts[0][0], annotator=ann2, tiers=[[ids_] for ids_ in reversed(prompts[0][1])],
                 display_order=prompts[0][1], flags={str(prompts[0][1][0]): ["unhelpful", "broken_text"]})
    make_ranking(prompt=prompts[1][0], annotator=ann2, tiers=[[i] for i in prompts[1][1]],
                 display_order=prompts[1][1], all_bad=True)
    snap_dir = roots_in_tmp["data"] / "snapshots" / "s1"
    snap_dir.mkdir(parents=True)
    snapshot = DatasetSnapshot.objects.create(project=project, path=str(snap_dir), format="jsonl",
                                              content_hash="ab" * 32, counts={"rankings": 4, "pairs": 24})
    now = timezone.now()
    rm = TrainingRun.objects.create(
        kind="rm", name="rm-one", status="succeeded", config={"model": "m", "dataset": str(snap_dir),
                                                              "learning_rate": 0.001},
        project=project, snapshot=snapshot, created_by=staff, started_at=now - timedelta(minutes=3),
        finished_at=now, output_dir=str(roots_in_tmp["runs"] / "rm-x"),
        outputs={"reward_model": str(roots_in_tmp["runs"] / "rm-x")},
        evaluation={"heldout": {"accuracy": 0.8125, "pairs": 48,
                                "per_annotator": {"a1": {"accuracy": 0.9, "pairs": 20}}}},
        summary={"loss": 0.41, "step": 3},
    )
    out = Path(rm.output_dir)
    (out / "checkpoints" / "step-2").mkdir(parents=True)
    (out / "config.json").write_text('{"learning_rate": 0.001}')
    (out / "reward_model.json").write_text("{}")
    Checkpoint.objects.create(run=rm, step=2, path=str(out / "checkpoints" / "step-2"))
    Metric.objects.bulk_create(
        [Metric(run=rm, step=s, name=n, value=v) for s in (1, 2, 3)
         for n, v in (("loss", 1.0 / s), ("accuracy", 0.5 + s / 10), ("lr", 1e-3))]
    )
    ppo = TrainingRun.objects.create(
        kind="ppo", name="ppo-one", status="succeeded", config={"policy": "p"}, project=project,
        reward_model_run=rm, created_by=staff, started_at=now - timedelta(minutes=2), finished_at=now,
        output_dir=str(roots_in_tmp["runs"] / "ppo-y"),
        outputs={"policy": str(roots_in_tmp["runs"] / "ppo-y" / "policy")},
        evaluation={"before": {"rm_score": -0.2, "kl": 0.0}, "after": {"rm_score": 0.9, "kl": 1.5},
                    "win_rate": 0.7},
        summary={"reward": 0.5, "kl": 1.2, "step": 2},
    )
    (Path(ppo.output_dir) / "policy").mkdir(parents=True)
    (Path(ppo.output_dir) / "policy" / "config.json").write_text("{}")
    Metric.objects.bulk_create(
        [Metric(run=ppo, step=s, name=n, value=v) for s in (1, 2) for n, v in (("reward", 0.2 * s), ("kl", 0.5 * s))]
    )
    Sample.objects.bulk_create([
        Sample(run=ppo, step=2, prompt="Write a review:", response=" Lovely <b>place</b>.", reward=0.8, score=0.9,
               kl=0.1, extra={"oracle": 0.7}),
        Sample(run=ppo, step=1, prompt="Write a review:", response=" Bad.", reward=-0.3, score=-0.2, kl=0.05),
    ])
    live = TrainingRun.objects.create(
        kind="rm", name="live", status="running", config={}, created_by=staff, started_at=now, heartbeat_at=now,
        output_dir=str(roots_in_tmp["runs"] / "rm-live"),
    )
    Metric.objects.create(run=live, step=1, name="loss", value=0.9)
    return {"project": project, "snapshot": snapshot, "rm": rm, "ppo": ppo, "live": live, "ann1": ann1,
            "ann2": ann2, "prompts": prompts}
