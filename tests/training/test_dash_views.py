"""Dashboard pages: runs list and filters, run page (curves, samples, evaluation, config, log, lineage,
outputs), the polled region (286 when the run ended), compare, cancel/resume actions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from django.urls import reverse

from training.models import Metric, TrainingRun

pytestmark = pytest.mark.django_db


def script_json(html: str, element_id: str) -> dict:
    match = re.search(rf'<script type="application/json" id="{element_id}">(.*?)</script>', html, re.S)
    assert match, f"no #{element_id} in the page"
    return json.loads(match.group(1))


def test_runs_list_shows_kind_status_launcher_duration_headline_and_data(staff_client, world):
    html = staff_client.get("/dashboard/").content.decode()
    rm, ppo, live = world["rm"], world["ppo"], world["live"]
    for run in (rm, ppo, live):
        assert f'data-run="{run.pk}"' in html
    row = html.split(f'data-run="{rm.pk}"')[1].split("</tr>")[0]
    assert "Reward model" in row and "Succeeded" in row and "boss" in row
    assert "3m 00s" in row  # duration
    assert "held-out accuracy" in row and "0.8125" in row  # headline from the evaluation
    assert "Reviews · abababab<" in row  # the data snapshot
    ppo_row = html.split(f'data-run="{ppo.pk}"')[1].split("</tr>")[0]
    assert f"RM <a href=\"/dashboard/runs/{rm.pk}/\">#{rm.pk}</a>" in ppo_row
    assert "RM score after" in ppo_row and "<strong>0.9</strong>" in ppo_row  # from the before/after evaluation
    # A live run keeps the table polling.
    assert 'hx-trigger="every' in html


def test_runs_list_filters_by_kind_and_status(staff_client, world):
    html = staff_client.get("/dashboard/?kind=ppo").content.decode()
    assert f'data-run="{world["ppo"].pk}"' in html and f'data-run="{world["rm"].pk}"' not in html
    html = staff_client.get("/dashboard/?status=running").content.decode()
    assert f'data-run="{world["live"].pk}"' in html and f'data-run="{world["ppo"].pk}"' not in html
    html = staff_client.get("/dashboard/?kind=rm&status=failed").content.decode()
    assert "No runs match these filters" in html
    # Unknown values are ignored rather than erroring.
    assert staff_client.get("/dashboard/?kind=nope&status=zzz").status_code == 200


def test_the_runs_table_poll_stops_with_286_when_nothing_is_active(staff_client, world):
    headers = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "runs-table"}
    response = staff_client.get("/dashboard/", **headers)
    assert response.status_code == 200 and "<table" in response.content.decode()
    assert "<html" not in response.content.decode()  # a partial
    TrainingRun.objects.filter(pk=world["live"].pk).update(status="succeeded")
    assert staff_client.get("/dashboard/", **headers).status_code == 286


def test_run_page_has_curves_samples_evaluation_config_lineage_and_outputs(staff_client, world):
    ppo, rm = world["ppo"], world["rm"]
    html = staff_client.get(f"/dashboard/runs/{ppo.pk}/").content.decode()
    data = script_json(html, "run-chart-data")
    assert data["series"] == {"kl": [[1, 0.5], [2, 1.0]], "reward": [[1, 0.2], [2, 0.4]]}
    assert data["cursor"] == Metric.objects.filter(run=ppo).order_by("-pk").first().pk
    assert {g["id"] for g in data["groups"]} >= {"reward", "kl", "losses"}
    assert "vendor/chartjs-4.6.1/chart.umd.min.js" in html and "js/dashboard.js" in html
    # Sample table of the latest step, escaped.
    assert "Lovely &lt;b&gt;place&lt;/b&gt;." in html and " Bad." not in html
    # Before/after evaluation with the change.
    assert re.search(r"rm_score</th><td>-0.2</td><td>0.9</td><td>\+1\.1", html)
    assert "win_rate" in html
    # Lineage: snapshot → RM → this PPO run.
    lineage = html.split('class="lineage"')[1].split("</ol>")[0]
    assert lineage.index("snapshot abababababab") < lineage.index(f"/dashboard/runs/{rm.pk}/") < lineage.index(
        "ppo-one")
    # Actions of a finished PPO run.
    assert f"/dashboard/runs/{ppo.pk}/new-round/" in html
    # Finished: the live region does not poll.
    assert 'hx-trigger="every' not in html.split('id="run-live"')[1].split(">")[0]


def test_rm_run_page_shows_per_annotator_table_checkpoints_and_output_links(staff_client, world):
    rm = world["rm"]
    html = staff_client.get(f"/dashboard/runs/{rm.pk}/").content.decode()
    assert "Accuracy per annotator" in html and "<th scope=\"row\">a1</th><td>90.0 %</td><td>69.9–97.2 %</td><td>20</td>" in html
    assert "step 2 ·" in html  # checkpoint
    assert f'href="/dashboard/runs/{rm.pk}/files/config.json"' in html
    assert "learning_rate" in html and "0.001" in html  # config
    response = staff_client.get(f"/dashboard/runs/{rm.pk}/files/config.json")
    assert response.status_code == 200 and b"".join(response.streaming_content) == b'{"learning_rate": 0.001}'
    assert f"/dashboard/launch/ppo/?reward_model_run={rm.pk}" in html


def test_output_files_cannot_escape_the_output_directory(staff_client, world, roots_in_tmp):
    rm = world["rm"]
    (roots_in_tmp["runs"] / "secret.txt").write_text("no")
    for relative in ("../secret.txt", "..%2Fsecret.txt", "/etc/passwd", "checkpoints"):
        assert staff_client.get(f"/dashboard/runs/{rm.pk}/files/{relative}").status_code == 404


def test_the_live_region_returns_new_points_and_stops_polling_with_286_when_the_run_ends(staff_client, world):
    live = world["live"]
    url = reverse("training:run_live", args=[live.pk])
    first = staff_client.get(url, HTTP_HX_REQUEST="true")
    assert first.status_code == 200
    data = script_json(first.content.decode(), "run-live-data")
    assert data["series"] == {"loss": [[1, 0.9]]} and data["active"] is True
    cursor = data["cursor"]
    # Nothing new since the cursor.
    data = script_json(staff_client.get(url, {"after_id": cursor}).content.decode(), "run-live-data")
    assert data["series"] == {} and data["cursor"] == cursor
    # New step and an evaluation metric reported later for the same step both arrive.
    Metric.objects.create(run=live, step=2, name="loss", value=0.7)
    Metric.objects.create(run=live, step=1, name="eval/accuracy", value=0.6)
    data = script_json(staff_client.get(url, {"after_id": cursor}).content.decode(), "run-live-data")
    assert data["series"] == {"loss": [[2, 0.7]], "eval/accuracy": [[1, 0.6]]}
    # The run ends: 286, htmx stops polling (the final state is still rendered).
    TrainingRun.objects.filter(pk=live.pk).update(status="succeeded")
    response = staff_client.get(url, {"after_id": data["cursor"]})
    assert response.status_code == 286
    assert 'data-status="succeeded"' in response.content.decode()


def test_the_live_region_triggers_a_sample_refresh_when_a_new_table_arrives(staff_client, world):
    ppo = world["ppo"]
    TrainingRun.objects.filter(pk=ppo.pk).update(status="running")
    url = reverse("training:run_live", args=[ppo.pk])
    assert staff_client.get(url, {"samples_step": 1})["HX-Trigger"] == "samples-updated"
    assert "HX-Trigger" not in staff_client.get(url, {"samples_step": 2})
    html = staff_client.get(reverse("training:run_samples", args=[ppo.pk]), {"step": 1}).content.decode()
    assert " Bad." in html and "Lovely" not in html


def test_the_run_log_is_tailed_and_downloadable(staff_client, world):
    live = world["live"]
    log = Path(live.output_dir) / "logs" / "run.log"
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {i}\n" for i in range(5000)))
    TrainingRun.objects.filter(pk=live.pk).update(log_path=str(log))
    html = staff_client.get(f"/dashboard/runs/{live.pk}/").content.decode()
    tail = html.split('id="log-tail"')[1].split("</pre>")[0]
    assert "line 4999" in tail and "line 10\n" not in tail
    response = staff_client.get(f"/dashboard/runs/{live.pk}/log/")
    assert b"".join(response.streaming_content).count(b"\n") == 5000
    assert staff_client.get(f"/dashboard/runs/{world['rm'].pk}/log/").status_code == 404


def test_compare_overlays_the_runs_curves(staff_client, world):
    rm, live = world["rm"], world["live"]
    html = staff_client.get("/dashboard/compare/", {"runs": [rm.pk, live.pk]}).content.decode()
    data = script_json(html, "compare-data")
    assert [r["id"] for r in data["runs"]] == [rm.pk, live.pk]
    assert data["metrics"]["loss"] == {str(rm.pk): [[1, 1.0], [2, 0.5], [3, 1 / 3]], str(live.pk): [[1, 0.9]]}
    assert str(live.pk) not in data["metrics"]["accuracy"]
    assert staff_client.get("/dashboard/compare/", {"runs": ["x", "999"]}).status_code == 200


def test_cancel_and_resume_actions(staff_client, world, roots_in_tmp):
    live = world["live"]
    response = staff_client.post(f"/dashboard/runs/{live.pk}/cancel/")
    assert response.status_code == 302
    live.refresh_from_db()
    assert live.cancel_requested and live.status == "running"  # the trainer stops itself
    # Resuming a finished run that has a checkpoint continues in the same directory.
    rm = world["rm"]
    TrainingRun.objects.filter(pk=rm.pk).update(status="cancelled", config={**rm.config, "resume": ""})
    response = staff_client.post(f"/dashboard/runs/{rm.pk}/resume/")
    new = TrainingRun.objects.get(pk=rm.pk)  # the same run, queued again
    assert response["Location"] == f"/dashboard/runs/{rm.pk}/"
    assert new.output_dir == rm.output_dir and new.config["resume"] == "last"
    assert new.status == "queued" and new.task_id
    assert "from step" in staff_client.get(response["Location"]).content.decode()
    # A run still going cannot be resumed; a finished one cannot be cancelled.
    assert staff_client.post(f"/dashboard/runs/{live.pk}/resume/").status_code == 409
    response = staff_client.post(f"/dashboard/runs/{world['ppo'].pk}/cancel/", follow=True)
    assert "has already ended" in response.content.decode()
    assert staff_client.get(f"/dashboard/runs/{live.pk}/cancel/").status_code == 405


def test_retry_without_a_checkpoint_starts_the_same_run_afresh(staff_client, world):
    ppo = world["ppo"]
    # The stored config is what the launch pipeline validated; a retry validates it again.
    TrainingRun.objects.filter(pk=ppo.pk).update(status="failed", config={
        "policy": "p", "prompts": "prompts.jsonl", "output_dir": ppo.output_dir, "resume": ""})
    staff_client.post(f"/dashboard/runs/{ppo.pk}/resume/")
    new = TrainingRun.objects.get(pk=ppo.pk)
    assert new.status == "queued" and new.config["resume"] == ""
    assert new.config["output_dir"] == new.output_dir == ppo.output_dir
    assert not new.metrics.exists() and not new.samples.exists()  # a fresh start: the old curves are gone
    assert new.reward_model_run_id == world["rm"].pk


def test_metrics_are_grouped_into_charts_of_one_scale():
    from training.selectors import chart_group_of

    expected = {
        "loss": "losses", "eval/loss": "losses", "policy_loss": "losses", "value_loss": "losses",
        "accuracy": "accuracy", "eval/oracle_accuracy": "accuracy", "eval/margin": "margin",
        "reward": "reward", "rm_score": "reward", "non_score_reward": "reward", "oracle_score": "reward",
        "kl": "kl", "approx_kl": "approx-kl", "beta": "beta", "kl_coef": "beta",
        "clip_fraction": "clipping", "value_clip_fraction": "clipping", "ratio_mean": "ratio",
        "iteration_s": "time", "rollout_s": "time", "tokens_per_s": "speed", "lr": "learning-rate",
        "critic_lr": "learning-rate", "grad_norm_actor": "gradient-norm", "response_length": "lengths",
        "eos_rate": "eos-rate", "advantage_mean": "values", "episodes": "other",
    }
    assert {name: chart_group_of(name) for name in expected} == expected


def test_compare_has_a_config_diff_a_final_values_table_and_grouped_charts(staff_client, world):
    from training.selectors import compare_series

    rm, live = world["rm"], world["live"]
    TrainingRun.objects.filter(pk=live.pk).update(config={**rm.config, "learning_rate": 0.01})
    page = staff_client.get("/dashboard/compare/", {"runs": [rm.pk, live.pk]})
    html = page.content.decode()
    diff = page.context["tables"]["config_diff"]
    assert [row["name"] for row in diff] == ["learning_rate"] and diff[0]["values"] == [0.001, 0.01]
    assert 'id="compare-config-diff"' in html and 'id="compare-summary"' in html
    summary = {row["name"]: row["values"] for row in page.context["tables"]["summary"]}
    assert summary["loss"] == [1 / 3, 0.9]
    names = list(compare_series(runs=[rm, live]))
    assert names.index("accuracy") < names.index("loss") < names.index("lr")  # chart groups, not A–Z


def test_compare_has_one_row_per_run_with_key_final_metrics_and_reward_and_loss_charts_first(staff_client, world):
    from training.selectors import compare_series

    rm, ppo, live = world["rm"], world["ppo"], world["live"]
    page = staff_client.get("/dashboard/compare/", {"runs": [rm.pk, ppo.pk, live.pk]})
    tables = page.context["tables"]
    assert tables["key_metrics"] == ["reward", "accuracy", "loss", "kl"]
    rows = {row["run"].pk: row for row in tables["runs"]}
    assert rows[rm.pk]["finals"] == [None, pytest.approx(0.8), pytest.approx(1 / 3), None]
    assert rows[ppo.pk]["finals"] == [pytest.approx(0.4), None, None, pytest.approx(1.0)]
    assert rows[rm.pk]["step"] == 3 and rows[rm.pk]["headline"] == ("held-out accuracy", 0.8125)
    html = page.content.decode()
    assert 'id="compare-runs-table"' in html and "ppo-one" in html and ">Succeeded<" in html and ">Running<" in html
    assert html.index('id="compare-runs-table"') < html.index('id="compare-config-diff"') \
        < html.index('id="compare-charts"')
    names = list(compare_series(runs=[rm, ppo]))
    assert names[:4] == ["reward", "accuracy", "loss", "kl"] and names.index("kl") < names.index("lr")
