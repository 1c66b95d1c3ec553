"""Phase, progress and ETA (training.selectors.run_progress / eta_seconds), fed by the RunReporter."""

from __future__ import annotations

import pytest

from training.models import TrainingRun
from training.reporting import RunReporter
from training.selectors import eta_seconds, run_progress

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(("done", "seconds", "left", "expected"), [
    (10, 5.0, 20, 10.0),  # 2 steps/s, 20 left: 10 s (tqdm: remaining = (total - n) / rate)
    (3, 9.0, 1, 3.0),
    (1, 1.0, 0, 0.0),
    (0, 5.0, 20, None),  # no rate yet
    (4, 0.0, 20, None),
])
def test_eta_known_answers(done, seconds, left, expected):
    assert eta_seconds(steps_done=done, seconds=seconds, steps_left=left) == expected


def _run(**fields):
    return TrainingRun.objects.create(kind=fields.pop("kind", "rm"), status=fields.pop("status", "running"), **fields)


def test_phases_in_order_as_the_reporter_reports():
    run = _run(kind="ppo", config={"evaluate": True})
    assert run_progress(run).phase.startswith("Loading")
    reporter = RunReporter(run)
    reporter.on_start(total_steps=8, start_step=0)
    run.refresh_from_db()
    progress = run_progress(run)
    assert progress.phase == "Evaluating the start policy…" and progress.total == 8 and progress.eta is None
    reporter.on_evaluation({"before": {"rm_score": 0.1}})
    run.refresh_from_db()
    assert run_progress(run).phase == "Starting the first step…"
    for step in (1, 2, 3):
        reporter.on_metrics(step, {"reward": 0.1 * step, "kl": 0.0})
    run.refresh_from_db()
    progress = run_progress(run)
    assert progress.phase == "PPO iterations" and progress.step == 3 and progress.percent == 38
    assert progress.rate is None or progress.rate > 0
    reporter.on_metrics(8, {"reward": 1.0})
    run.refresh_from_db()
    assert run_progress(run).phase.startswith("Evaluating the final policy")


def test_eval_metrics_alone_do_not_move_progress_and_ended_runs_say_their_status():
    run = _run(kind="rm")
    reporter = RunReporter(run)
    reporter.on_start(total_steps=10, start_step=4)
    reporter.on_metrics(4, {"eval/accuracy": 0.5})
    run.refresh_from_db()
    assert "first_step" not in run.summary["progress"]
    now = run.summary["progress"]["started_at"]
    run.summary["progress"].update(first_step=4, first_at=now, step=6, at=now + 4)
    progress = run_progress(run, now=now + 4)
    assert progress.rate == 0.5 and progress.eta == 8.0 and progress.phase == "Training"
    assert run_progress(run, now=now + 10).eta == 2.0  # counts down between reports
    run.status = "succeeded"
    assert run_progress(run).phase == "Succeeded"
    run.status = "queued"
    assert run_progress(run).phase == "Waiting for a worker"
