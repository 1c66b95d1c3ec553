"""Prompt files, the held-out split, demo-task detection, the prompt order across iterations and processes,
and the win rate (training/rlhf/prompts.py, training/rlhf/ppo_eval.py)."""

from __future__ import annotations

import json

import pytest

from training.rlhf.demo_task import demo_prompts
from training.rlhf.ppo_eval import win_rate
from training.rlhf.prompts import (
    PromptRecord,
    PromptStream,
    is_demo_task,
    load_prompts,
    load_texts,
    split_prompts,
)


def test_load_prompts_from_jsonl_and_text(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"prompt": "Review A:", "metadata": {"task": "demo"}, "id": "7"}) + "\n\n"
                     + json.dumps({"prompt": "Line one\nline two:"}) + "\n", encoding="utf-8")
    records = load_prompts(jsonl)
    assert [r.text for r in records] == ["Review A:", "Line one\nline two:"]
    assert records[0].metadata == {"task": "demo"} and records[1].metadata == {}
    text = tmp_path / "p.txt"
    text.write_text("First prompt:\n\n  Second prompt?\n", encoding="utf-8")
    assert [r.text for r in load_prompts(text)] == ["First prompt:", "  Second prompt?"]


@pytest.mark.parametrize("content,message", [
    ('{"prompt": "ok"}\n{"text": "no prompt"}\n', ":2:"),
    ('{"prompt": "ok"}\n{not json}\n', "not valid JSON"),
    ('{"prompt": ""}\n', "non-empty"),
    ("\n\n", "no prompts"),
])
def test_bad_prompt_files_say_where(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_prompts(path)
    with pytest.raises(FileNotFoundError):
        load_prompts(tmp_path / "missing.jsonl")


def test_ptx_texts(tmp_path):
    path = tmp_path / "ptx.jsonl"
    path.write_text('{"text": "a b"}\n{"prompt": "Q:", "response": " A."}\n', encoding="utf-8")
    assert load_texts(path) == ["a b", "Q: A."]


def test_held_out_split_is_by_distinct_prompt_and_seeded():
    records = [PromptRecord(f"p{i % 20}") for i in range(40)]  # each text twice
    train, held = split_prompts(records, eval_fraction=0.25, max_eval=100, seed=1)
    assert {r.text for r in train}.isdisjoint({r.text for r in held})
    assert len({r.text for r in held}) == 5 and len(train) == 30
    again = split_prompts(records, eval_fraction=0.25, max_eval=100, seed=1)
    assert [r.text for r in again[1]] == [r.text for r in held]
    assert split_prompts(records, eval_fraction=0.0, max_eval=10, seed=1) == (records, [])
    _, capped = split_prompts(records, eval_fraction=0.5, max_eval=3, seed=1)
    assert len(capped) == 3
    single_train, single_held = split_prompts([PromptRecord("only")], eval_fraction=0.5, max_eval=5, seed=0)
    assert len(single_train) == 1 and single_held == []


def test_demo_task_detection():
    demo = [PromptRecord(p) for p in demo_prompts(n=10, seed=2)]
    assert is_demo_task(demo, "auto")
    assert is_demo_task([PromptRecord("Something else:", {"task": "demo"})], "auto")
    assert not is_demo_task(demo + [PromptRecord("Something else:")], "auto")
    assert not is_demo_task(demo, "none") and is_demo_task([PromptRecord("x")], "demo")


def test_prompt_stream_covers_every_prompt_each_epoch_and_splits_processes():
    stream = PromptStream(10, seed=0)
    first_epoch = stream.next_batch(4) + stream.next_batch(4)
    rest = stream.next_batch(4)  # 2 from epoch 0, 2 from epoch 1
    assert sorted(first_epoch + rest[:2]) == list(range(10))
    state = stream.state_dict()
    following = stream.next_batch(4)
    restored = PromptStream(10, seed=0)
    restored.load_state_dict(state)
    assert restored.next_batch(4) == following
    with pytest.raises(ValueError):
        PromptStream(11, seed=0).load_state_dict(state)
    # Two processes draw disjoint halves of the same global batch.
    a, b = PromptStream(10, seed=5), PromptStream(10, seed=5)
    rank0, rank1 = a.next_batch(3, rank=0, world=2), b.next_batch(3, rank=1, world=2)
    assert set(rank0).isdisjoint(rank1) and a.state_dict() == b.state_dict()
    tiny = PromptStream(2, seed=0)
    assert sorted(tiny.next_batch(5)[:2]) == [0, 1]  # fewer prompts than a batch: they repeat


def test_win_rate_matches_prompts_and_counts_ties_half():
    before = [{"prompt": "a", "score": 0.0}, {"prompt": "b", "score": 1.0}, {"prompt": "c", "score": 2.0}]
    after = [{"prompt": "a", "score": 0.5}, {"prompt": "b", "score": 1.0}, {"prompt": "c", "score": 1.0}]
    assert win_rate(after, before) == pytest.approx(0.5)
    assert win_rate(after[:1], before) == 1.0
    # A prompt sampled twice is compared twice, occurrence by occurrence.
    twice_before = [{"prompt": "a", "score": 0.0}, {"prompt": "a", "score": 5.0}]
    twice_after = [{"prompt": "a", "score": 1.0}, {"prompt": "a", "score": 1.0}]
    assert win_rate(twice_after, twice_before) == pytest.approx(0.5)
    assert win_rate([{"prompt": "z", "score": 1.0}], before) != win_rate([{"prompt": "z", "score": 1.0}], before)  # nan
