"""The whole loop from the dashboard, with the real trainers on the tiny model: launch an RM with "export
now", the worker trains it; launch PPO with that RM on the project's prompts, the worker trains it; the run page
shows samples and the before/after evaluation; a new round is sampled from the PPO policy into the project;
the RM is scored on the rankings made after its snapshot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django import forms

from annotate.models import Project, Prompt, Response
from tests.training.conftest import make_ranking
from tests.training.helpers import tiers_by_oracle
from training import tasks
from training.forms import PPOLaunchForm, RMLaunchForm
from training.models import Job, Sample, TrainingRun

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def posted(form: forms.Form, **overrides) -> dict:
    data = {}
    for name, field in form.fields.items():
        initial = form.get_initial_for_field(field, name)
        if isinstance(field, forms.BooleanField):
            if initial:
                data[name] = "on"
        elif initial is not None:
            data[name] = field.prepare_value(initial)
    data.update(overrides)
    return data


@pytest.fixture
def demo_project(django_user_model):
    from training.rlhf.demo_task import DEMO_TASK, demo_prompts, sample_demo_responses

    annotators = [django_user_model.objects.create_user(f"sim-{i}") for i in (1, 2)]
    project = Project.objects.create(name="Demo loop", annotators_per_prompt=2)
    for i, text in enumerate(demo_prompts(n=16, seed=3)):
        prompt = Prompt.objects.create(project=project, text=text, metadata={"task": DEMO_TASK})
        texts = sample_demo_responses(text, k=4, seed=i)
        ids = [Response.objects.create(prompt=prompt, text=t).pk for t in texts]
        tiers = [[ids[j] for j in tier] for tier in tiers_by_oracle(text, texts)]
        for annotator in annotators:
            make_ranking(prompt=prompt, annotator=annotator, tiers=tiers, display_order=ids)
    return project


def test_the_loop_from_the_dashboard(staff_client, settings, roots_in_tmp, tiny_model_dir, demo_project):
    model = str(Path(tiny_model_dir).resolve())
    settings.WORKBENCH_MODEL_ROOTS = [Path(model).parent]

    # 1. RM, exporting the project now.
    response = staff_client.post("/dashboard/launch/rm/", posted(
        RMLaunchForm(), project=demo_project.pk, base_model=model, max_steps=4, batch_size=4, learning_rate=1e-3))
    assert response.status_code == 302
    rm = TrainingRun.objects.get(kind="rm")
    tasks.execute_training_run.call(rm.pk)
    rm.refresh_from_db()
    assert rm.status == "succeeded", rm.error
    assert rm.snapshot.project == demo_project and "heldout" in rm.evaluation

    # 2. PPO with that RM on the project's prompts.
    response = staff_client.post("/dashboard/launch/ppo/", posted(
        PPOLaunchForm(), policy_model=model, reward_model_run=rm.pk, prompt_project=demo_project.pk, iterations=2,
        rollout_batch_size=4, mini_batch_size=4, micro_batch_size=2, ppo_epochs=1, response_length=8,
        sample_every=1, samples_per_table=4, eval_max_prompts=4, eval_fraction=0.25, checkpoint_every=0))
    assert response.status_code == 302, response.context["form"].errors
    ppo = TrainingRun.objects.get(kind="ppo")
    tasks.execute_training_run.call(ppo.pk)
    ppo.refresh_from_db()
    assert ppo.status == "succeeded", ppo.error
    assert Sample.objects.filter(run=ppo).count() == 8  # a table of 4 at each of the 2 iterations
    html = staff_client.get(f"/dashboard/runs/{ppo.pk}/").content.decode()
    assert re.search(r"<th scope=\"row\">rm_score</th><td>[-0-9.e]+</td><td>[-0-9.e]+</td>", html)
    assert "oracle_score" in html and f"/dashboard/runs/{ppo.pk}/new-round/" in html
    assert (Path(ppo.output_dir) / "policy" / "config.json").is_file()

    # 3. A new round sampled from the PPO policy.
    policy = str(Path(ppo.output_dir) / "policy")
    response = staff_client.post(f"/dashboard/runs/{ppo.pk}/new-round/", {
        "project": demo_project.pk, "model": policy, "k": 4, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 12,
        "seed": 0, "baseline_k": 0, "max_prompts": 3})
    assert response.status_code == 302
    job = Job.objects.get(kind="new_round")
    tasks.execute_job.call(job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    new_round = Prompt.objects.filter(project=demo_project, round=2)
    assert new_round.count() == 3
    assert Response.objects.filter(prompt__in=new_round, training_run=ppo).count() == 12

    # 4. The RM on rankings it has not seen: one made now, in round 2.
    prompt = new_round.first()
    ids = list(prompt.responses.values_list("pk", flat=True))
    make_ranking(prompt=prompt, annotator=None, tiers=[[i] for i in ids], source="imported")
    response = staff_client.post(f"/dashboard/projects/{demo_project.pk}/rm-check/", {"rm_run": rm.pk})
    assert response.status_code == 302
    check = Job.objects.get(kind="rm_eval")
    tasks.execute_job.call(check.pk)
    check.refresh_from_db()
    assert check.status == "succeeded", check.error
    assert check.result["rankings"] == 1 and check.result["pairs"] == 6
    assert 0.0 <= check.result["accuracy"] <= 1.0 and set(check.result["by_round"]) == {"2"}
    html = staff_client.get(f"/dashboard/projects/{demo_project.pk}/").content.decode()
    assert f"{100 * check.result['accuracy']:.1f} %" in html
