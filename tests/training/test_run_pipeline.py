"""The run pipeline (training/launching.py), the registry of run kinds, the one reporter (training/reporting.py),
and the actions on a run checked on the server: a refused action is 409 with the reason, a repeated resume
queues one job, and a resume continues the same run (one run page per training)."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import get_commands

from training import launching
from training.models import Checkpoint, TrainingRun
from training.reporting import RunReporter
from training.rlhf.reporter import Reporter
from training.runkinds import RUN_KINDS

pytestmark = pytest.mark.django_db


def test_every_run_kind_has_a_config_a_trainer_and_a_command():
    assert set(RUN_KINDS) == set(TrainingRun.Kind.values)
    commands = get_commands()
    for kind in RUN_KINDS.values():
        assert kind.command in commands
        assert callable(kind.load_trainer())
        assert {"output_dir", "resume"} <= set(kind.config_class.__dataclass_fields__)


def test_the_reporter_records_start_outputs_and_implements_the_protocol(world, tmp_path):
    run = world["live"]
    reporter = RunReporter(run)
    assert isinstance(reporter, Reporter)
    reporter.on_start(total_steps=10, start_step=4)
    reporter.on_outputs({"reward_model": str(tmp_path)})
    run.refresh_from_db()
    assert run.summary["total_steps"] == 10 and run.outputs == {"reward_model": str(tmp_path)}
    assert run.output("reward_model") == tmp_path and run.output("policy") is None


def test_a_launch_refused_by_the_config_leaves_nothing_behind(roots_in_tmp, world):
    before = TrainingRun.objects.count()
    with pytest.raises(launching.LaunchError) as refused:
        launching.launch_run(kind="ppo", options={"policy": "p", "rollout_batch_size": 8, "mini_batch_size": 3},
                             reward_model_run=world["rm"], prompt_project=world["project"])
    assert refused.value.field == "mini_batch_size" and "must divide" in str(refused.value)
    assert TrainingRun.objects.count() == before
    assert not list(roots_in_tmp["runs"].glob("ppo-*/prompts.jsonl"))  # the exported prompts were removed


def test_the_output_directory_is_decided_once_and_the_config_agrees(roots_in_tmp, world):
    run = launching.launch_run(kind="rm", options={"model": "m"}, snapshot=world["snapshot"])
    assert run.output_dir == str(roots_in_tmp["runs"] / f"rm-{run.pk}") == run.config["output_dir"]
    assert run.config["dataset"] == world["snapshot"].path and run.task_id


@pytest.fixture
def ended(world):
    return world["rm"]  # succeeded, with a checkpoint


@pytest.fixture
def api_client_staff(staff):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(staff)
    return client


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_a_repeated_resume_launches_one_run(api_client_staff, ended, status):
    TrainingRun.objects.filter(pk=ended.pk).update(status=status)
    first = api_client_staff.post(f"/api/runs/{ended.pk}/resume/")
    second = api_client_staff.post(f"/api/runs/{ended.pk}/resume/")
    assert first.status_code == 201 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"] == ended.pk  # the same run, queued again
    ended.refresh_from_db()
    assert ended.status == "queued" and len(ended.summary["resumes"]) == 1


def test_the_dashboard_double_click_on_resume_launches_one_run(staff_client, ended):
    TrainingRun.objects.filter(pk=ended.pk).update(status="failed")
    first = staff_client.post(f"/dashboard/runs/{ended.pk}/resume/")
    second = staff_client.post(f"/dashboard/runs/{ended.pk}/resume/")
    assert first["Location"] == second["Location"] == f"/dashboard/runs/{ended.pk}/"
    ended.refresh_from_db()
    assert ended.status == "queued" and len(ended.summary["resumes"]) == 1
    from django_tasks_db.models import DBTaskResult

    assert DBTaskResult.objects.filter(id=ended.task_id).count() == 1


def test_a_succeeded_run_cannot_be_resumed(api_client_staff, staff_client, ended):
    assert Checkpoint.objects.filter(run=ended).exists()
    response = api_client_staff.post(f"/api/runs/{ended.pk}/resume/")
    assert response.status_code == 409 and "succeeded" in response.json()["detail"]
    page = staff_client.post(f"/dashboard/runs/{ended.pk}/resume/")
    assert page.status_code == 409 and "nothing to resume" in page.content.decode()
    ended.refresh_from_db()
    assert ended.status == "succeeded" and "resumes" not in ended.summary


def test_an_active_run_cannot_be_resumed_and_an_ended_one_cannot_be_cancelled(api_client_staff, staff_client, world):
    live, done = world["live"], world["ppo"]
    for client, url, status in ((api_client_staff, f"/api/runs/{live.pk}/resume/", 409),
                                (staff_client, f"/dashboard/runs/{live.pk}/resume/", 409)):
        response = client.post(url)
        assert response.status_code == status and "cancel it first" in response.content.decode()
    response = staff_client.post(f"/dashboard/runs/{done.pk}/cancel/")
    assert response.status_code == 409 and "has already ended" in response.content.decode()
    response = api_client_staff.post(f"/api/runs/{done.pk}/cancel/")
    assert response.status_code == 409 and "has already ended" in response.json()["detail"]
    live.refresh_from_db()
    assert "resumes" not in (live.summary or {})
    done.refresh_from_db()
    assert done.status == "succeeded" and not done.cancel_requested


def test_the_prompts_of_a_project_are_written_by_the_export_service(world, tmp_path):
    from annotate.services.exporting import export_prompts

    path, count = export_prompts(project=world["project"], path=tmp_path / "p.jsonl")
    lines = Path(path).read_text().splitlines()
    assert count == len(lines) == len({p.text for p, _ in world["prompts"]})


def test_a_resume_continues_the_same_run_from_its_checkpoint(api_client_staff, ended):
    """Metrics after the checkpoint are dropped (the trainer reports them again); those up to it stay, so the
    curves of one training are on one page across cancel and resume."""
    from training.models import Metric

    checkpoint = Checkpoint.objects.filter(run=ended).order_by("-step").first()
    for step in (checkpoint.step, checkpoint.step + 1, checkpoint.step + 2):
        Metric.objects.update_or_create(run=ended, name="loss", step=step, defaults={"value": 1.0 / step})
    TrainingRun.objects.filter(pk=ended.pk).update(status="cancelled", error="stopped")
    count = TrainingRun.objects.count()
    response = api_client_staff.post(f"/api/runs/{ended.pk}/resume/")
    assert response.status_code == 201 and response.json()["id"] == ended.pk
    ended.refresh_from_db()
    assert TrainingRun.objects.count() == count
    assert ended.config["resume"] == "last" and ended.config["output_dir"] == ended.output_dir
    assert ended.status == "queued" and ended.task_id and not ended.cancel_requested and ended.error == ""
    steps = set(Metric.objects.filter(run=ended, name="loss").values_list("step", flat=True))
    assert max(steps) == checkpoint.step
    assert ended.summary["resumes"][-1]["from_step"] == checkpoint.step
    assert ended.summary["resumes"][-1]["after"] == "cancelled"
    # Cancelled again and resumed again: still one run, two resumes recorded.
    TrainingRun.objects.filter(pk=ended.pk).update(status="cancelled")
    assert api_client_staff.post(f"/api/runs/{ended.pk}/resume/").json()["id"] == ended.pk
    ended.refresh_from_db()
    assert len(ended.summary["resumes"]) == 2 and TrainingRun.objects.count() == count
