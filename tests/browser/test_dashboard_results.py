"""In real Chromium, issue 16 items 8–10 through the pages: launch forms whose learning rate, epochs and batch
size follow the chosen model and snapshot (htmx), "Launch again with this config" and a New round form that is
valid as it is; a reward model's evaluation in words with usernames and no overlapping labels; Compare with one
row per run and the config diff above the charts; statistics with their n and an interval or "too few".
Desktop (1280 px) and phone (390 px) where layout matters; screenshots under artifacts/.

The runs are rows the test writes (no worker): these pages only read rows and files."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.browser.helpers import log_in
from tests.browser.test_csp_browser import WATCH_VIOLATIONS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

TINY = {"model_type": "gpt2", "n_embd": 128, "n_layer": 4, "n_head": 4, "vocab_size": 1024, "n_positions": 128}
HALF_B = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14,
          "num_key_value_heads": 2, "num_hidden_layers": 24, "vocab_size": 151936, "tie_word_embeddings": True}


@pytest.fixture
def results_world(settings, tmp_path, django_user_model):
    from annotate.models import DatasetSnapshot, Project, Prompt, Response
    from annotate.services.exporting import annotator_pseudonym
    from tests.training.conftest import make_ranking
    from training.models import Metric, TrainingRun

    models, data, runs = (tmp_path / name for name in ("models", "data", "runs"))
    for name, config in (("tiny", TINY), ("half-b", HALF_B)):
        (models / name).mkdir(parents=True)
        (models / name / "config.json").write_text(json.dumps(config))
    settings.WORKBENCH_MODEL_ROOTS = [models.resolve()]
    settings.WORKBENCH_DATA_ROOT = data.resolve()
    settings.WORKBENCH_RUNS_ROOT = runs.resolve()
    django_user_model.objects.create_user("staffer", password="browser-pw-1", is_staff=True)
    alice = django_user_model.objects.create_user("alice", password="x")
    bob = django_user_model.objects.create_user("bob", password="x")
    project = Project.objects.create(name="Reviews", annotators_per_prompt=2, k_min=4, k_max=6)
    project.annotators.add(alice, bob)
    for p in range(3):
        prompt = Prompt.objects.create(project=project, text=f"Review place {p}:")
        ids = [Response.objects.create(prompt=prompt, text=" word" * (i + 1)).pk for i in range(4)]
        make_ranking(prompt=prompt, annotator=alice, tiers=[[i] for i in reversed(ids)], display_order=ids)
        make_ranking(prompt=prompt, annotator=bob, tiers=[[i] for i in (ids if p else reversed(ids))],
                     display_order=ids)
    snap_dir = data / "snapshots" / "3-reviews"
    snap_dir.mkdir(parents=True)
    snapshot = DatasetSnapshot.objects.create(project=project, path=str(snap_dir.resolve()), format="jsonl",
                                              content_hash="e" * 64,
                                              counts={"kwise": {"train": 87, "test": 14}})
    now = timezone.now()
    heldout = {"accuracy": 0.6616, "pairs": 198, "rankings": 14, "prompts": 7, "mean_margin": 0.2901,
               "mean_margin_calibrated": 0.2901, "loss": 0.6217, "reward_mean": -1.882, "reward_std": 1.393,
               "oracle": {"accuracy": 0.7677, "pairs": 99, "prompts": 7, "annotator_agreement": 0.7323, "top1": 0.5714},
               "per_annotator": {annotator_pseudonym(f"user:{alice.pk}"): {"accuracy": 0.7071, "pairs": 99, "rankings": 7},
                                 annotator_pseudonym(f"user:{bob.pk}"): {"accuracy": 0.6162, "pairs": 99, "rankings": 7}},
               "per_k": {"4": {"accuracy": 0.6616, "pairs": 198, "rankings": 14}}}
    evaluation = {"calibration": {"bias": 1.882, "calibrated_mean": 1.269e-16, "calibrated_std": 1.393, "gain": 1.0,
                                  "n": 42, "raw_mean": -1.882, "raw_std": 1.393, "set": "heldout"},
                  "data": {"dataset": str(snap_dir), "eval_rankings": 14, "eval_source": "split 'test'",
                           "train_rankings": 87}, "heldout": heldout, "steps": 44}
    config = {"model": str((models / "tiny").resolve()), "dataset": str(snap_dir.resolve()), "learning_rate": 1e-3,
              "epochs": 3, "batch_size": 4}
    rm = TrainingRun.objects.create(kind="rm", name="rm tiny", status="succeeded", config=config, project=project,
                                    snapshot=snapshot, started_at=now - timedelta(minutes=3), finished_at=now,
                                    evaluation=evaluation, summary={"loss": 0.5, "step": 44})
    rm2 = TrainingRun.objects.create(kind="rm", name="rm tiny lr 3e-4", status="succeeded",
                                     config={**config, "learning_rate": 3e-4}, project=project, snapshot=snapshot,
                                     started_at=now - timedelta(minutes=2), finished_at=now,
                                     evaluation={"heldout": {**heldout, "accuracy": 0.61}},
                                     summary={"loss": 0.6, "step": 44})
    for run, slope in ((rm, 1.0), (rm2, 0.5)):
        Metric.objects.bulk_create([Metric(run=run, step=s, name=n, value=v) for s in range(1, 45, 4)
                                    for n, v in (("loss", 0.7 - slope * s / 100), ("accuracy", 0.5 + slope * s / 200),
                                                 ("lr", 1e-3), ("grad_norm", 1.0), ("tokens_per_s", 900.0))])
    policy = runs / "ppo-9" / "policy"
    policy.mkdir(parents=True)
    (policy / "config.json").write_text(json.dumps(TINY))
    ppo = TrainingRun.objects.create(
        kind="ppo", name="ppo tiny", status="succeeded", project=project, reward_model_run=rm,
        config={"policy": str((models / "tiny").resolve())}, outputs={"policy": str(policy.resolve())},
        started_at=now - timedelta(minutes=1), finished_at=now,
        evaluation={"before": {"rm_score": -0.2, "n_prompts": 12}, "after": {"rm_score": 0.9, "win_rate": 0.75,
                                                                           "n_prompts": 12},
                    "delta_ci": {"rm_score": {"mean": 1.1, "low": 0.8, "high": 1.4, "n_prompts": 12}}},
    )
    # A blind A/B round: the PPO policy against its start policy, named by run (not path) on the stats page.
    ab = Prompt.objects.create(project=project, text="AB prompt", round=2)
    new = [Response.objects.create(prompt=ab, text=f"new {i}", model_path=str(policy.resolve()), round=2).pk
           for i in range(2)]
    old = [Response.objects.create(prompt=ab, text=f"old {i}", model_path=str((models / "tiny").resolve()),
                                   round=2).pk for i in range(2)]
    make_ranking(prompt=ab, annotator=alice, tiers=[[new[0]], [old[0]], [new[1]], [old[1]]])
    return {"project": project, "snapshot": snapshot, "rm": rm, "rm2": rm2, "ppo": ppo,
            "tiny": str((models / "tiny").resolve()), "half_b": str((models / "half-b").resolve())}


def open_as_staff(page, live_server, url: str, *, width: int = 1280) -> None:
    """Log in as staff at `width` px and land on `url`."""
    page.set_viewport_size({"width": width, "height": 900})
    page.set_default_timeout(20_000)
    log_in(page, live_server, username="staffer", password="browser-pw-1", next_url=url)


def no_horizontal_overflow(page) -> bool:
    return page.evaluate("() => document.documentElement.scrollWidth <= document.documentElement.clientWidth + 1")


def overlapping_labels(page, selector: str) -> list:
    """Pairs of elements matching `selector` whose boxes overlap (text drawn over other text)."""
    return page.evaluate(
        """(selector) => {
            const boxes = Array.from(document.querySelectorAll(selector)).filter(e => e.offsetParent !== null)
              .map(e => [e.textContent.trim(), e.getBoundingClientRect()]);
            const hits = [];
            for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
              const [ta, a] = boxes[i], [tb, b] = boxes[j];
              if (a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1)
                hits.push([ta, tb]);
            }
            return hits;
        }""",
        selector,
    )


def value_of(page, name: str) -> str:
    return page.input_value(f"#id_{name}")


@pytest.mark.parametrize("width", [1280, 390])
def test_launch_defaults_follow_the_model_and_snapshot(page, live_server, results_world, artifacts_dir, width):
    from training.models import TrainingRun

    world = results_world
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text) if message.type in ("error", "warning") else None)
    page.add_init_script(WATCH_VIOLATIONS)
    open_as_staff(page, live_server, f"/dashboard/launch/rm/?snapshot={world['snapshot'].pk}", width=width)
    # The snapshot is listed by name and size; its 87 training rankings give a batch size of 4.
    assert "3-reviews · Reviews · 101 rankings" in page.inner_text("#id_snapshot")
    assert "eeeeeeee" not in page.inner_text("#id_snapshot")
    assert value_of(page, "batch_size") == "4" and value_of(page, "learning_rate") == "1e-05"
    assert "87 training rankings" in page.inner_text("#launch-suggestion")

    page.fill("#id_max_steps", "30")  # the user's own edit of an option that is not derived
    page.select_option("#id_base_model", world["tiny"])
    page.wait_for_function("() => document.getElementById('id_learning_rate').value === '0.001'")
    assert value_of(page, "epochs") == "3" and value_of(page, "batch_size") == "4"
    assert "0.93 M parameters" in page.inner_text("#launch-suggestion")
    page.screenshot(path=str(artifacts_dir / f"launch-rm-defaults-tiny-{width}.png"), full_page=True)

    page.fill("#id_batch_size", "2")  # typed by the user: a later suggestion leaves it alone
    page.select_option("#id_base_model", world["half_b"])
    page.wait_for_function("() => document.getElementById('id_learning_rate').value === '3.5e-05'")
    assert value_of(page, "epochs") == "1" and value_of(page, "batch_size") == "2"
    assert value_of(page, "max_steps") == "30"  # kept
    assert "494 M parameters" in page.inner_text("#launch-suggestion")
    assert no_horizontal_overflow(page)
    sticking_out = page.evaluate(
        """() => Array.from(document.querySelectorAll('.launch-form fieldset')).flatMap(set => {
            const edge = set.getBoundingClientRect().right;
            return Array.from(set.querySelectorAll('input, select')).filter(e => e.offsetParent !== null)
              .filter(e => e.getBoundingClientRect().right > edge + 0.5).map(e => e.id);
        })""")
    assert sticking_out == []  # every field inside its card
    page.screenshot(path=str(artifacts_dir / f"launch-rm-defaults-half-b-{width}.png"), full_page=True)

    assert page.evaluate("() => window.__csp") == [] and console == []  # no CSP refusal, no htmx warning

    # Queued as shown: the derived options are what the run is configured with.
    page.fill("#id_name", f"derived {width}")
    page.click("text=Queue the run")
    page.wait_for_url("**/dashboard/runs/*/")
    run = TrainingRun.objects.get(name=f"derived {width}")
    assert run.config["learning_rate"] == 3.5e-05 and run.config["epochs"] == 1 and run.config["batch_size"] == 2
    assert run.config["max_steps"] == 30 and run.config["model"] == world["half_b"]


def test_ppo_learning_rates_follow_the_policy(page, live_server, results_world, artifacts_dir):
    world = results_world
    open_as_staff(page, live_server, "/dashboard/launch/ppo/")
    assert value_of(page, "lr") == "0.0001" and value_of(page, "critic_lr") == "0.0003"  # the config's defaults
    page.select_option("#id_policy_model", world["half_b"])
    page.wait_for_function("() => document.getElementById('id_lr').value === '1.1e-05'")
    assert value_of(page, "critic_lr") == "3.3e-05"
    assert "494 M parameters" in page.inner_text("#launch-suggestion")
    page.select_option("#id_policy_model", world["tiny"])
    page.wait_for_function("() => document.getElementById('id_lr').value === '0.0002'")
    assert value_of(page, "critic_lr") == "0.0006"
    page.screenshot(path=str(artifacts_dir / "launch-ppo-defaults.png"), full_page=True)


def test_launch_again_and_a_new_round_valid_as_it_is(page, live_server, results_world, artifacts_dir):
    from training.models import Job, TrainingRun

    world = results_world
    rm = world["rm"]
    open_as_staff(page, live_server, f"/dashboard/runs/{rm.pk}/")
    page.click("#launch-again")
    page.wait_for_url(f"**/dashboard/launch/rm/?again={rm.pk}")
    assert value_of(page, "name") == "rm tiny (again)"
    assert value_of(page, "learning_rate") == "0.001" and value_of(page, "epochs") == "3"  # the run's, not derived
    assert page.input_value("#id_base_model") == world["tiny"]
    page.click("text=Queue the run")
    page.wait_for_url("**/dashboard/runs/*/")
    again = TrainingRun.objects.get(name="rm tiny (again)")
    assert all(again.config[key] == value for key, value in rm.config.items())  # the same config
    assert again.snapshot == rm.snapshot

    # The PPO run's "New round from this policy": its prefilled form is accepted untouched.
    page.goto(f"{live_server.url}/dashboard/runs/{world['ppo'].pk}/new-round/")
    assert page.input_value("#id_baseline_k") == "1"
    page.screenshot(path=str(artifacts_dir / "new-round-prefilled.png"), full_page=True)
    page.click("text=Queue the new round")
    page.wait_for_url("**/dashboard/jobs/*/")
    assert Job.objects.filter(kind=Job.Kind.NEW_ROUND, training_run=world["ppo"]).exists()


@pytest.mark.parametrize("width", [1280, 390])
def test_the_rm_evaluation_reads_in_words_with_names(page, live_server, results_world, artifacts_dir, width):
    world = results_world
    open_as_staff(page, live_server, f"/dashboard/runs/{world['rm'].pk}/", width=width)
    figures = page.inner_text("#rm-figures")
    assert "Held-out accuracy" in figures and "66.2 %" in figures and "n = 198 pairs, 14 rankings, 7 prompts" in figures
    assert "95 % interval 59.3–72.4 %" in figures and "too few (n = 7)" in figures  # best response of 7 prompts
    assert "Rewards are shifted by +1.88 so that the 42 responses of the held-out split average 0" in \
        page.inner_text("#rm-calibration")
    section = page.inner_text("#eval-title >> xpath=..")
    assert "alice" in section and "bob" in section and "70.7 %" in section and "61.1–78.8 %" in section
    assert "1.269e-16" not in section  # the raw figures only under "All figures"
    page.click("text=All figures")
    assert "calibration.calibrated_mean" in page.inner_text("#eval-title >> xpath=..")
    assert overlapping_labels(page, "#eval-title ~ details .facts dt, #eval-title ~ details .facts dd") == []
    assert overlapping_labels(page, "#rm-figures th, #rm-figures td") == []
    assert no_horizontal_overflow(page)
    page.locator("#eval-title").scroll_into_view_if_needed()
    page.locator("#eval-title >> xpath=..").screenshot(path=str(artifacts_dir / f"rm-evaluation-{width}.png"))
    # The PPO run's before/after table: the gain's interval and the win rate's.
    page.goto(f"{live_server.url}/dashboard/runs/{world['ppo'].pk}/")
    table = page.inner_text("#eval-title >> xpath=..")
    assert "change [+0.8, +1.4], n = 12 prompts" in table and "0.75 [0.47, 0.91], n = 12 prompts" in table


@pytest.mark.parametrize("width", [1280, 390])
def test_compare_opens_with_runs_and_config_diff_then_reward_and_loss_charts(page, live_server, results_world,
                                                                              artifacts_dir, width):
    world = results_world
    rm, rm2 = world["rm"], world["rm2"]
    open_as_staff(page, live_server, f"/dashboard/compare/?runs={rm.pk}&runs={rm2.pk}", width=width)
    rows = page.locator("#compare-runs-table tbody tr")
    assert rows.count() == 2
    first = rows.nth(0).inner_text()
    assert "rm tiny" in first and "Reward model" in first and "Succeeded" in first and "0.6616" in first
    assert "\t44\t" in first  # steps
    headers = page.inner_text("#compare-runs-table thead")
    assert "accuracy" in headers and "loss" in headers
    diff = page.inner_text("#compare-config-diff")
    assert "learning_rate" in diff and "0.001" in diff and "0.0003" in diff and "epochs" not in diff
    order = page.evaluate("() => Array.from(document.querySelectorAll('#compare-charts .chart-card'))"
                          ".map(c => c.dataset.metric)")
    assert order[:2] == ["accuracy", "loss"] and order.index("loss") < order.index("lr")
    top = page.evaluate("() => ['compare-runs-table', 'compare-config-diff', 'compare-charts']"
                        ".map(id => document.getElementById(id).getBoundingClientRect().top)")
    assert top == sorted(top)  # summary, then diff, then charts
    assert no_horizontal_overflow(page)  # wide tables scroll inside their frame, not the page
    page.screenshot(path=str(artifacts_dir / f"compare-summary-{width}.png"), full_page=True)


@pytest.mark.parametrize("width", [1280, 390])
def test_statistics_show_their_n_and_interval_or_too_few(page, live_server, results_world, artifacts_dir, width):
    world = results_world
    open_as_staff(page, live_server, f"/dashboard/projects/{world['project'].pk}/", width=width)
    assert "too few (n = 1)" in page.inner_text("#overall-tau")  # one annotator pair
    annotators = page.inner_text("#quality-title >> xpath=..")
    assert "too few (n = 3)" in annotators  # each annotator's tau-b over 3 prompts
    assert "n = 18" in annotators or "too few" in annotators
    position = page.inner_text("#position-bias")
    assert "42.9 %, too few (n = 7)" in position  # shown first and won: 3 of 7 rankings
    assert "40.5 % [27.0–55.5 %], n = 42" in position  # the earlier of two: 17 of 42 strict pairs
    ab = page.inner_text("#ab-title >> xpath=..")
    assert str(world["ppo"]) in ab and "start policy of" in ab and "/policy" not in ab
    assert "too few (n = 4)" in ab
    assert no_horizontal_overflow(page)
    page.screenshot(path=str(artifacts_dir / f"project-stats-intervals-{width}.png"), full_page=True)
    labels = page.evaluate("() => Chart.getChart(document.querySelector('#chart-consensus')).data.labels")
    assert labels == ["alice (n = 18)", "bob (n = 18)"]
