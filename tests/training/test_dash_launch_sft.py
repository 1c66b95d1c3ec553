"""The SFT launch form (staff only, CSRF, generated from SFTConfig, demonstrations snapshots by name, the prompt
format from the snapshot) and the SFT model as the start of the loop: a succeeded SFT run's model is offered as the
PPO policy (and so its reference), as the RM's backbone, as the model of a new round and of the wizard's sampling
step, and a launch with it records its path and shows the lineage."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from django_tasks_db.models import DBTaskResult

from annotate.models import DatasetSnapshot, Project
from tests.training.helpers import write_sft_snapshot
from tests.training.test_dash_launch import form_data
from training import selectors
from training.forms import NewRoundForm, PPOLaunchForm, RMLaunchForm, SampleResponsesForm, SFTLaunchForm
from training.models import Job, TrainingRun
from training.rlhf.sft_config import SFTConfig

pytestmark = pytest.mark.django_db


@pytest.fixture
def sft_snapshot(roots_in_tmp):
    path = roots_in_tmp["data"] / "snapshots" / "demos-1"
    write_sft_snapshot(path, train=4, test=2, prompt_format="chat", system_prompt="Be kind.")
    project = Project.objects.create(name="Writers")
    return DatasetSnapshot.objects.create(project=project, kind="sft", path=str(path), format="jsonl",
                                          content_hash="d" * 64, counts={"train": 4, "test": 2, "prompts": 6})


@pytest.fixture
def rankings_snapshot(roots_in_tmp):
    path = roots_in_tmp["data"] / "snapshots" / "ranks-1"
    path.mkdir(parents=True)
    project = Project.objects.create(name="Rankers")
    return DatasetSnapshot.objects.create(project=project, kind="rankings", path=str(path), format="jsonl",
                                          content_hash="e" * 64, counts={"rankings": 8, "pairs": 40})


@pytest.fixture
def sft_run(roots_in_tmp, staff, sft_snapshot):
    """A succeeded SFT run whose model directory is on disk, as train_sft reports it."""
    out = roots_in_tmp["runs"] / "sft-x"
    (out / "model").mkdir(parents=True)
    (out / "model" / "config.json").write_text("{}")
    return TrainingRun.objects.create(
        kind="sft", name="sft-one", status="succeeded", config={"model": "base"}, snapshot=sft_snapshot,
        project=sft_snapshot.project, created_by=staff, output_dir=str(out), outputs={"model": str(out / "model")},
        evaluation={"before": {"loss": 2.9, "perplexity": 18.2}, "after": {"loss": 1.2, "perplexity": 3.3}},
    )


# --- the launch form ----------------------------------------------------------------------------------------


def test_the_sft_form_is_generated_from_the_dataclass(roots_in_tmp):
    form = SFTLaunchForm()
    names = {f.name for f in dataclasses.fields(SFTConfig)}
    assert names == set(form.config_names) | set(SFTLaunchForm.managed_fields)
    assert "prompt_format" not in form.fields  # the snapshot's
    assert form.get_initial_for_field(form.fields["packing"], "packing") is False
    assert "Pack a micro-batch" in form.as_div()


def test_each_form_lists_only_its_kind_of_snapshot_by_name(roots_in_tmp, sft_snapshot, rankings_snapshot):
    sft_labels = dict((str(v), text) for v, text in SFTLaunchForm().fields["snapshot"].choices if v)
    assert list(sft_labels) == [str(sft_snapshot.pk)]
    assert sft_labels[str(sft_snapshot.pk)].startswith("demos-1 · Writers · 6 demonstrations")
    assert "d" * 16 not in sft_labels[str(sft_snapshot.pk)]
    rm_labels = dict((str(v), text) for v, text in RMLaunchForm().fields["snapshot"].choices if v)
    assert list(rm_labels) == [str(rankings_snapshot.pk)]


def test_a_valid_sft_launch_queues_a_run_with_the_snapshot_s_prompt_format(staff_client, staff, roots_in_tmp,
                                                                         model_dir, sft_snapshot):
    page = staff_client.get("/dashboard/launch/sft/")
    assert page.status_code == 200 and "Demonstrations and pre-trained model" in page.content.decode()
    data = form_data(SFTLaunchForm(), snapshot=sft_snapshot.pk, base_model=str(model_dir), max_steps=5,
                     name="first", packing="on", learning_rate="0.0001")
    response = staff_client.post("/dashboard/launch/sft/", data)
    run = TrainingRun.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/dashboard/runs/{run.pk}/"
    assert run.kind == "sft" and run.status == "queued" and run.name == "first" and run.created_by == staff
    assert run.snapshot == sft_snapshot and run.project == sft_snapshot.project
    config = run.config
    assert config["model"] == str(model_dir) and config["dataset"] == sft_snapshot.path
    assert config["prompt_format"] == "chat" and config["system_prompt"] == "Be kind."
    assert config["max_steps"] == 5 and config["packing"] is True and config["learning_rate"] == 0.0001
    assert config["output_dir"] == run.output_dir == str(roots_in_tmp["runs"] / f"sft-{run.pk}")
    SFTConfig(**config)
    assert DBTaskResult.objects.get(id=run.task_id).task_path == "training.tasks.execute_training_run"
    assert not Path(run.output_dir).exists()  # nothing trained in the request


def test_bad_sft_launches_show_their_reasons(staff_client, roots_in_tmp, model_dir, sft_snapshot, rankings_snapshot,
                                             tmp_path):
    base = form_data(SFTLaunchForm(), snapshot=sft_snapshot.pk, base_model=str(model_dir))
    errors = staff_client.post("/dashboard/launch/sft/", {**base, "snapshot": rankings_snapshot.pk}).context[
        "form"].errors
    assert "snapshot" in errors  # a rankings snapshot is not on offer
    errors = staff_client.post("/dashboard/launch/sft/", {**base, "learning_rate": "0"}).context["form"].errors
    assert errors["learning_rate"] == ["must be in (0.0, 1.0), got 0.0"]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    errors = staff_client.post("/dashboard/launch/sft/", {**base, "base_model": str(outside)}).context["form"].errors
    assert "base_model" in errors
    assert not TrainingRun.objects.exists()


def test_export_now_fine_tunes_on_the_project_s_accepted_demonstrations(staff_client, roots_in_tmp, model_dir,
                                                                       sft_snapshot):
    from annotate.models import Demonstration, Prompt

    project = Project.objects.create(name="Chatty", prompt_format="chat", system_prompt="Be brief.")
    for i, status in enumerate(["accepted", "accepted", "rejected"]):
        prompt = Prompt.objects.create(project=project, text=f"Review place {i}:")
        Demonstration.objects.create(prompt=prompt, text=f" Lovely {i}.", status=status, source="imported")
    page = staff_client.get(f"/dashboard/launch/sft/?project={project.pk}")
    assert page.context["form"].initial["project"] == project.pk
    assert f"/dashboard/launch/sft/?project={project.pk}" in staff_client.get(
        f"/dashboard/projects/{project.pk}/").content.decode()
    base = form_data(SFTLaunchForm(), base_model=str(model_dir))
    errors = staff_client.post("/dashboard/launch/sft/", {**base, "snapshot": sft_snapshot.pk,
                                                          "project": project.pk}).context["form"].errors
    assert "not both" in errors["snapshot"][0]
    response = staff_client.post("/dashboard/launch/sft/", {**base, "project": project.pk,
                                                            "export_test_fraction": "0"})
    assert response.status_code == 302, response.context["form"].errors
    run = TrainingRun.objects.get()
    snapshot = run.snapshot
    assert snapshot.kind == "sft" and snapshot.project == project and snapshot.counts["train"] == 2
    assert run.config["dataset"] == snapshot.path and Path(snapshot.path, "train.jsonl").is_file()
    assert run.config["prompt_format"] == "chat" and run.config["system_prompt"] == "Be brief."

    Demonstration.objects.filter(status="accepted").update(status="rejected")
    response = staff_client.post("/dashboard/launch/sft/", {**base, "project": project.pk})
    assert "no accepted demonstrations" in response.context["form"].errors["project"][0]
    assert TrainingRun.objects.count() == 1 and DatasetSnapshot.objects.filter(kind="sft").count() == 2


def test_the_sft_form_needs_staff_and_csrf(client, annotator, staff, roots_in_tmp, model_dir, sft_snapshot):
    data = form_data(SFTLaunchForm(), snapshot=sft_snapshot.pk, base_model=str(model_dir))
    client.force_login(annotator)
    assert client.post("/dashboard/launch/sft/", data).status_code == 403
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(staff)
    assert strict.post("/dashboard/launch/sft/", data).status_code == 403  # no CSRF token
    assert not TrainingRun.objects.exists()


def test_the_api_launches_sft_like_the_form(client, staff, roots_in_tmp, model_dir, sft_snapshot,
                                            rankings_snapshot):
    client.force_login(staff)
    response = client.post("/api/runs/sft/", data={"snapshot": rankings_snapshot.pk, "base_model": str(model_dir)},
                           content_type="application/json")
    assert response.status_code == 400 and "snapshot" in response.json()
    response = client.post("/api/runs/sft/", data={"snapshot": sft_snapshot.pk, "base_model": str(model_dir),
                                                   "max_steps": 2}, content_type="application/json")
    assert response.status_code == 201, response.content
    run = TrainingRun.objects.get(pk=response.json()["id"])
    assert run.kind == "sft" and run.config["max_steps"] == 2 and run.config["prompt_format"] == "chat"


def test_launch_again_prefills_an_sft_run(staff_client, roots_in_tmp, model_dir, sft_snapshot):
    staff_client.post("/dashboard/launch/sft/", form_data(SFTLaunchForm(), snapshot=sft_snapshot.pk,
                                                          base_model=str(model_dir), max_steps=7))
    run = TrainingRun.objects.get()
    TrainingRun.objects.filter(pk=run.pk).update(status="failed")
    page = staff_client.get(f"/dashboard/runs/{run.pk}/").content.decode()
    assert f"/dashboard/launch/sft/?again={run.pk}" in page
    form = staff_client.get(f"/dashboard/launch/sft/?again={run.pk}").context["form"]
    assert form.initial["max_steps"] == 7 and form.initial["snapshot"] == sft_snapshot.pk
    staff_client.post("/dashboard/launch/sft/", form_data(form))
    again = TrainingRun.objects.exclude(pk=run.pk).get()
    assert {k: v for k, v in again.config.items() if k != "output_dir"} == \
        {k: v for k, v in run.config.items() if k != "output_dir"}


def test_the_sft_run_page_shows_before_after_samples_and_the_evaluation(staff_client, sft_run):
    from training.models import Sample

    Sample.objects.create(run=sft_run, step=4, prompt="Review the harbour cafe:", response=" Lovely coffee.",
                          extra={"before": " cafe cafe the", "demonstration": " Warm and friendly.", "oracle": 1.25})
    page = staff_client.get(f"/dashboard/runs/{sft_run.pk}/").content.decode()
    assert "held-out perplexity" in page  # the headline
    samples = staff_client.get(f"/dashboard/runs/{sft_run.pk}/samples/").content.decode()
    for text in ("After training", "Before training", "Demonstration", " Lovely coffee.", " cafe cafe the",
                 " Warm and friendly.", "1.25"):
        assert text in samples, text


# --- the SFT model starts the loop ----------------------------------------------------------------------------


def test_every_later_stage_offers_the_sft_model(roots_in_tmp, sft_run, world):
    model = str(sft_run.output("model"))
    assert model in dict(PPOLaunchForm().fields["policy_model"].choices)
    assert model in dict(RMLaunchForm().fields["base_model"].choices)
    assert model in dict(NewRoundForm().fields["model"].choices)
    assert model in dict(SampleResponsesForm(project=world["project"]).fields["model"].choices)
    label = dict(PPOLaunchForm().fields["policy_model"].choices)[model]
    assert label.startswith(f"SFT run {sft_run.pk}")
    assert selectors.model_label(model) == f"SFT run {sft_run.pk} (sft-one)"  # in the rounds' A/B tables
    TrainingRun.objects.filter(pk=sft_run.pk).update(status="failed")  # only a run that succeeded
    assert model not in dict(PPOLaunchForm().fields["policy_model"].choices)


def test_ppo_from_the_sft_model_records_it_as_policy_and_shows_the_lineage(staff_client, roots_in_tmp, sft_run,
                                                                          world):
    page = staff_client.get(f"/dashboard/runs/{sft_run.pk}/").content.decode()
    for url in ("/dashboard/launch/ppo/", "/dashboard/launch/rm/", "/dashboard/new-round/"):
        assert f"{url}?sft_run={sft_run.pk}" in page  # the SFT run page's next steps
    form = staff_client.get(f"/dashboard/launch/ppo/?sft_run={sft_run.pk}").context["form"]
    model = str(sft_run.output("model"))
    assert form.initial["policy_model"] == model
    train_file = str(Path(sft_run.snapshot.path) / "train.jsonl")
    assert form.initial["ptx_file"] == train_file  # PPO-ptx can take the SFT data
    assert train_file in dict(form.fields["ptx_file"].choices)
    data = form_data(form, reward_model_run=world["rm"].pk, prompt_project=world["project"].pk, iterations=2,
                     rollout_batch_size=8, mini_batch_size=4, micro_batch_size=2, ptx_coef="0.5")
    response = staff_client.post("/dashboard/launch/ppo/", data)
    assert response.status_code == 302, response.context["form"].errors
    ppo = TrainingRun.objects.get(kind="ppo", status="queued")
    assert ppo.config["policy"] == model  # the policy, and the frozen reference PPO copies from it
    assert ppo.config["ptx_dataset"] == train_file and ppo.config["ptx_coef"] == 0.5
    from training.rlhf.prompts import load_texts

    assert len(load_texts(train_file)) == 4  # what PPO-ptx reads: prompt + response per demonstration
    upstream = [node.label for node in selectors.lineage(run=ppo).upstream]
    assert upstream[0] == str(sft_run) and str(world["rm"]) in upstream
    sft_lineage = selectors.lineage(run=sft_run)
    assert [n.kind for n in sft_lineage.upstream] == ["snapshot", "sft"]  # trained on its demonstrations snapshot
    assert sft_lineage.upstream[0].label == f"snapshot {sft_run.snapshot.content_hash[:12]}"
    assert str(ppo) in [node.label for node in sft_lineage.downstream]


def test_an_rm_on_the_sft_backbone_records_it(staff_client, roots_in_tmp, sft_run, world):
    form = staff_client.get(f"/dashboard/launch/rm/?sft_run={sft_run.pk}").context["form"]
    model = str(sft_run.output("model"))
    assert form.initial["base_model"] == model
    response = staff_client.post("/dashboard/launch/rm/", form_data(form, snapshot=world["snapshot"].pk))
    assert response.status_code == 302, response.context["form"].errors
    rm = TrainingRun.objects.get(kind="rm", status="queued")
    assert rm.config["model"] == model
    assert [node.label for node in selectors.lineage(run=rm).upstream][0] == str(sft_run)


def test_a_new_round_sampled_from_the_sft_model(staff_client, roots_in_tmp, sft_run, world):
    form = staff_client.get(f"/dashboard/new-round/?sft_run={sft_run.pk}").context["form"]
    model = str(sft_run.output("model"))
    assert form.initial["model"] == model
    response = staff_client.post("/dashboard/new-round/", {
        "project": world["project"].pk, "model": model, "k": 4, "temperature": 1, "top_p": 1,
        "max_new_tokens": 16, "seed": 0, "baseline_k": 0})
    job = Job.objects.get()
    assert response.status_code == 302 and job.params["model_path"] == model
    response = staff_client.post(f"/dashboard/projects/{world['project'].pk}/sample/", {
        "model": model, "k": 4, "temperature": 1, "top_p": 1, "max_new_tokens": 16, "seed": 0})
    assert response.status_code == 302
    assert Job.objects.count() == 2 and json.dumps(Job.objects.latest("pk").params).count(model) == 1
