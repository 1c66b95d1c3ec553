"""Closing the loop: a new annotation round sampled from a policy (queued, run by the worker), optionally a
blind A/B with a baseline policy; and an RM's accuracy on the rankings it did not train on."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from annotate.agreement import ordered_pairs
from annotate.models import DatasetSnapshot, Project, Prompt, Ranking, Response
from tests.training.conftest import make_ranking
from training import jobs, tasks
from training.models import Job, TrainingRun

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def policy_source(tiny_model_dir) -> Path:
    return Path(tiny_model_dir)


@pytest.fixture
def policies(roots_in_tmp, policy_source):
    new = roots_in_tmp["runs"] / "ppo-9" / "policy"
    old = roots_in_tmp["models"] / "sft"
    shutil.copytree(policy_source, new)
    shutil.copytree(policy_source, old)
    return {"new": new, "old": old}


@pytest.fixture
def project_round_one(staff):
    project = Project.objects.create(name="Loop", k_min=4, k_max=6)
    for i in range(3):
        prompt = Prompt.objects.create(project=project, text=f"Write a short review of the cafe number {i}:",
                                       metadata={"task": "demo"})
        for j in range(4):
            Response.objects.create(prompt=prompt, text=f" answer {j} for {i}")
    # A duplicate text in another round must not be copied twice.
    return project


def test_a_new_round_is_sampled_from_the_ppo_policy_by_the_worker(roots_in_tmp, policies, project_round_one, staff):
    ppo = TrainingRun.objects.create(kind="ppo", status="succeeded", output_dir=str(policies["new"].parent),
                                     outputs={"policy": str(policies["new"])}, config={"policy": str(policies["old"])})
    job = jobs.launch_new_round(project=project_round_one, model_path=policies["new"], training_run=ppo, k=4,
                                sampling={"temperature": 1.0, "max_new_tokens": 8, "seed": 1}, created_by=staff)
    assert job.status == "queued"
    # The queued task is executed by a worker, as in production (in-process here).
    call_command("db_worker", "--batch", "--no-startup-delay", "--no-reload", verbosity=0)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.params["round"] == 2 and job.result["round"] == 2 and job.result["from_round"] == 1
    round_two = Prompt.objects.filter(project=project_round_one, round=2)
    assert round_two.count() == 3
    assert sorted(round_two.values_list("text", flat=True)) == sorted(
        Prompt.objects.filter(project=project_round_one, round=1).values_list("text", flat=True))
    assert all(p.metadata == {"task": "demo"} for p in round_two)
    new = Response.objects.filter(prompt__in=round_two)
    assert new.count() == 12 == job.result["responses"]
    assert set(new.values_list("training_run", flat=True)) == {ppo.pk}
    assert set(new.values_list("round", flat=True)) == {2}
    assert {Path(p).name for p in new.values_list("model_path", flat=True)} == {"policy"}
    assert job.host and job.finished_at and job.heartbeat_at
    # The round shows on the PPO run's lineage.
    from training.selectors import lineage

    assert [node.label for node in lineage(run=ppo).downstream] == ["Loop round 2"]


def test_a_new_round_can_mix_in_a_baseline_for_a_blind_ab(roots_in_tmp, policies, project_round_one):
    job = jobs.launch_new_round(project=project_round_one, model_path=policies["new"], k=4,
                                baseline_model_path=policies["old"], baseline_k=2, max_prompts=2,
                                sampling={"max_new_tokens": 8})
    tasks.execute_job.call(job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    prompts = Prompt.objects.filter(project=project_round_one, round=2)
    assert prompts.count() == 2
    for prompt in prompts:
        origins = sorted(Path(p).parent.name if Path(p).name == "policy" else Path(p).name
                         for p in prompt.responses.values_list("model_path", flat=True))
        assert origins == ["ppo-9", "ppo-9", "sft", "sft"]


def test_launching_a_new_round_checks_roots_and_k(roots_in_tmp, policies, project_round_one, tmp_path):
    with pytest.raises(jobs.LaunchError, match="outside the configured roots"):
        jobs.launch_new_round(project=project_round_one, model_path=tmp_path)
    with pytest.raises(jobs.LaunchError, match="4–6"):
        jobs.launch_new_round(project=project_round_one, model_path=policies["new"], k=7)
    with pytest.raises(jobs.LaunchError, match="between 1 and K − 1"):
        jobs.launch_new_round(project=project_round_one, model_path=policies["new"], k=4,
                              baseline_model_path=policies["old"], baseline_k=4)
    assert not Job.objects.exists()


def test_a_failing_job_records_its_traceback(roots_in_tmp, policies, project_round_one):
    job = jobs.launch_new_round(project=project_round_one, model_path=policies["new"], k=4)
    shutil.rmtree(policies["new"])  # gone by the time the worker gets to it
    tasks.execute_job.call(job.pk)
    job.refresh_from_db()
    assert job.status == "failed" and "Traceback" in job.error


def test_rm_accuracy_on_rankings_it_did_not_train_on(roots_in_tmp, policy_source, staff, django_user_model):
    from training.rlhf.reward_model import RewardModel

    rm_dir = roots_in_tmp["runs"] / "rm-5"
    RewardModel.from_backbone(str(policy_source), max_length=64).save_pretrained(rm_dir)
    project = Project.objects.create(name="Checked")
    snapshot = DatasetSnapshot.objects.create(project=project, path="/x", format="jsonl", content_hash="e" * 64)
    rm = TrainingRun.objects.create(kind="rm", status="succeeded", snapshot=snapshot, output_dir=str(rm_dir),
                                    outputs={"reward_model": str(rm_dir)})
    annotator = django_user_model.objects.create_user("judge")
    rankings = []
    for i in range(4):
        prompt = Prompt.objects.create(project=project, text=f"Review number {i}:", round=1 + i % 2)
        ids = [Response.objects.create(prompt=prompt, text=f" text {'x' * j} {i}").pk for j in range(4)]
        tiers = [[ids[0]], [ids[1], ids[2]], [ids[3]]] if i % 2 else [[i_] for i_ in reversed(ids)]
        rankings.append(make_ranking(prompt=prompt, annotator=annotator, tiers=tiers))
    old = rankings.pop(0)  # made before the snapshot: the RM may have trained on it
    Ranking.objects.filter(pk=old.pk).update(created_at=snapshot.created_at - timedelta(hours=1))

    job = jobs.launch_rm_check(project=project, rm_run=rm, created_by=staff)
    tasks.execute_job.call(job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error

    # The same figure computed independently.
    model = RewardModel.from_pretrained(rm_dir)
    correct = pairs = 0.0
    for ranking in rankings:
        ranking.refresh_from_db()
        texts = {r.pk: r.text for r in Response.objects.filter(prompt=ranking.prompt)}
        for winner, loser, _ in ordered_pairs(ranking.tiers):
            w, l_ = model.score_texts([ranking.prompt.text] * 2, [texts[winner], texts[loser]])
            correct += 1.0 if w > l_ else 0.5 if w == l_ else 0.0
            pairs += 1
    result = job.result
    assert result["rankings"] == 3 and result["pairs"] == pairs == 6 + 5 + 5
    assert result["accuracy"] == pytest.approx(correct / pairs)
    assert set(result["by_round"]) == {"1", "2"}
    assert sum(r["pairs"] for r in result["by_round"].values()) == pairs

    with pytest.raises(jobs.LaunchError):
        jobs.launch_rm_check(project=project, rm_run=TrainingRun.objects.create(kind="rm", status="failed"))


def test_stale_jobs_are_marked(roots_in_tmp, project_round_one, policies):
    job = jobs.launch_new_round(project=project_round_one, model_path=policies["new"], k=4)
    old = timezone.now() - timedelta(hours=2)
    Job.objects.filter(pk=job.pk).update(status="running", started_at=old, heartbeat_at=old, host="h1")
    jobs.reap_stale_runs()
    job.refresh_from_db()
    assert job.status == "failed" and job.error.startswith("worker lost (no heartbeat since")
