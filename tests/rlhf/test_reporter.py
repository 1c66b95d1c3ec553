"""The Reporter protocol's plain implementations (training/rlhf/reporter.py)."""

import json

from training.rlhf.reporter import (
    EVENTS_FILE,
    JsonlReporter,
    NullReporter,
    Reporter,
    cli_reporter,
    is_main_process,
)


def test_jsonl_reporter_writes_every_event_and_stops_on_a_stop_file(tmp_path):
    reporter = JsonlReporter(tmp_path / EVENTS_FILE, echo=False)
    assert isinstance(reporter, Reporter) and isinstance(NullReporter(), Reporter)
    reporter.on_start(total_steps=10, start_step=4)
    reporter.on_metrics(5, {"loss": 0.5})
    reporter.on_outputs({"reward_model": str(tmp_path)})
    events = [json.loads(line) for line in (tmp_path / EVENTS_FILE).read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "metrics", "outputs"]
    assert events[0]["start_step"] == 4 and events[2]["outputs"] == {"reward_model": str(tmp_path)}
    assert not reporter.should_stop()
    (tmp_path / "STOP").touch()
    assert reporter.should_stop()


def test_only_rank_zero_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process() and isinstance(cli_reporter(tmp_path, echo=False), NullReporter)
    monkeypatch.setenv("RANK", "0")
    assert is_main_process() and isinstance(cli_reporter(tmp_path, echo=False), JsonlReporter)
    monkeypatch.delenv("RANK")
    assert is_main_process()
