"""The reward model's calibration uses the project's accepted demonstrations by default (InstructGPT §3.5: a
bias so that the labelers' demonstrations score 0 on average): exported into the run's directory at launch,
"heldout" when the project has none, "demonstrations" refused without them, an explicit set kept; the run page
says which set calibrated the run; and `manage.py train_rm` on the tiny model calibrates on them end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import call_command

from annotate.models import DatasetSnapshot, Demonstration, Project, Prompt
from tests.training.helpers import SFT_ANSWER, write_kwise_snapshot
from tests.training.test_dash_launch import form_data
from training import launching
from training.forms import RMLaunchForm
from training.models import TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def project_with_demos(roots_in_tmp):
    """A project whose rankings snapshot is on disk, with 3 accepted demonstrations (and a rejected and a
    submitted one, which do not count)."""
    from training.rlhf.demo_task import demo_prompts

    project = Project.objects.create(name="Writers")
    statuses = ["accepted", "accepted", "accepted", "rejected", "submitted"]
    for i, (text, status) in enumerate(zip(demo_prompts(n=5, seed=3), statuses)):
        prompt = Prompt.objects.create(project=project, text=text)
        Demonstration.objects.create(prompt=prompt, text=SFT_ANSWER if status == "accepted" else f" draft {i}",
                                     status=status, source="imported")
    path = roots_in_tmp["data"] / "ranks"
    write_kwise_snapshot(path, train=8, test=4)
    snapshot = DatasetSnapshot.objects.create(project=project, kind="rankings", path=str(path), format="jsonl",
                                              content_hash="f" * 64)
    return project, snapshot


def rm_options(**overrides):
    return {"model": "some/model", **overrides}


def test_a_launch_calibrates_on_the_accepted_demonstrations_by_default(roots_in_tmp, project_with_demos):
    project, snapshot = project_with_demos
    run = launching.launch_run(kind="rm", options=rm_options(), snapshot=snapshot)
    path = Path(run.config["calibration_set"])
    assert path == Path(run.output_dir) / "calibration_demonstrations.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 3 and {r["response"] for r in rows} == {SFT_ANSWER}  # accepted ones only
    assert {r["prompt"] for r in rows} <= set(Prompt.objects.values_list("text", flat=True))
    # "auto" from the form means the same
    again = launching.launch_run(kind="rm", options=rm_options(calibration_set="auto"), snapshot=snapshot)
    assert Path(again.config["calibration_set"]).name == "calibration_demonstrations.jsonl"


def test_without_accepted_demonstrations_the_held_out_split_calibrates(roots_in_tmp, project_with_demos):
    project, snapshot = project_with_demos
    Demonstration.objects.filter(status="accepted").update(status="rejected")
    run = launching.launch_run(kind="rm", options=rm_options(calibration_set="auto"), snapshot=snapshot)
    assert run.config["calibration_set"] == "heldout"
    with pytest.raises(launching.LaunchError, match="'Writers' has no accepted demonstrations") as refused:
        launching.launch_run(kind="rm", options=rm_options(calibration_set="demonstrations"), snapshot=snapshot)
    assert refused.value.field == "calibration_set"
    assert TrainingRun.objects.count() == 1  # the refused launch left nothing behind


def test_an_explicit_set_is_kept(roots_in_tmp, project_with_demos):
    _, snapshot = project_with_demos
    run = launching.launch_run(kind="rm", options=rm_options(calibration_set="train"), snapshot=snapshot)
    assert run.config["calibration_set"] == "train"
    assert not (Path(run.output_dir) / "calibration_demonstrations.jsonl").exists()


def test_the_rm_form_defaults_to_the_demonstrations_and_the_run_page_names_the_set(staff_client, roots_in_tmp,
                                                                                  model_dir, project_with_demos):
    project, snapshot = project_with_demos
    form = RMLaunchForm()
    assert form.get_initial_for_field(form.fields["calibration"], "calibration") == "auto"
    response = staff_client.post("/dashboard/launch/rm/", form_data(form, snapshot=snapshot.pk,
                                                                    base_model=str(model_dir)))
    assert response.status_code == 302, response.context["form"].errors
    run = TrainingRun.objects.get()
    assert Path(run.config["calibration_set"]).name == "calibration_demonstrations.jsonl"
    TrainingRun.objects.filter(pk=run.pk).update(status="succeeded", evaluation={"calibration": {"n": 3}})
    page = staff_client.get(f"/dashboard/runs/{run.pk}/").content.decode()
    assert "Calibrated on" in page and "the accepted demonstrations of Writers (3 responses)" in page


def test_train_rm_calibrates_on_the_demonstrations_end_to_end(tiny_model_dir, roots_in_tmp, project_with_demos,
                                                              capsys):
    _, snapshot = project_with_demos
    call_command("train_rm", snapshot=str(snapshot.pk), model=str(tiny_model_dir), max_steps=2, batch_size=4,
                 learning_rate=1e-3, checkpoint_every=0, no_progress=True)
    run = TrainingRun.objects.get()
    assert run.status == TrainingRun.Status.SUCCEEDED, run.error
    calibration = run.evaluation["calibration"]
    assert calibration["n"] == 3 and Path(calibration["set"]).name == "calibration_demonstrations.jsonl"
    assert abs(calibration["calibrated_mean"]) < 1e-4  # the demonstrations score 0 on average
    assert "calibration on 3 responses" in capsys.readouterr().out
