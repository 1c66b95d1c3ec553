"""Launch forms generated from the config dataclasses, validated by them, limited to the configured roots;
launching creates a queued run and enqueues it (django-tasks), nothing trains in the request."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from django import forms
from django_tasks_db.models import DBTaskResult

from annotate.models import DatasetSnapshot, Project
from training import roots
from training.forms import NewRoundForm, PPOLaunchForm, RMLaunchForm
from training.models import Job, TrainingRun
from training.rlhf.configs import describe_fields
from training.rlhf.ppo_config import PPOConfig
from training.rlhf.rm_config import RewardModelConfig

pytestmark = pytest.mark.django_db


def form_data(form: forms.Form, **overrides) -> dict:
    """What a browser posts for an untouched form (initial values), plus overrides."""
    data = {}
    for name, field in form.fields.items():
        initial = form.get_initial_for_field(field, name)
        if isinstance(field, forms.BooleanField):
            if initial:
                data[name] = "on"
        elif initial is not None:
            data[name] = field.prepare_value(initial) if hasattr(field, "prepare_value") else initial
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def test_the_rm_form_is_generated_from_the_dataclass(roots_in_tmp):
    form = RMLaunchForm()
    for desc in describe_fields(RewardModelConfig):
        if desc["name"] in RMLaunchForm.managed_fields:
            assert desc["name"] not in form.fields
            continue
        field = form.fields[desc["name"]]
        assert field.help_text == desc["help"]
        assert form.get_initial_for_field(field, desc["name"]) == desc["default"]
        if desc["choices"]:
            assert [c for c, _ in field.choices] == list(desc["choices"])
    assert isinstance(form.fields["lora"], forms.BooleanField)
    assert isinstance(form.fields["epochs"], forms.IntegerField)
    assert isinstance(form.fields["learning_rate"], forms.FloatField)
    assert form.fields["lora_target_modules"].prepare_value(["all-linear"]) == "all-linear"
    # Every config option is on the form or filled by the form itself.
    names = {f.name for f in dataclasses.fields(RewardModelConfig)}
    assert names == set(form.config_names) | set(RMLaunchForm.managed_fields)
    html = form.as_div()
    assert "Peak AdamW learning rate" in html


def test_the_ppo_form_is_generated_from_the_dataclass(roots_in_tmp):
    form = PPOLaunchForm()
    names = {f.name for f in dataclasses.fields(PPOConfig)}
    assert names == set(form.config_names) | set(PPOLaunchForm.managed_fields)
    assert [c for c, _ in form.fields["kl_estimator"].choices] == ["k1", "k3"]
    assert form.get_initial_for_field(form.fields["whiten_advantages"], "whiten_advantages") is True


def test_model_choices_come_from_the_roots(roots_in_tmp, model_dir, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    os.symlink(outside, roots_in_tmp["models"] / "sneaky")
    choices = dict(RMLaunchForm().fields["base_model"].choices)
    assert str(model_dir) in choices and choices[str(model_dir)] == "models/org/tiny"
    assert not any("elsewhere" in value or "sneaky" in value for value in choices)
    with pytest.raises(roots.OutsideRoots):
        roots.resolve_inside(roots_in_tmp["models"] / "sneaky", roots.model_roots())
    with pytest.raises(roots.OutsideRoots):
        roots.resolve_inside(str(roots_in_tmp["models"]) + "/../elsewhere", roots.model_roots())
    assert roots.resolve_inside("org/tiny", roots.model_roots()) == model_dir


@pytest.fixture
def snapshot(roots_in_tmp):
    path = roots_in_tmp["data"] / "snapshots" / "1-x"
    path.mkdir(parents=True)
    project = Project.objects.create(name="P")
    return DatasetSnapshot.objects.create(project=project, path=str(path), format="jsonl", content_hash="c" * 64)


def test_a_valid_rm_launch_queues_a_run_and_enqueues_it(staff_client, staff, roots_in_tmp, model_dir, snapshot):
    data = form_data(RMLaunchForm(), snapshot=snapshot.pk, base_model=str(model_dir), max_steps=3, name="first",
                     learning_rate="0.0005", lora="on", lora_target_modules="c_attn, c_proj")
    response = staff_client.post("/dashboard/launch/rm/", data)
    run = TrainingRun.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/dashboard/runs/{run.pk}/"
    assert run.status == "queued" and run.kind == "rm" and run.name == "first" and run.created_by == staff
    assert run.snapshot == snapshot and run.project == snapshot.project
    assert run.output_dir == str(roots_in_tmp["runs"] / f"rm-{run.pk}")
    config = run.config
    assert config["model"] == str(model_dir) and config["dataset"] == snapshot.path
    assert config["output_dir"] == run.output_dir
    assert config["max_steps"] == 3 and config["learning_rate"] == 0.0005 and config["lora"] is True
    assert config["lora_target_modules"] == ["c_attn", "c_proj"]
    assert config["epochs"] == 1 and config["calibration_set"] == "heldout"  # defaults
    RewardModelConfig(**config)  # what the trainer will build
    task = DBTaskResult.objects.get(id=run.task_id)
    assert task.task_path == "training.tasks.execute_training_run"
    assert task.args_kwargs == {"args": [run.pk], "kwargs": {}} and task.status == "READY"
    assert not Path(run.output_dir).exists()  # nothing ran in the request


def test_config_errors_land_on_their_field(staff_client, roots_in_tmp, model_dir, snapshot):
    base = form_data(RMLaunchForm(), snapshot=snapshot.pk, base_model=str(model_dir))
    response = staff_client.post("/dashboard/launch/rm/", {**base, "learning_rate": "0"})
    assert response.status_code == 200
    assert response.context["form"].errors["learning_rate"] == ["must be in (0.0, 1.0), got 0.0"]
    response = staff_client.post("/dashboard/launch/rm/", {**base, "eval_split": "train"})
    assert response.context["form"].errors["eval_split"] == ["must differ from train_split"]
    response = staff_client.post("/dashboard/launch/rm/", {**base, "epochs": "two"})
    assert "epochs" in response.context["form"].errors
    html = response.content.decode()
    assert 'class="field has-error"' in html and "Enter a whole number." in html
    assert TrainingRun.objects.count() == 0


def test_paths_not_offered_under_the_roots_are_refused(staff_client, roots_in_tmp, model_dir, snapshot, tmp_path):
    base = form_data(RMLaunchForm(), snapshot=snapshot.pk)
    for path in (str(tmp_path), "/etc", str(roots_in_tmp["models"]) + "/../..", "gpt2"):
        response = staff_client.post("/dashboard/launch/rm/", {**base, "base_model": path})
        assert "base_model" in response.context["form"].errors
    response = staff_client.post("/dashboard/launch/rm/", {**base, "base_model": str(model_dir),
                                                           "calibration": "/etc/passwd"})
    assert "calibration" in response.context["form"].errors
    assert TrainingRun.objects.count() == 0


def test_snapshot_or_project_but_not_both(staff_client, roots_in_tmp, model_dir, snapshot):
    base = form_data(RMLaunchForm(), base_model=str(model_dir))
    response = staff_client.post("/dashboard/launch/rm/", base)
    assert "Choose a snapshot, or a project" in response.context["form"].errors["snapshot"][0]
    response = staff_client.post("/dashboard/launch/rm/", {**base, "snapshot": snapshot.pk,
                                                           "project": snapshot.project.pk})
    assert "snapshot" in response.context["form"].errors


def test_export_now_exports_the_project_and_trains_on_the_new_snapshot(staff_client, roots_in_tmp, model_dir, world):
    project = world["project"]
    data = form_data(RMLaunchForm(), project=project.pk, base_model=str(model_dir), export_group="consensus")
    response = staff_client.post("/dashboard/launch/rm/", data)
    assert response.status_code == 302
    run = TrainingRun.objects.get(status="queued", kind="rm")
    snapshot = run.snapshot
    assert snapshot is not None and snapshot.project == project and snapshot.params["group"] == "consensus"
    assert Path(snapshot.path).is_relative_to(roots_in_tmp["data"]) and (Path(snapshot.path) / "manifest.json").exists()
    assert run.config["dataset"] == snapshot.path


def test_export_now_with_nothing_to_export_shows_the_reason(staff_client, roots_in_tmp, model_dir):
    empty = Project.objects.create(name="Empty")
    data = form_data(RMLaunchForm(), project=empty.pk, base_model=str(model_dir))
    response = staff_client.post("/dashboard/launch/rm/", data)
    assert response.status_code == 200
    assert "has no rankings to export" in response.context["form"].non_field_errors()[0]


def test_a_ppo_launch_takes_a_policy_an_rm_run_and_a_project_s_prompts(staff_client, roots_in_tmp, model_dir, world):
    rm, project = world["rm"], world["project"]
    form = PPOLaunchForm()
    assert [run.pk for run in form.fields["reward_model_run"].queryset] == [rm.pk]  # succeeded RM runs only
    policy_choices = dict(form.fields["policy_model"].choices)
    assert str(Path(world["ppo"].output_dir) / "policy") in policy_choices  # continue from a PPO run's policy
    data = form_data(form, policy_model=str(model_dir), reward_model_run=rm.pk, prompt_project=project.pk,
                     iterations=2, rollout_batch_size=8, mini_batch_size=4, micro_batch_size=2)
    response = staff_client.post("/dashboard/launch/ppo/", data)
    assert response.status_code == 302, response.context["form"].errors
    run = TrainingRun.objects.get(kind="ppo", status="queued")
    assert run.reward_model_run == rm and run.project == project
    config = run.config
    assert config["policy"] == str(model_dir) and config["reward_model"] == rm.output_dir
    prompts = Path(config["prompts"])
    assert prompts == Path(run.output_dir) / "prompts.jsonl"  # exported with the run, as by train_ppo
    records = [json.loads(line) for line in prompts.read_text().splitlines()]
    assert [r["prompt"] for r in records] == [p.text for p, _ in world["prompts"]]
    assert config["output_dir"] == run.output_dir == str(roots_in_tmp["runs"] / f"ppo-{run.pk}")
    PPOConfig(**config)


def test_ppo_batch_size_rules_come_from_the_dataclass(staff_client, roots_in_tmp, model_dir, world):
    data = form_data(PPOLaunchForm(), policy_model=str(model_dir), reward_model_run=world["rm"].pk,
                     prompt_project=world["project"].pk, rollout_batch_size=8, mini_batch_size=3)
    response = staff_client.post("/dashboard/launch/ppo/", data)
    assert response.context["form"].errors["mini_batch_size"] == ["must divide rollout_batch_size (8), got 3"]
    data["mini_batch_size"] = 4
    data.pop("prompt_project")
    response = staff_client.post("/dashboard/launch/ppo/", data)
    assert "prompt_project" in response.context["form"].errors
    assert not TrainingRun.objects.filter(kind="ppo", status="queued").exists()


def test_new_round_form_and_job(staff_client, roots_in_tmp, world):
    ppo, project = world["ppo"], world["project"]
    url = f"/dashboard/runs/{ppo.pk}/new-round/"
    form = NewRoundForm(run=ppo)
    policy = str(Path(ppo.output_dir) / "policy")
    assert form.fields["model"].initial == policy
    project.k_max = 6
    project.save()
    bad = staff_client.post(url, {"project": project.pk, "model": policy, "k": 9, "temperature": 1, "top_p": 1,
                                  "max_new_tokens": 16, "seed": 0, "baseline_k": 0})
    assert response_errors(bad)["k"] == ["K must be within the project's range 4–6."]
    bad = staff_client.post(url, {"project": project.pk, "model": policy, "k": 4, "temperature": 1, "top_p": 1,
                                  "max_new_tokens": 16, "seed": 0, "baseline_k": 2})
    assert response_errors(bad)["baseline_model"] == ["Choose the baseline policy, or set its responses to 0."]
    assert not Job.objects.exists()
    response = staff_client.post(url, {"project": project.pk, "model": policy, "k": 4, "temperature": 0.8,
                                       "top_p": 0.95, "max_new_tokens": 16, "seed": 3, "baseline_k": 0})
    job = Job.objects.get()
    assert response["Location"] == f"/dashboard/jobs/{job.pk}/"
    assert job.kind == "new_round" and job.status == "queued" and job.training_run == ppo and job.project == project
    assert job.params["model_path"] == policy and job.params["sampling"]["temperature"] == 0.8
    assert DBTaskResult.objects.get(id=job.task_id).task_path == "training.tasks.execute_job"
    # Only a PPO run that succeeded has a "new round" action.
    response = staff_client.get(f"/dashboard/runs/{world['live'].pk}/new-round/")
    assert response.status_code == 302


def response_errors(response) -> dict:
    return dict(response.context["form"].errors) if response.context else {}


def test_launch_again_prefills_the_run_s_config_and_launches_the_same_config(staff_client, roots_in_tmp, model_dir,
                                                                             snapshot):
    first = form_data(RMLaunchForm(), snapshot=snapshot.pk, base_model=str(model_dir), max_steps=3, name="first",
                      learning_rate="0.0005", lora="on", lora_target_modules="c_attn, c_proj")
    staff_client.post("/dashboard/launch/rm/", first)
    run = TrainingRun.objects.get()
    TrainingRun.objects.filter(pk=run.pk).update(status="succeeded")
    assert f"?again={run.pk}" in staff_client.get(f"/dashboard/runs/{run.pk}/").content.decode()
    page = staff_client.get(f"/dashboard/launch/rm/?again={run.pk}")
    form = page.context["form"]
    assert form.initial["max_steps"] == 3 and form.initial["learning_rate"] == 0.0005
    assert form.initial["snapshot"] == snapshot.pk and form.initial["base_model"] == str(model_dir)
    assert form.initial["name"] == "first (again)"
    staff_client.post("/dashboard/launch/rm/", form_data(form))  # posted untouched
    again = TrainingRun.objects.exclude(pk=run.pk).get()
    assert {k: v for k, v in again.config.items() if k != "output_dir"} == \
        {k: v for k, v in run.config.items() if k != "output_dir"}
    # A run of another kind, or none, is ignored.
    assert staff_client.get(f"/dashboard/launch/ppo/?again={run.pk}").context["form"].initial.get("name") is None
    assert staff_client.get("/dashboard/launch/rm/?again=999999").status_code == 200


def test_snapshots_are_listed_by_name_not_hash(roots_in_tmp, snapshot):
    field = RMLaunchForm().fields["snapshot"]
    label = dict((str(value), text) for value, text in field.choices if value)[str(snapshot.pk)]
    assert label.startswith("1-x · P") and "c" * 16 not in label


def test_the_prefilled_new_round_form_is_valid_as_it_is(roots_in_tmp, world, model_dir):
    ppo = world["ppo"]
    TrainingRun.objects.filter(pk=ppo.pk).update(config={"policy": str(model_dir)})  # a baseline is preset
    ppo.refresh_from_db()
    form = NewRoundForm(run=ppo, initial={"project": world["project"].pk})
    assert form.fields["baseline_model"].initial == str(model_dir)
    bound = NewRoundForm(form_data(form), run=ppo)
    assert bound.is_valid(), bound.errors
    assert 0 < bound.cleaned_data["baseline_k"] < bound.cleaned_data["k"]
