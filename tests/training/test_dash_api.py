"""The training REST API: list/inspect runs, curves and samples, launch (validated like the forms), cancel,
resume, new round and RM check. Staff only (see test_dash_permissions for the refusals)."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token

from annotate.models import DatasetSnapshot, Project
from training.models import Job, Metric, TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(client, staff):
    token = Token.objects.create(user=staff)

    class Api:
        def get(self, url, **params):
            return client.get(url, params, HTTP_AUTHORIZATION=f"Token {token.key}")

        def post(self, url, data=None):
            return client.post(url, data or {}, content_type="application/json",
                               HTTP_AUTHORIZATION=f"Token {token.key}")

    return Api()


@pytest.fixture
def model_dir(roots_in_tmp):
    path = roots_in_tmp["models"] / "tiny"
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


def test_list_and_detail(api, world):
    body = api.get("/api/runs/").json()
    assert body["count"] == 3
    ids = [r["id"] for r in body["results"]]
    assert set(ids) == {world["rm"].pk, world["ppo"].pk, world["live"].pk}
    assert [r["id"] for r in api.get("/api/runs/", kind="ppo").json()["results"]] == [world["ppo"].pk]
    rm = api.get(f"/api/runs/{world['rm'].pk}/").json()
    assert rm["headline"] == {"label": "held-out accuracy", "value": 0.8125}
    assert rm["duration_seconds"] == 180.0 and rm["created_by"] == "boss"
    assert rm["evaluation"]["heldout"]["accuracy"] == 0.8125 and rm["config"]["learning_rate"] == 0.001


def test_metrics_with_a_cursor_a_name_filter_and_samples(api, world):
    rm = world["rm"]
    body = api.get(f"/api/runs/{rm.pk}/metrics/").json()
    assert body["series"]["loss"] == [[1, 1.0], [2, 0.5], [3, pytest.approx(1 / 3)]]
    assert body["cursor"] == Metric.objects.filter(run=rm).order_by("-pk").first().pk
    Metric.objects.create(run=rm, step=4, name="loss", value=0.2)
    Metric.objects.create(run=rm, step=4, name="accuracy", value=0.9)
    body = api.get(f"/api/runs/{rm.pk}/metrics/", after_id=body["cursor"], name="loss").json()
    assert body["series"] == {"loss": [[4, 0.2]]}
    assert api.get(f"/api/runs/{rm.pk}/metrics/", after_id="x").status_code == 400
    samples = api.get(f"/api/runs/{world['ppo'].pk}/samples/").json()
    assert [s["step"] for s in samples] == [2] and samples[0]["extra"] == {"oracle": 0.7}
    assert len(api.get(f"/api/runs/{world['ppo'].pk}/samples/", step=1).json()) == 1


def test_launch_an_rm_run_by_api_with_only_overrides(api, roots_in_tmp, model_dir):
    path = roots_in_tmp["data"] / "snap"
    path.mkdir()
    snapshot = DatasetSnapshot.objects.create(project=Project.objects.create(name="A"), path=str(path),
                                              format="jsonl", content_hash="f" * 64)
    response = api.post("/api/runs/rm/", {"snapshot": snapshot.pk, "base_model": str(model_dir), "max_steps": 2,
                                          "lora": True, "lora_target_modules": ["c_attn"]})
    assert response.status_code == 201, response.json()
    body = response.json()
    run = TrainingRun.objects.get(pk=body["id"])
    assert run.status == "queued" and run.task_id == body["task_id"]
    assert run.config["max_steps"] == 2 and run.config["lora"] is True and run.config["lora_target_modules"] == ["c_attn"]
    assert run.config["epochs"] == 1 and run.config["padding_side"] == "right"  # untouched defaults


def test_launch_errors_are_400_with_the_field(api, roots_in_tmp, model_dir, tmp_path):
    response = api.post("/api/runs/rm/", {"project": 999, "base_model": str(model_dir)})
    assert response.status_code == 400 and "project" in response.json()
    path = roots_in_tmp["data"] / "snap"
    path.mkdir()
    snapshot = DatasetSnapshot.objects.create(path=str(path), format="jsonl", content_hash="f" * 64)
    response = api.post("/api/runs/rm/", {"snapshot": snapshot.pk, "base_model": str(tmp_path)})
    assert response.status_code == 400 and "base_model" in response.json()
    response = api.post("/api/runs/rm/", {"snapshot": snapshot.pk, "base_model": str(model_dir), "warmup_ratio": 2})
    assert response.json() == {"warmup_ratio": ["must be in [0.0, 1.0), got 2.0"]}
    assert not TrainingRun.objects.exists()


def test_launch_ppo_cancel_and_resume_by_api(api, roots_in_tmp, model_dir, world):
    response = api.post("/api/runs/ppo/", {"policy_model": str(model_dir), "reward_model_run": world["rm"].pk,
                                           "prompt_project": world["project"].pk, "iterations": 1})
    assert response.status_code == 201, response.json()
    run = TrainingRun.objects.get(pk=response.json()["id"])
    assert run.kind == "ppo" and run.config["iterations"] == 1
    cancelled = api.post(f"/api/runs/{run.pk}/cancel/").json()
    assert cancelled["status"] == "cancelled"
    assert api.post(f"/api/runs/{run.pk}/cancel/").status_code == 409
    resumed = api.post(f"/api/runs/{run.pk}/resume/")
    assert resumed.status_code == 201 and resumed.json()["id"] == run.pk and resumed.json()["status"] == "queued"
    assert api.post(f"/api/runs/{world['live'].pk}/resume/").status_code == 409


def test_new_round_and_rm_check_by_api(api, roots_in_tmp, world):
    ppo, project = world["ppo"], world["project"]
    policy = f"{ppo.output_dir}/policy"
    response = api.post("/api/rounds/", {"project": project.pk, "model": policy, "k": 4, "training_run": ppo.pk})
    assert response.status_code == 201, response.json()
    job = Job.objects.get(pk=response.json()["id"])
    assert job.training_run == ppo and job.params["sampling"]["temperature"] == 1.0
    assert api.post("/api/rounds/", {"project": project.pk, "model": "/etc", "k": 4}).status_code == 400
    response = api.post(f"/api/projects/{project.pk}/rm-check/", {"rm_run": world["rm"].pk})
    assert response.status_code == 201 and response.json()["kind"] == "rm_eval"
    assert api.get(f"/api/jobs/{job.pk}/").json()["status"] == "queued"


def test_the_schema_documents_the_training_api(api):
    schema = api.get("/api/schema/").content.decode()
    for path in ("/api/runs/", "/api/runs/rm/", "/api/runs/{run_id}/metrics/", "/api/rounds/"):
        assert path in schema
