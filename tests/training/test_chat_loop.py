"""A chat project through the Django side of the loop: a new round is sampled in the project's chat template
(the text the model saw carries the template's markers), a policy or reward model of another format is
refused with both formats named, the export records the format, and the launch forms (and the API) start
from the format of the project, snapshot or reward-model run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from annotate.models import DatasetSnapshot, Project, Prompt, Ranking, Response
from tests.training.conftest import make_ranking
from tests.training.test_dash_launch import form_data
from training import jobs, rounds, tasks
from training.forms import PPOLaunchForm, RMLaunchForm
from training.models import TrainingRun
from training.rlhf import sampling
from training.rlhf.chat_format import PromptFormat, PromptFormatError

pytestmark = pytest.mark.django_db(transaction=True)

SYSTEM = "Answer as a reviewer."
CHAT = {"kind": "chat", "system_prompt": SYSTEM}


@pytest.fixture
def chat_project(staff):
    project = Project.objects.create(name="Chatty", k_min=4, k_max=6, prompt_format="chat", system_prompt=SYSTEM)
    for i in range(2):
        prompt = Prompt.objects.create(project=project, text=f"Review the cafe number {i}:")
        for j in range(4):
            Response.objects.create(prompt=prompt, text=f" answer {j} for {i}")
    return project


@pytest.fixture
def chat_policy(roots_in_tmp, tiny_chat_model_dir) -> Path:
    target = roots_in_tmp["runs"] / "ppo-7" / "policy"
    shutil.copytree(tiny_chat_model_dir, target)
    return target


def ppo_run(policy: Path, **config) -> TrainingRun:
    return TrainingRun.objects.create(kind="ppo", status="succeeded", output_dir=str(policy.parent),
                                      outputs={"policy": str(policy)}, config={"policy": "sft", **config})


def test_a_new_round_of_a_chat_project_is_sampled_in_the_template(chat_project, chat_policy, monkeypatch):
    seen: list[str] = []
    encode = sampling.encode_prompts

    def spy(tokenizer, prompts, **kwargs):
        out = encode(tokenizer, prompts, **kwargs)
        seen.extend(tokenizer.decode(ids) for ids in out)
        return out

    monkeypatch.setattr(sampling, "encode_prompts", spy)
    ppo = ppo_run(chat_policy, prompt_format="chat", system_prompt=SYSTEM)
    job = jobs.launch_new_round(project=chat_project, model_path=chat_policy, training_run=ppo, k=4,
                                sampling={"max_new_tokens": 6, "seed": 1, "temperature": 1.5})
    tasks.execute_job.call(job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error

    texts = set(Prompt.objects.filter(project=chat_project, round=1).values_list("text", flat=True))
    expected = {f"### System: {SYSTEM}\n### User: {text}\n### Assistant:" for text in texts}
    assert seen and set(seen) == expected  # every prompt, in the template, and nothing else
    new = Response.objects.filter(prompt__project=chat_project, round=2)
    assert new.count() == job.result["responses"] > 0
    assert all(r.sampling_params["prompt_format"] == CHAT for r in new)
    assert not any("###" in r.text for r in new)  # the assistant's text alone


def test_a_new_round_refuses_a_policy_trained_on_another_format(chat_project, chat_policy):
    ppo = ppo_run(chat_policy)  # trained before formats were recorded: plain
    with pytest.raises(PromptFormatError) as caught:
        rounds.sample_new_round(project=chat_project, model_path=str(chat_policy), training_run=ppo, k=4)
    assert "plain text" in str(caught.value) and "the chat template" in str(caught.value)
    assert not Prompt.objects.filter(project=chat_project, round=2).exists()  # nothing copied


def test_a_plain_project_still_samples_plain_text(chat_project, chat_policy, monkeypatch):
    Project.objects.filter(pk=chat_project.pk).update(prompt_format="plain")  # the system prompt stays, unused
    seen: list[str] = []
    encode = sampling.encode_prompts
    monkeypatch.setattr(sampling, "encode_prompts", lambda tok, prompts, **kw: (
        seen.extend(prompts), encode(tok, prompts, **kw))[1])
    summary = rounds.sample_new_round(project=Project.objects.get(pk=chat_project.pk), model_path=str(chat_policy),
                                      k=4, sampling={"max_new_tokens": 4, "temperature": 1.5})
    assert summary["responses"] > 0 and seen and not any("###" in text for text in seen)
    assert all("prompt_format" not in r.sampling_params
               for r in Response.objects.filter(prompt__project=chat_project, round=2))


def test_the_rm_check_refuses_a_reward_model_of_another_format(roots_in_tmp, chat_project, tiny_chat_model_dir,
                                                               staff, django_user_model):
    from training.rlhf.reward_model import RewardModel

    rm_dir = roots_in_tmp["runs"] / "rm-3"
    RewardModel.from_backbone(str(tiny_chat_model_dir), max_length=64,
                              prompt_format=PromptFormat("chat", SYSTEM)).save_pretrained(rm_dir)
    rm = TrainingRun.objects.create(kind="rm", status="succeeded", output_dir=str(rm_dir),
                                    outputs={"reward_model": str(rm_dir)})
    Ranking.objects.all().delete()
    judge = django_user_model.objects.create_user("judge")
    for prompt in Prompt.objects.filter(project=chat_project):
        ids = list(prompt.responses.values_list("pk", flat=True))
        make_ranking(prompt=prompt, annotator=judge, tiers=[[i] for i in ids])
    job = jobs.launch_rm_check(project=chat_project, rm_run=rm, created_by=staff)
    tasks.execute_job.call(job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.result["pairs"] == 12

    Project.objects.filter(pk=chat_project.pk).update(prompt_format="plain")
    job = jobs.launch_rm_check(project=Project.objects.get(pk=chat_project.pk), rm_run=rm, created_by=staff)
    tasks.execute_job.call(job.pk)
    job.refresh_from_db()
    assert job.status == "failed" and "plain text" in job.error and "the chat template" in job.error


def test_the_export_manifest_and_snapshot_record_the_format(roots_in_tmp, chat_project, django_user_model):
    from annotate.services.exporting import export_snapshot

    judge = django_user_model.objects.create_user("judge")
    for prompt in Prompt.objects.filter(project=chat_project):
        make_ranking(prompt=prompt, annotator=judge, tiers=[[i] for i in prompt.responses.values_list("pk", flat=True)])
    snapshot = export_snapshot(project=chat_project, out_dir=roots_in_tmp["data"] / "snap", format="jsonl")
    manifest = json.loads((Path(snapshot.path) / "manifest.json").read_text())
    assert manifest["prompt_format"] == CHAT and snapshot.params["prompt_format"] == CHAT
    assert "prompt_format" not in manifest["params"]  # the export's own parameters are unchanged


def test_launch_forms_start_from_the_format_of_their_sources(roots_in_tmp, chat_project, staff_client):
    snapshot = DatasetSnapshot.objects.create(project=chat_project, path=str(roots_in_tmp["data"]), format="jsonl",
                                              content_hash="d" * 64)
    for initial in ({"project": chat_project.pk}, {"snapshot": snapshot.pk}):
        form = RMLaunchForm(initial=initial)
        assert form.get_initial_for_field(form.fields["prompt_format"], "prompt_format") == "chat"
        assert form.get_initial_for_field(form.fields["system_prompt"], "system_prompt") == SYSTEM
    plain = RMLaunchForm()
    assert plain.get_initial_for_field(plain.fields["prompt_format"], "prompt_format") == "plain"
    html = staff_client.get(f"/dashboard/launch/rm/?project={chat_project.pk}").content.decode()
    assert '<option value="chat" selected>' in html and SYSTEM in html

    rm = TrainingRun.objects.create(kind="rm", status="succeeded", config={"prompt_format": "chat",
                                                                           "system_prompt": SYSTEM})
    form = PPOLaunchForm(initial={"reward_model_run": rm.pk})
    assert form.get_initial_for_field(form.fields["prompt_format"], "prompt_format") == "chat"
    html = staff_client.get(f"/dashboard/launch/ppo/?reward_model_run={rm.pk}").content.decode()
    assert '<option value="chat" selected>' in html and SYSTEM in html


def test_a_ppo_launch_with_another_format_than_its_reward_model_is_refused(roots_in_tmp, world, staff_client,
                                                                         client):
    from rest_framework.authtoken.models import Token

    rm, project = world["rm"], world["project"]
    TrainingRun.objects.filter(pk=rm.pk).update(config={**rm.config, "prompt_format": "chat", "system_prompt": SYSTEM})
    policy = roots_in_tmp["models"] / "tiny"
    policy.mkdir()
    (policy / "config.json").write_text("{}")
    data = form_data(PPOLaunchForm(), policy_model=str(policy), reward_model_run=rm.pk, prompt_project=project.pk,
                     iterations=1, prompt_format="plain", system_prompt="")
    response = staff_client.post("/dashboard/launch/ppo/", data)
    assert response.status_code == 200
    errors = response.context["form"].errors["prompt_format"][0]
    assert "plain text" in errors and "the chat template" in errors
    assert not TrainingRun.objects.filter(kind="ppo", status="queued").exists()

    # The API starts from the reward-model run's format when the request leaves it out.
    token = Token.objects.create(user=world["rm"].created_by)
    response = client.post("/api/runs/ppo/", {"policy_model": str(policy), "reward_model_run": rm.pk,
                                              "prompt_project": project.pk, "iterations": 1},
                           content_type="application/json", HTTP_AUTHORIZATION=f"Token {token.key}")
    assert response.status_code == 201, response.json()
    run = TrainingRun.objects.get(pk=response.json()["id"])
    assert (run.config["prompt_format"], run.config["system_prompt"]) == ("chat", SYSTEM)
    response = client.post("/api/runs/ppo/", {"policy_model": str(policy), "reward_model_run": rm.pk,
                                              "prompt_project": project.pk, "iterations": 1, "prompt_format": "plain",
                                              "system_prompt": ""},
                           content_type="application/json", HTTP_AUTHORIZATION=f"Token {token.key}")
    assert response.status_code == 400 and "prompt_format" in response.json()


def test_the_commands_take_the_format_their_input_files_record(roots_in_tmp, tiny_chat_model_dir, settings,
                                                              tmp_path):
    """What `train_rm` / `train_ppo` without --prompt-format get, on every process alike: the snapshot
    manifest's format for the RM, the reward model's for PPO; a format or system prompt named is kept."""
    from django.core.management import call_command

    from training.cli import default_prompt_format
    from training.rlhf.reward_model import RewardModel

    snapshot = tmp_path / "snap"
    (snapshot / "kwise").mkdir(parents=True)
    rows = [json.dumps({"prompt_id": str(p), "prompt": f"Review place {p}:", "ranking": [[0], [1], [2], [3]],
                        "responses": [f" It was {w} number {p}." for w in ("lovely", "fresh", "cold", "awful")]})
            for p in range(12)]
    (snapshot / "kwise" / "train.jsonl").write_text("\n".join(rows[:9]) + "\n")
    (snapshot / "kwise" / "test.jsonl").write_text("\n".join(rows[9:]) + "\n")
    (snapshot / "manifest.json").write_text(json.dumps({"format": "jsonl", "prompt_format": CHAT}))
    values = {"dataset": str(snapshot)}
    default_prompt_format(values, kind="rm")
    assert (values["prompt_format"], values["system_prompt"]) == ("chat", SYSTEM)
    named = {"dataset": str(snapshot), "system_prompt": "Mine."}
    default_prompt_format(named, kind="rm")
    assert "prompt_format" not in named  # the user's choice, validated by the config
    rm_dir = tmp_path / "rm"
    RewardModel.from_backbone(str(tiny_chat_model_dir), prompt_format=PromptFormat("chat", SYSTEM)).save_pretrained(rm_dir)
    values = {}
    default_prompt_format(values, kind="ppo", reward_model=str(rm_dir))
    assert (values["prompt_format"], values["system_prompt"]) == ("chat", SYSTEM)
    values = {}
    default_prompt_format(values, kind="ppo", reward_model=str(tmp_path / "missing"))
    assert values == {}

    settings.WORKBENCH_RUNS_ROOT = tmp_path / "runs"
    call_command("train_rm", dataset=str(snapshot), model=str(tiny_chat_model_dir), output_dir=str(tmp_path / "out"),
                 max_steps=1, batch_size=4, calibration_set="none", checkpoint_every=0, no_progress=True)
    run = TrainingRun.objects.get(kind="rm")
    assert run.status == "succeeded", run.error
    assert (run.config["prompt_format"], run.config["system_prompt"]) == ("chat", SYSTEM)
    assert json.loads((tmp_path / "out" / "reward_model.json").read_text())["prompt_format"] == CHAT


def test_a_launch_naming_another_format_than_its_rm_run_is_refused(roots_in_tmp, world):
    from training import launching

    TrainingRun.objects.filter(pk=world["rm"].pk).update(config={"prompt_format": "chat", "system_prompt": SYSTEM})
    world["rm"].refresh_from_db()
    ppo = launching.launch_run(kind="ppo", options={"policy": "p", "prompt_format": "chat", "system_prompt": SYSTEM},
                               reward_model_run=world["rm"], prompt_project=world["project"])
    assert (ppo.config["prompt_format"], ppo.config["system_prompt"]) == ("chat", SYSTEM)
    with pytest.raises(launching.LaunchError) as refused:
        launching.launch_run(kind="ppo", options={"policy": "p", "prompt_format": "chat", "system_prompt": "Other."},
                             reward_model_run=world["rm"], prompt_project=world["project"])
    assert refused.value.field == "prompt_format" and "'Other.'" in str(refused.value)
    with pytest.raises(launching.LaunchError, match="plain text"):
        launching.launch_run(kind="ppo", options={"policy": "p"}, reward_model_run=world["rm"],
                             prompt_project=world["project"])
