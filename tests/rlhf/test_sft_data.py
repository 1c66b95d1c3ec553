"""The SFT record contract: read_sft_records on snapshots, plain files and users' own formats."""

import json

import pytest

from training.rlhf.data import DatasetError
from training.rlhf.sft_data import chat_messages, read_sft_manifest, read_sft_records


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_snapshot_directory_splits_and_manifest(tmp_path):
    _write(tmp_path / "train.jsonl", [{"prompt": "p1", "response": "r1", "prompt_id": 1, "annotator": "a"}])
    _write(tmp_path / "test.jsonl", [{"prompt": "p2", "response": "r2", "source": "human"}])
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "sft", "content_hash": "abc"}))
    train = read_sft_records(tmp_path)
    test = read_sft_records(tmp_path, split="test")
    assert [(r.prompt, r.response, r.prompt_id) for r in train] == [("p1", "r1", "1")]
    assert test[0].source == "human" and test[0].messages is None
    assert read_sft_manifest(tmp_path)["kind"] == "sft"


def test_parquet_snapshot(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"prompt": "p", "response": "r"}]), tmp_path / "train.parquet")
    assert read_sft_records(tmp_path)[0].response == "r"


def test_trl_formats(tmp_path):
    conversational = {"messages": chat_messages(prompt="hi", response="hello", system_prompt="be kind")}
    rows = [{"prompt": "a", "completion": "b"}, conversational]
    records = read_sft_records(_write(tmp_path / "own.jsonl", rows))
    assert (records[0].prompt, records[0].response) == ("a", "b")
    assert (records[1].prompt, records[1].response) == ("hi", "hello")
    assert [t["role"] for t in records[1].messages] == ["system", "user", "assistant"]
    assert records[1].to_dict()["messages"] == conversational["messages"]


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"response": "r"}, "prompt"),
        ({"prompt": "p"}, "response"),
        ({"prompt": "p", "response": "  "}, "response"),
        ({"prompt": "p", "response": "r", "messages": [{"role": "bot", "content": "r"}]}, "messages[0].role"),
        ({"prompt": "p", "response": "r", "messages": [{"role": "user", "content": "p"}]}, "messages"),
        ({"prompt": "p", "response": "r", "messages": chat_messages(prompt="p", response="other")}, "messages"),
        ({"prompt": "p", "response": "r", "metadata": [1]}, "metadata"),
    ],
)
def test_errors_name_line_and_field(tmp_path, row, field):
    path = _write(tmp_path / "bad.jsonl", [{"prompt": "ok", "response": "ok"}, row])
    with pytest.raises(DatasetError) as caught:
        read_sft_records(path)
    assert f"{path}:2" in str(caught.value) and f"field {field!r}:" in str(caught.value)


def test_missing_split_and_path(tmp_path):
    with pytest.raises(DatasetError, match="no 'test' split"):
        read_sft_records(tmp_path, split="test")
    with pytest.raises(DatasetError, match="no such file"):
        read_sft_records(tmp_path / "nope")


def test_has_sft_split(tmp_path):
    from training.rlhf.sft_data import has_sft_split

    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "train.jsonl").write_text('{"prompt": "p", "response": "r"}\n', encoding="utf-8")
    assert has_sft_split(tmp_path / "snap", "train") and not has_sft_split(tmp_path / "snap", "test")
    assert not has_sft_split(tmp_path / "snap" / "train.jsonl", "train")  # a file has no splits
    assert not has_sft_split(tmp_path / "missing", "train")
