"""Launch-form defaults derived from the chosen model (its config.json's size) and data (its training rankings):
known answers of the pure functions, the forms' initial values, and the htmx answer to another choice."""

from __future__ import annotations

import json

import pytest

from annotate.models import DatasetSnapshot, Project
from training.forms import RMLaunchForm
from training.launch_defaults import (
    RM_LR_ANCHORS,
    log_interpolate,
    parameter_count,
    read_parameter_count,
    rm_batch_size,
    suggest_ppo,
    suggest_rm,
)
from training.rlhf.rm_config import RewardModelConfig

GPT2_SMALL = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257,
              "n_positions": 1024}
QWEN25_05B = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14,
              "num_key_value_heads": 2, "num_hidden_layers": 24, "vocab_size": 151936, "tie_word_embeddings": True}
# The demo's tiny model (training/rlhf/tiny_model.py): 940,800 parameters counted by torch.
TINY = {"model_type": "gpt2", "n_embd": 128, "n_layer": 4, "n_head": 4, "vocab_size": 1024, "n_positions": 128,
        "tie_word_embeddings": True}


@pytest.mark.parametrize("config, published", [(GPT2_SMALL, 124_439_808), (QWEN25_05B, 494_032_768),
                                               (TINY, 940_800)])
def test_parameter_count_known_answers(config, published):
    # Biases and norms are left out: within 1 % of the published / counted figure.
    assert parameter_count(config) == pytest.approx(published, rel=0.01)


def test_parameter_count_by_hand_and_unknown_configs():
    # GPT-2 tiny by hand: 4 layers x 12 x 128^2 + 1024 x 128 token + 128 x 128 position embeddings.
    assert parameter_count(TINY) == 4 * 12 * 128 * 128 + 1024 * 128 + 128 * 128
    untied = {**QWEN25_05B, "tie_word_embeddings": False}
    assert parameter_count(untied) - parameter_count(QWEN25_05B) == 151936 * 896
    assert parameter_count({}) is None
    assert parameter_count({"n_embd": "big", "n_layer": 2, "vocab_size": 10}) is None


def test_log_interpolation_hits_its_anchors_and_clamps():
    (x0, y0), (x1, y1) = RM_LR_ANCHORS
    assert log_interpolate(x0, RM_LR_ANCHORS) == pytest.approx(y0)
    assert log_interpolate(x1, RM_LR_ANCHORS) == pytest.approx(y1)
    assert log_interpolate((x0 * x1) ** 0.5, RM_LR_ANCHORS) == pytest.approx((y0 * y1) ** 0.5)  # geometric midpoint
    assert log_interpolate(10, RM_LR_ANCHORS) == pytest.approx(y0)
    assert log_interpolate(1e12, RM_LR_ANCHORS) == pytest.approx(y1)


def test_a_tiny_model_gets_a_higher_lr_and_more_epochs_than_a_half_billion_one():
    tiny = suggest_rm(parameters=parameter_count(TINY), train_rankings=None).options
    qwen = suggest_rm(parameters=parameter_count(QWEN25_05B), train_rankings=None).options
    assert tiny == {"learning_rate": 1e-3, "epochs": 3}
    assert qwen["epochs"] == 1 and 1e-5 < qwen["learning_rate"] < 1e-4 < tiny["learning_rate"]
    ppo_tiny = suggest_ppo(parameters=parameter_count(TINY)).options
    ppo_qwen = suggest_ppo(parameters=parameter_count(QWEN25_05B)).options
    assert ppo_tiny == {"lr": 2e-4, "critic_lr": 6e-4}
    assert 3e-6 < ppo_qwen["lr"] < ppo_tiny["lr"] and ppo_qwen["critic_lr"] == pytest.approx(3 * ppo_qwen["lr"])
    assert suggest_rm(parameters=None, train_rankings=None).options == {}
    for options in (tiny, qwen):
        RewardModelConfig(model="m", dataset="d", **options)  # valid for the trainer


@pytest.mark.parametrize("rankings, batch", [(0, 1), (30, 1), (40, 2), (87, 4), (159, 4), (160, 8), (10_000, 8)])
def test_batch_size_keeps_twenty_steps_per_epoch(rankings, batch):
    assert rm_batch_size(rankings) == batch


def write_model(directory, config):
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_read_parameter_count_follows_an_adapter_to_its_base(tmp_path):
    base = write_model(tmp_path / "base", TINY)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    assert read_parameter_count(adapter) == parameter_count(TINY)
    assert read_parameter_count(adapter, roots=[tmp_path.resolve()]) == parameter_count(TINY)
    assert read_parameter_count(adapter, roots=[(tmp_path / "adapter").resolve()]) is None  # base outside the roots
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert read_parameter_count(tmp_path / "broken") is None
    assert read_parameter_count(tmp_path / "missing") is None


@pytest.fixture
def models(roots_in_tmp):
    return {"tiny": write_model(roots_in_tmp["models"] / "tiny", TINY),
            "qwen": write_model(roots_in_tmp["models"] / "qwen", QWEN25_05B)}


@pytest.fixture
def exported(roots_in_tmp):
    path = roots_in_tmp["data"] / "snapshots" / "3-reviews"
    path.mkdir(parents=True)
    return DatasetSnapshot.objects.create(
        project=Project.objects.create(name="Reviews"), path=str(path), format="jsonl", content_hash="e" * 64,
        counts={"kwise": {"train": 87, "test": 14}, "prompts": {"train": 36, "test": 12}},
    )


@pytest.mark.django_db
def test_the_rm_form_starts_from_the_chosen_model_and_snapshot(roots_in_tmp, models, exported):
    form = RMLaunchForm(initial={"base_model": str(models["tiny"]), "snapshot": exported.pk})
    assert [form.get_initial_for_field(form.fields[n], n) for n in ("learning_rate", "epochs", "batch_size")] == \
        [1e-3, 3, 4]
    assert "0.93 M parameters" in form.suggestion_text() and "87 training rankings" in form.suggestion_text()
    big = RMLaunchForm(initial={"base_model": str(models["qwen"])})
    assert big.get_initial_for_field(big.fields["epochs"], "epochs") == 1
    assert big.get_initial_for_field(big.fields["batch_size"], "batch_size") == 8  # no data: the default
    # A path that is not one of the choices is not read; a run's own config ("launch again") wins.
    assert RMLaunchForm(initial={"base_model": "/etc"}).suggestion.options == {}
    again = RMLaunchForm(initial={"base_model": str(models["tiny"]), "learning_rate": 5e-4})
    assert again.get_initial_for_field(again.fields["learning_rate"], "learning_rate") == 5e-4
    # Snapshots by name and size, not hash.
    label = [text for value, text in form.fields["snapshot"].choices if str(value) == str(exported.pk)][0]
    assert label.startswith("3-reviews · Reviews · 101 rankings") and "eeee" not in label


@pytest.mark.django_db
def test_picking_another_model_answers_the_derived_fields_out_of_band(staff_client, roots_in_tmp, models, exported):
    page = staff_client.get("/dashboard/launch/rm/").content.decode()
    assert 'hx-get="/dashboard/launch/rm/defaults/"' in page and 'id="launch-suggestion"' in page
    response = staff_client.get("/dashboard/launch/rm/defaults/",
                                {"base_model": str(models["tiny"]), "snapshot": exported.pk, "project": ""},
                                HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert response.status_code == 200
    assert html.count('hx-swap-oob="true"') == 3
    assert 'id="field-learning_rate"' in html and 'value="0.001"' in html
    assert 'name="epochs" value="3"' in html
    assert 'name="batch_size" value="4"' in html
    # Back to a model of unknown size: the derived fields return to the config's defaults.
    html = staff_client.get("/dashboard/launch/rm/defaults/", {"base_model": ""}).content.decode()
    assert 'name="learning_rate" value="1e-05"' in html and 'name="epochs" value="1"' in html
    ppo = staff_client.get("/dashboard/launch/ppo/defaults/", {"policy_model": str(models["qwen"])}).content.decode()
    assert 'name="lr" value="1.1e-05"' in ppo and 'name="critic_lr" value="3.3e-05"' in ppo
    assert staff_client.get("/dashboard/launch/sft-nope/defaults/").status_code == 404


@pytest.mark.django_db
def test_the_defaults_answer_is_staff_only(client, annotator, roots_in_tmp):
    assert client.get("/dashboard/launch/rm/defaults/").status_code == 302  # to the login page
    client.force_login(annotator)
    assert client.get("/dashboard/launch/rm/defaults/").status_code == 403


@pytest.mark.django_db
def test_export_now_sizes_the_batch_from_the_project_s_rankings(staff_client, world, models):
    from tests.training.conftest import make_ranking

    project = world["project"]  # 4 rankings: 4 x 0.9 held in -> 4 training rankings -> batch 1
    html = staff_client.get("/dashboard/launch/rm/defaults/", {"project": project.pk, "snapshot": ""}).content.decode()
    assert 'name="batch_size" value="1"' in html and "batch size 1 for 4 training rankings" in html
    prompt, ids = world["prompts"][2]
    for i in range(50):  # 54 rankings -> 49 training rankings -> batch 2 (24 steps per epoch)
        make_ranking(prompt=prompt, annotator=world["ann1"] if i % 2 else world["ann2"], tiers=[[r] for r in ids])
    html = staff_client.get("/dashboard/launch/rm/defaults/", {"project": project.pk}).content.decode()
    assert 'name="batch_size" value="2"' in html and "49 training rankings" in html
