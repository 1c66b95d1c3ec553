"""`manage.py demo --size small --no-serve` end to end, on the test database, with the real worker: every stage
leaves what it should (users, prompts, demonstrations written through the queue and accepted in review, an SFT
snapshot and run, responses sampled from the SFT model, rankings made through the queue, a snapshot, an RM run
initialised from the SFT model above chance against the oracle, a PPO run from the SFT model with its
before/after evaluation, the three models compared on the same held-out prompts, a new round from the PPO
policy), and a second run reuses all of it instead of training again."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from annotate.models import Assignment, DatasetSnapshot, Demonstration, Project, Prompt, Ranking, Response
from training.demo import DEMO_PROJECT, PLANS, DemoSize
from training.models import Job, Metric, Sample, TrainingRun

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PLAN = PLANS[DemoSize.SMALL]
# Above chance (0.5). The small demo measured 0.64–0.72 on ≈ 150 held-out pairs here, but CI measured 0.541 on 157
# (2026-12-03): its RM is not reliably better than that on every machine yet (issue 14), so the test asks for
# better than chance only.
RM_ORACLE_FLOOR = 0.5
# SFT over the pre-trained model on PPO's held-out prompts (stage 8): +0.37, +0.24, +0.40, +0.32 on seeds 0–3 with the
# small plan (bench/RESULTS.md "The three stages"; +0.47 to +0.49 on the earlier plan's 12 prompts).
SFT_MARGIN = 0.2


@pytest.fixture
def demo_world(settings, tmp_path, tiny_model_dir):
    settings.VAR_DIR = tmp_path
    settings.WORKBENCH_MODEL_ROOTS = [(tmp_path / "models").resolve()]
    settings.WORKBENCH_DATA_ROOT = (tmp_path / "data").resolve()
    settings.WORKBENCH_RUNS_ROOT = (tmp_path / "runs").resolve()
    settings.WORKBENCH_HEARTBEAT_SECONDS = 2
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # The same build as the session's tiny model, so the demo's build step finds it up to date.
    shutil.copytree(tiny_model_dir, tmp_path / "models" / "tiny-demo")
    return tmp_path


def run_demo_command() -> str:
    out = io.StringIO()
    call_command("demo", "--size", "small", "--no-serve", stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_small_demo_runs_every_stage_then_reuses_them(demo_world):
    output = run_demo_command()

    # 1. users and the project; the credentials are printed
    users = get_user_model().objects
    assert users.get(username="admin").is_staff and not users.get(username="alice").is_staff
    assert "alice" in output and "admin" in output and "up to date" in output
    project = Project.objects.get(name=DEMO_PROJECT)
    humans = {"alice", "bob", "carol"}
    assert set(project.annotators.values_list("username", flat=True)) >= humans
    assert len(humans) >= project.annotators_per_prompt  # the humans can finish the new round between them

    # 2. prompts imported
    round_1 = Prompt.objects.filter(project=project, round=1)
    assert round_1.count() == PLAN.prompts
    assert all(p.metadata.get("task") == "demo" for p in round_1)

    # 3. demonstrations written by simulated annotators through the queue, accepted by the staff user, exported
    # as an SFT snapshot, and the tiny model fine-tuned on them through the worker
    demonstrations = Demonstration.objects.filter(prompt__project=project)
    assert demonstrations.count() == PLAN.demonstrations
    assert demonstrations.values("prompt").distinct().count() == PLAN.demonstrations  # spread over prompts
    assert set(demonstrations.values_list("status", flat=True)) == {Demonstration.Status.ACCEPTED}
    assert set(demonstrations.values_list("source", flat=True)) == {Demonstration.Source.SIMULATED}
    assert set(demonstrations.values_list("reviewer__username", flat=True)) == {"admin"}
    assert not demonstrations.filter(annotator__isnull=True).exists()
    sft_snapshot = DatasetSnapshot.objects.get(project=project, kind=DatasetSnapshot.Kind.SFT)
    assert sft_snapshot.counts["train"] + sft_snapshot.counts["test"] == PLAN.demonstrations
    sft = TrainingRun.objects.get(kind=TrainingRun.Kind.SFT)
    assert sft.status == TrainingRun.Status.SUCCEEDED, sft.error
    assert sft.snapshot == sft_snapshot and sft.host and sft.pid
    sft_model = str(sft.output("model") or "")
    assert sft_model and (Path(sft_model) / "config.json").is_file()
    # evaluated on its held-out demonstrations before and after (the figures are in bench/RESULTS.md: the held-out
    # loss barely moves, since the demonstrations are the model's own best samples; the oracle is the measure)
    for when in ("before", "after"):
        assert sft.evaluation[when]["loss"] > 0 and "oracle" in sft.evaluation[when]["samples"]

    # 4. K responses sampled from the SFT model for each prompt
    sampled = Response.objects.filter(prompt__in=round_1)
    assert sampled.count() == PLAN.prompts * PLAN.k
    assert set(sampled.values_list("origin", flat=True)) == {Response.Origin.MODEL}
    assert set(sampled.values_list("model_path", flat=True)) == {str(Path(sft_model).resolve())}

    # 5. simulated annotators went through the queue and the submit path
    rankings = Ranking.objects.filter(prompt__in=round_1)
    assert rankings.count() == PLAN.prompts * PLAN.annotators_per_prompt
    assert set(rankings.values_list("source", flat=True)) == {Ranking.Source.SIMULATED}
    assert not rankings.filter(assignment__isnull=True).exists()
    assert Assignment.objects.filter(prompt__in=round_1, state=Assignment.State.SUBMITTED).count() == rankings.count()

    # 6. a snapshot, and a reward model initialised from the SFT model trained on it, above chance against the
    # hidden oracle
    snapshot = DatasetSnapshot.objects.get(project=project, kind=DatasetSnapshot.Kind.RANKINGS)
    assert (Path(snapshot.path) / "manifest.json").is_file()
    rm = TrainingRun.objects.get(kind=TrainingRun.Kind.RM)
    assert rm.status == TrainingRun.Status.SUCCEEDED, rm.error
    assert rm.snapshot == snapshot and rm.host and rm.pid
    assert rm.config["model"] == sft_model
    assert Metric.objects.filter(run=rm, name="loss").count() == rm.summary["total_steps"] > 0
    oracle = rm.evaluation["heldout"]["oracle"]
    assert oracle["pairs"] >= 100 and oracle["accuracy"] > RM_ORACLE_FLOOR

    # 7. PPO from the SFT model with that reward model, evaluated before and after
    ppo = TrainingRun.objects.get(kind=TrainingRun.Kind.PPO)
    assert ppo.status == TrainingRun.Status.SUCCEEDED, ppo.error
    assert ppo.reward_model_run == rm and ppo.config["policy"] == sft_model
    before, after = ppo.evaluation["before"], ppo.evaluation["after"]
    for key in ("oracle_score", "rm_score", "kl", "eos_rate"):
        assert key in before and key in after
    assert before["kl"] == 0.0 and 0.0 <= after["win_rate"] <= 1.0
    selection = ppo.evaluation["selection"]
    assert Metric.objects.filter(run=ppo, name="kl").count() == selection["last_iteration"]
    assert selection["last_iteration"] == PLAN.ppo["iterations"] or selection["stopped_early"]
    assert Metric.objects.filter(run=ppo, name="eval/oracle_score").exists()  # proxy vs gold per iteration
    assert Sample.objects.filter(run=ppo).exists()
    assert "oracle score" in output and "win rate" in output and "oracle gain" in output
    # PPO from the SFT model: the RM-score gain's 95 % interval over PPO's held-out prompts is above 0, and the gold
    # (oracle) score is not made worse beyond the evaluation's noise (the upper end of its interval is not below 0;
    # a run that keeps the start policy has a gain of exactly 0). With the small plan (64 prompts × 8, 16 held-out
    # prompts) the oracle gain cleared its interval on seeds 0–3 on SQLite (+0.70, +0.45, +0.85, +0.77; lower ends
    # +0.48 to +0.62 and +0.20), but one of two CI runs on PostgreSQL gave +0.17 (−0.09 to +0.43) for seed 0: the
    # demo on PostgreSQL does not repeat run to run, and one such draw spans 0 (bench/RESULTS.md "The small plan that clears the noise").
    gain = ppo.evaluation["delta_ci"]["oracle_score"]
    assert after["n_prompts"] == gain["n_prompts"] * PLAN.ppo["eval_samples"]
    assert gain["high"] >= 0, gain
    assert ppo.evaluation["delta_ci"]["rm_score"]["low"] > 0, ppo.evaluation["delta_ci"]

    # 9. a new round from the PPO policy (and, blind, from the starting policy) for humans
    job = Job.objects.get(kind=Job.Kind.NEW_ROUND)
    assert job.status == Job.Status.SUCCEEDED, job.error
    round_2 = Prompt.objects.filter(project=project, round=2)
    assert round_2.count() == PLAN.new_round_prompts
    from_ppo = Response.objects.filter(prompt__in=round_2, training_run=ppo).count()
    assert from_ppo == PLAN.new_round_prompts * (PLAN.k - PLAN.new_round_baseline)
    assert Response.objects.filter(prompt__in=round_2).count() == PLAN.new_round_prompts * PLAN.k

    figures = json.loads((demo_world / "demo-small.json").read_text())
    assert figures["run_ids"] == {"sft": sft.pk, "rm": rm.pk, "ppo": ppo.pk}
    assert figures["figures"]["rm_oracle_accuracy"] == pytest.approx(oracle["accuracy"])

    # 8. the three stages on the same held-out prompts (PPO's), each sampled alike, and PPO's KL to the SFT model
    stages = figures["figures"]["stages"]
    assert stages["n_prompts"] == gain["n_prompts"] and stages["samples"] == PLAN.ppo["eval_samples"]
    assert set(stages["oracle"]) == {"pretrained", "sft", "ppo"}
    assert stages["ppo_kl_to_sft"] == pytest.approx(after["kl"]) and after["kl"] > 0
    assert "pre-trained tiny model" in output and "SFT model" in output and "PPO KL to the SFT model" in output
    # SFT on the oracle's best-of-8 demonstrations beats the pre-trained model by a margin that held in every
    # measured run (bench/RESULTS.md "`make demo`")
    assert stages["oracle"]["sft"] > stages["oracle"]["pretrained"] + SFT_MARGIN, stages

    # A second run continues: nothing is sampled, ranked or trained again.
    again = run_demo_command()
    assert "reusing" in again
    assert TrainingRun.objects.count() == 3 and Job.objects.count() == 1
    assert Demonstration.objects.filter(prompt__project=project).count() == PLAN.demonstrations
    assert Ranking.objects.filter(prompt__project=project).count() == rankings.count()
    assert Response.objects.filter(prompt__project=project).count() == sampled.count() + round_2.count() * PLAN.k
