"""Reading ranking datasets (training/rlhf/data.py): every format of the snapshot contract, user files, and
errors that name the file, the line and the field."""

import json

import pytest

from training.rlhf.data import (
    DatasetError,
    RowProblem,
    available_splits,
    dataset_fingerprint,
    jsonl_rows,
    load_calibration_texts,
    load_ranking_records,
    split_by_prompt,
    unique_responses,
)

ROWS = [
    {"prompt_id": "1", "prompt": "P1", "responses": ["a", "b", "c", "d"], "ranking": [[2], [0, 3], [1]],
     "annotator": "x1", "ratings": [5, None, 6, 5], "flags": [[], ["unhelpful"], [], []], "all_bad": False,
     "source": "human", "metadata": {"task": "demo", "topic": "cafe"}},
    {"prompt_id": "2", "prompt": "P2", "responses": ["e", "f", "g", "h", "i"], "ranking": [[4], [3], [2], [1], [0]],
     "annotator": "x2", "ratings": [1, 2, 3, 4, 5], "flags": [[], [], [], [], []], "all_bad": False,
     "source": "simulated", "metadata": {}},
]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def kwise_features():
    from datasets import Features, Json, List, Value

    return Features({
        "prompt_id": Value("string"), "prompt": Value("string"), "responses": List(Value("string")),
        "ranking": List(List(Value("int64"))), "annotator": Value("string"), "ratings": List(Value("int64")),
        "flags": List(List(Value("string"))), "all_bad": Value("bool"), "source": Value("string"),
        "metadata": Json(),
    })


def as_dataset(rows):
    from datasets import Dataset

    features = kwise_features()
    return Dataset.from_dict({name: [row[name] for row in rows] for name in features}, features=features)


def check_records(records):
    assert [r.prompt for r in records] == ["P1", "P2"]
    first = records[0]
    assert first.responses == ("a", "b", "c", "d")
    assert first.ranking == ((2,), (0, 3), (1,))
    assert first.ranks == [1, 2, 0, 1]
    assert first.ordered_pairs() == [(0, 1), (2, 0), (2, 1), (2, 3), (3, 1)]
    assert first.metadata == {"task": "demo", "topic": "cafe"}
    assert first.annotator == "x1" and first.prompt_id == "1" and first.source == "human"
    assert first.ratings == (5, None, 6, 5)
    assert records[1].k == 5 and len(records[1].ordered_pairs()) == 10


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "datasets"])
def test_snapshot_directory_in_every_format(tmp_path, fmt):
    snapshot = tmp_path / "snap"
    kwise = snapshot / "kwise"
    kwise.mkdir(parents=True)
    if fmt == "jsonl":
        write_jsonl(kwise / "train.jsonl", ROWS)
        write_jsonl(kwise / "test.jsonl", ROWS[:1])
    elif fmt == "parquet":
        as_dataset(ROWS).to_parquet(str(kwise / "train.parquet"))
        as_dataset(ROWS[:1]).to_parquet(str(kwise / "test.parquet"))
    else:
        from datasets import DatasetDict

        DatasetDict({"train": as_dataset(ROWS), "test": as_dataset(ROWS[:1])}).save_to_disk(str(kwise))
    (snapshot / "manifest.json").write_text(json.dumps({"format": fmt, "content_hash": "ab" * 32}))
    check_records(load_ranking_records(snapshot))  # the snapshot directory
    check_records(load_ranking_records(kwise, split="train"))  # its kwise/ directory alone
    assert [r.prompt for r in load_ranking_records(snapshot, split="test")] == ["P1"]
    assert available_splits(snapshot) == ["train", "test"]
    assert dataset_fingerprint(snapshot) == "ab" * 32


def test_single_files_have_no_splits(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", ROWS)
    check_records(load_ranking_records(path))
    check_records(load_ranking_records(path, split="test"))  # a single file is read whole
    assert available_splits(path) == ["all"]
    as_dataset(ROWS).to_parquet(str(tmp_path / "mine.parquet"))
    check_records(load_ranking_records(tmp_path / "mine.parquet"))
    # without a manifest the fingerprint is a hash of the content
    assert dataset_fingerprint(path) != dataset_fingerprint(tmp_path / "mine.parquet")
    assert len(dataset_fingerprint(path)) == 64


def test_minimal_and_pairwise_rows(tmp_path):
    path = write_jsonl(tmp_path / "own.jsonl", [
        {"prompt": "Q", "responses": ["x", "y", "z"], "ranking": [[1], [0], [2]]},
        {"prompt": "Q2", "chosen": "good", "rejected": "bad", "margin": 1},
        {"prompt": "Q3", "responses": ["u", "v", "w"], "ranking": [2, 0, 1]},  # a flat ranking: one per tier
    ])
    minimal, pairwise, flat = load_ranking_records(path)
    assert minimal.annotator == "" and minimal.metadata == {} and minimal.ranks == [1, 0, 2]
    assert pairwise.responses == ("good", "bad") and pairwise.ordered_pairs() == [(0, 1)]
    assert flat.ranking == ((2,), (0,), (1,))


@pytest.mark.parametrize(
    "row, field, message",
    [
        ({"responses": ["a", "b"], "ranking": [[0], [1]]}, "prompt", "required"),
        ({"prompt": "p", "ranking": [[0], [1]]}, "responses", "required"),
        ({"prompt": "p", "responses": ["a"], "ranking": [[0]]}, "responses", "at least 2"),
        ({"prompt": "p", "responses": ["a", 3], "ranking": [[0], [1]]}, "responses[1]", "string"),
        ({"prompt": "p", "responses": ["a", "b"]}, "ranking", "required"),
        ({"prompt": "p", "responses": ["a", "b"], "ranking": [[0], [2]]}, "ranking", "out of range"),
        ({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [[0], [1]]}, "ranking", "missing"),
        ({"prompt": "p", "responses": ["a", "b"], "ranking": [[0, 1], [1]]}, "ranking", "twice"),
        ({"prompt": "p", "responses": ["a", "b"], "ranking": [[0], ["1"]]}, "ranking[1]", "integers"),
        ({"prompt": "p", "responses": ["a", "b"], "ranking": [[0], [1]], "metadata": 5}, "metadata", "object"),
        ({"prompt": "p", "responses": ["a", "b"], "ranking": [[0], [1]], "ratings": [1]}, "ratings", "one entry"),
        ({"prompt": "p", "chosen": "a", "rejected": None}, "rejected", "string"),
    ],
)
def test_errors_name_the_file_line_and_field(tmp_path, row, field, message):
    good = {"prompt": "ok", "responses": ["a", "b"], "ranking": [[0], [1]]}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, good, row])
    with pytest.raises(DatasetError) as info:
        load_ranking_records(path)
    text = str(info.value)
    assert f"{path}:3" in text and f"field {field!r}" in text and message in text


def test_invalid_json_and_missing_paths(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a", "responses": ["x", "y"], "ranking": [[0], [1]]}\n{"prompt": oops}\n')
    with pytest.raises(DatasetError, match=r"broken\.jsonl:2: invalid JSON"):
        load_ranking_records(path)
    with pytest.raises(DatasetError, match="no such file"):
        load_ranking_records(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no 'train' split"):
        load_ranking_records(tmp_path / "empty")
    (tmp_path / "data.csv").write_text("x")
    with pytest.raises(DatasetError, match="unknown file type"):
        load_ranking_records(tmp_path / "data.csv")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match="not a readable Parquet"):
        load_ranking_records(tmp_path / "bad.parquet")


def test_split_by_prompt_keeps_each_prompt_on_one_side():
    from training.rlhf.data import RankingRecord

    records = [RankingRecord(prompt=f"p{i % 10}", responses=("a", "b"), ranking=((0,), (1,)), annotator=str(i))
               for i in range(40)]
    train, test = split_by_prompt(records, test_fraction=0.2, seed=3)
    assert {r.prompt for r in train}.isdisjoint({r.prompt for r in test})
    assert len({r.prompt for r in test}) == 2 and len(train) + len(test) == 40
    assert split_by_prompt(records, test_fraction=0.2, seed=3) == (train, test)  # deterministic
    one, other = split_by_prompt(records[:2], test_fraction=0.01, seed=0)
    assert len(one) == 1 and len(other) == 1  # at least one prompt on each side


def test_calibration_texts_and_unique_responses(tmp_path):
    path = write_jsonl(tmp_path / "demos.jsonl", [
        {"prompt": "A", "response": "r1"}, {"prompt": "B", "responses": ["r2", "r3"]},
        {"prompt": "C", "chosen": "r4", "rejected": "r5"},
    ])
    assert load_calibration_texts(path) == [("A", "r1"), ("B", "r2"), ("B", "r3"), ("C", "r4"), ("C", "r5")]
    write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "A"}])
    with pytest.raises(DatasetError, match=r"bad\.jsonl:1: field 'response'"):
        load_calibration_texts(tmp_path / "bad.jsonl")
    records = load_ranking_records(write_jsonl(tmp_path / "r.jsonl", ROWS + ROWS[:1]))
    assert len(unique_responses(records)) == 9


def test_jsonl_rows_report_each_bad_line_and_read_on():
    """The shared JSONL reader (annotate's importer uses it too): a BOM, blank lines, a line over the limit,
    bad UTF-8, bad JSON and JSON nested deeper than the stack each yield one (line, problem); reading goes on."""
    import io

    lines = [
        b'\xef\xbb\xbf{"a": 1}',  # 1: BOM, read
        b"",  # 2: blank, skipped
        b'{"long": "' + b"x" * 200 + b'"}',  # 3: over the 100-byte limit
        '{"p": "café"}'.encode("latin-1"),  # 4: not UTF-8
        b'{"p": oops}',  # 5: not JSON
        b"[" * 100_000 + b"]" * 100_000,  # 6: nested too deeply (a RecursionError inside json)
        b"[1, 2]",  # 7: JSON, not an object: the caller decides
    ]
    read: list[int] = []
    rows = list(jsonl_rows(io.BytesIO(b"\n".join(lines) + b"\n"), max_line_bytes=300_000, advance=read.append))
    assert sum(read) == len(b"\n".join(lines)) + 1
    assert [n for n, _ in rows] == [1, 3, 4, 5, 6, 7]
    assert rows[0][1] == {"a": 1} and rows[1][1] == {"long": "x" * 200} and rows[-1][1] == [1, 2]
    assert rows[2][1] == RowProblem("encoding", "invalid continuation byte", 11)
    assert rows[3][1].kind == "json" and rows[3][1].position == 7
    assert rows[4][1] == RowProblem("json", "nested too deeply")
    limited = list(jsonl_rows(io.BytesIO(b"\n".join(lines[:4]) + b"\n"), max_line_bytes=100))
    assert limited[1] == (3, RowProblem("too_long", position=100)) and limited[2][0] == 4  # counting went on


def test_a_file_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + '{"prompt": "café"}\n'.encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin1\.jsonl:2: not valid UTF-8"):
        load_ranking_records(path)
