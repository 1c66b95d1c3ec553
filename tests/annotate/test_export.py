"""Export: K-wise and pairwise records, splits, manifest, content hash, formats, options, atomic writes."""

from __future__ import annotations

import json

import datasets
import pyarrow.parquet as pq
import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from annotate.models import DatasetSnapshot, Project
from annotate.services import exporting
from annotate.services.exporting import ExportError, annotator_pseudonym, assign_splits, export_snapshot
from tests.annotate.data_fixtures import make_ranked_prompt
from training.rlhf.data import load_ranking_records

pytestmark = pytest.mark.django_db

FULL4 = [[0], [1], [2], [3]]
FULL9 = [[i] for i in range(9)]


@pytest.fixture
def users():
    User = get_user_model()
    return User.objects.create_user("alice"), User.objects.create_user("bob")


@pytest.fixture
def project(users):
    alice, bob = users
    project = Project.objects.create(name="export-me")
    make_ranked_prompt(project, "p4", {alice: FULL4, bob: [[1], [0, 2], [3]]}, metadata={"task": "demo"})
    make_ranked_prompt(project, "p9", {alice: FULL9})
    for i in range(10):
        make_ranked_prompt(project, f"extra {i}", {alice: FULL4}, round=2)
    return project


def load_split(path, kind, split):
    return datasets.load_from_disk(str(path / kind))[split]


def test_kwise_and_pairwise_records_and_counts(project, users, tmp_path):
    alice, bob = users
    snapshot = export_snapshot(project=project, out_dir=tmp_path / "snap", test_fraction=0.0)
    kwise = load_split(tmp_path / "snap", "kwise", "train")
    pairwise = load_split(tmp_path / "snap", "pairwise", "train")
    assert kwise.num_rows == 13 and load_split(tmp_path / "snap", "kwise", "test").num_rows == 0
    by_key = {(r["prompt"], r["annotator"]): r for r in kwise}
    a, b = annotator_pseudonym(f"user:{alice.pk}"), annotator_pseudonym(f"user:{bob.pk}")
    record = by_key[("p4", b)]
    assert record["ranking"] == [[1], [0, 2], [3]]
    assert record["responses"] == [f"p4 — response {i} " + "w" * i for i in range(4)]
    assert record["metadata"] == {"task": "demo"} and record["source"] == "human"
    assert record["ratings"] == [1, 2, 3, 4] and record["flags"] == [[], [], [], []] and record["all_bad"] is False
    assert by_key[("p9", a)]["ranking"] == FULL9
    # Pairs: K=4 full → 6, K=9 full → 36, 1 > 0 = 2 > 3 → 5 (the tie is excluded); 10 more full K=4 rankings.
    pairs_per = {}
    for row in pairwise:
        pairs_per[(row["prompt"], row["annotator"])] = pairs_per.get((row["prompt"], row["annotator"]), 0) + 1
    assert pairs_per[("p4", a)] == 6 and pairs_per[("p9", a)] == 36 and pairs_per[("p4", b)] == 5
    assert pairwise.num_rows == 6 + 5 + 36 + 10 * 6
    assert set(pairwise.column_names) == {"prompt_id", "prompt", "chosen", "rejected", "margin", "annotator"}
    worst_vs_best = [r for r in pairwise if r["prompt"] == "p9" and r["chosen"].startswith("p9 — response 0 ")
                     and r["rejected"].startswith("p9 — response 8 ")]
    assert [r["margin"] for r in worst_vs_best] == [8]
    counts = snapshot.counts
    assert counts["kwise"] == {"train": 13, "test": 0} and counts["pairwise"] == {"train": 107, "test": 0}
    assert counts["tied_pairs_excluded"] == 1 and counts["annotators"] == 2 and counts["rankings_total"] == 13
    # Pseudonyms: stable, distinct, not the username.
    assert a != b and len(a) == 12 and "alice" not in a and annotator_pseudonym(f"user:{alice.pk}") == a


def test_split_by_prompt_no_leakage_and_stable(project, tmp_path):
    snapshot = export_snapshot(project=project, out_dir=tmp_path / "s1", test_fraction=0.3, seed=7)
    train = load_split(tmp_path / "s1", "kwise", "train")
    test = load_split(tmp_path / "s1", "kwise", "test")
    assert test.num_rows > 0 and train.num_rows > 0
    assert not set(train["prompt"]) & set(test["prompt"])
    assert not set(load_split(tmp_path / "s1", "pairwise", "train")["prompt"]) & set(
        load_split(tmp_path / "s1", "pairwise", "test")["prompt"])
    assert snapshot.counts["prompts"]["train"] + snapshot.counts["prompts"]["test"] == 12
    # The same prompt lands on the same side whatever else is exported (here: only round 2).
    export_snapshot(project=project, out_dir=tmp_path / "s2", test_fraction=0.3, seed=7, rounds=[2])
    test_round2 = set(load_split(tmp_path / "s2", "kwise", "test")["prompt"])
    assert test_round2 == {p for p in test["prompt"] if p.startswith("extra")}


def test_assign_splits_guarantees_both_sides_for_tiny_sets():
    splits = assign_splits(["h1", "h2"], seed=0, test_fraction=0.01)
    assert sorted(splits.values()) == ["test", "train"]
    assert set(assign_splits(["h1", "h2", "h3"], seed=0, test_fraction=0.0).values()) == {"train"}
    many = assign_splits([f"h{i}" for i in range(2000)], seed=1, test_fraction=0.1)
    assert 150 < sum(v == "test" for v in many.values()) < 250  # about 10 %


def test_same_hash_twice_and_across_formats_and_changes_with_data(project, users, tmp_path):
    first = export_snapshot(project=project, out_dir=tmp_path / "a", seed=3)
    second = export_snapshot(project=project, out_dir=tmp_path / "b", seed=3)
    as_jsonl = export_snapshot(project=project, out_dir=tmp_path / "c", seed=3, format="jsonl")
    assert first.content_hash == second.content_hash == as_jsonl.content_hash
    manifest_a = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest_b = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest_a["content_hash"] == first.content_hash and manifest_a["created_at"] != ""
    assert manifest_a["counts"] == manifest_b["counts"] and manifest_a["params"] == manifest_b["params"]
    assert export_snapshot(project=project, out_dir=tmp_path / "d", seed=4).content_hash != first.content_hash
    make_ranked_prompt(project, "new", {users[0]: FULL4})
    assert export_snapshot(project=project, out_dir=tmp_path / "e", seed=3).content_hash != first.content_hash
    assert DatasetSnapshot.objects.filter(project=project).count() == 5


@pytest.mark.parametrize("fmt", ["datasets", "parquet", "jsonl"])
def test_formats_layout_manifest_and_trainer_reader(project, tmp_path, fmt):
    out = tmp_path / f"snap-{fmt}"
    snapshot = export_snapshot(project=project, out_dir=out, format=fmt, test_fraction=0.2, seed=1)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == fmt and manifest["project"] == {"id": project.pk, "name": project.name}
    assert manifest["params"] == {"format": fmt, "test_fraction": 0.2, "seed": 1, "drop_flagged": False,
                                  "drop_all_bad": False, "group": "per-annotator", "rounds": None}
    if fmt == "parquet":
        assert sorted(p.name for p in (out / "kwise").iterdir()) == ["test.parquet", "train.parquet"]
        table = pq.read_table(out / "pairwise" / "train.parquet")
        assert table.num_rows == snapshot.counts["pairwise"]["train"]
        assert datasets.Dataset.from_parquet(str(out / "kwise" / "train.parquet"))[0]["metadata"] is not None
    elif fmt == "jsonl":
        lines = (out / "kwise" / "train.jsonl").read_text().splitlines()
        assert len(lines) == snapshot.counts["kwise"]["train"]
        rows = [json.loads(line) for split in ("train", "test")
                for line in (out / "kwise" / f"{split}.jsonl").read_text().splitlines()]
        assert [r["metadata"] for r in rows if r["prompt"] == "p4"] == [{"task": "demo"}] * 2
    else:
        assert (out / "kwise" / "dataset_dict.json").exists() and (out / "pairwise" / "dataset_dict.json").exists()
    # The RM trainer's reader (training.rlhf.data) reads every format of the snapshot.
    for split in ("train", "test"):
        records = load_ranking_records(out, split=split)
        assert len(records) == snapshot.counts["kwise"][split]
    demo = [r for r in load_ranking_records(out, split="train") + load_ranking_records(out, split="test")
            if r.prompt == "p4"]
    assert demo and all(r.metadata == {"task": "demo"} for r in demo)
    # Nothing left behind beside the snapshot.
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"snap-{fmt}"]


def test_drop_flagged_drop_all_bad_and_consensus(users, tmp_path):
    alice, bob = users
    carol = get_user_model().objects.create_user("carol")
    project = Project.objects.create(name="opts")
    make_ranked_prompt(project, "q1", {alice: FULL4, bob: [[1], [0], [2], [3]], carol: FULL4},
                       flags={bob: {2: ["unhelpful"]}, carol: {2: ["unhelpful"]}})
    make_ranked_prompt(project, "q2", {alice: [[3], [2], [1], [0]], bob: [[0], [1], [2], [3]]},
                       all_bad={alice: True})
    plain = export_snapshot(project=project, out_dir=tmp_path / "plain", test_fraction=0)
    assert plain.counts["kwise"]["train"] == 5
    dropped = export_snapshot(project=project, out_dir=tmp_path / "dropped", test_fraction=0, drop_flagged=True,
                              drop_all_bad=True)
    assert dropped.counts["kwise"]["train"] == 2
    assert (dropped.counts["dropped_flagged"], dropped.counts["dropped_all_bad"]) == (2, 1)
    consensus = export_snapshot(project=project, out_dir=tmp_path / "cons", test_fraction=0, group="consensus")
    rows = {r["prompt"]: r for r in load_split(tmp_path / "cons", "kwise", "train")}
    assert consensus.counts["kwise"]["train"] == 2
    # q1: Borda over 0>1>2>3 (twice) and 1>0>2>3 → 0: (1+⅔+1)/3, 1: (⅔+1+⅔)/3 → 0 > 1 > 2 > 3.
    assert rows["q1"]["ranking"] == [[0], [1], [2], [3]] and rows["q1"]["annotator"] == "consensus"
    assert rows["q1"]["source"] == "consensus"
    assert rows["q1"]["flags"] == [[], [], ["unhelpful"], []]  # flagged by 2 of 3
    # q2: exactly opposite rankings → a four-way tie, no pairs; all_bad by one of two is not a majority.
    assert rows["q2"]["ranking"] == [[0, 1, 2, 3]] and rows["q2"]["all_bad"] is False
    assert consensus.counts["pairwise"]["train"] == 6 and consensus.counts["tied_pairs_excluded"] == 6


def test_errors_existing_target_overwrite_and_no_half_written_snapshot(project, tmp_path, monkeypatch):
    out = tmp_path / "snap"
    export_snapshot(project=project, out_dir=out, format="jsonl")
    with pytest.raises(ExportError, match="already exists"):
        export_snapshot(project=project, out_dir=out)
    replaced = export_snapshot(project=project, out_dir=out, format="parquet", overwrite=True)
    assert replaced.format == "parquet" and (out / "kwise" / "train.parquet").exists()
    assert not (out / "kwise" / "train.jsonl").exists()

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(exporting, "write_records", crash)
    before = DatasetSnapshot.objects.count()
    with pytest.raises(RuntimeError, match="disk full"):
        export_snapshot(project=project, out_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists() and DatasetSnapshot.objects.count() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap"]  # no temporary directory left
    with pytest.raises(ExportError, match="format must be one of"):
        export_snapshot(project=project, out_dir=tmp_path / "x", format="csv")
    with pytest.raises(ExportError, match="test_fraction"):
        export_snapshot(project=project, out_dir=tmp_path / "x", test_fraction=1.0)
    with pytest.raises(ExportError, match="has no rankings to export with these filters"):
        export_snapshot(project=project, out_dir=tmp_path / "x", rounds=[5])


def test_command(project, tmp_path, capsys):
    out = tmp_path / "cmd"
    call_command("export_rankings", "--project", project.name, "--out", str(out), "--format", "jsonl",
                 "--test-fraction", "0.25", "--seed", "2", "--round", "1", "--round", "2")
    text = capsys.readouterr().out
    snapshot = DatasetSnapshot.objects.get()
    assert f"Wrote snapshot {out} (jsonl), content hash {snapshot.content_hash}" in text
    assert snapshot.params["rounds"] == [1, 2] and snapshot.params["test_fraction"] == 0.25
    with pytest.raises(CommandError, match="already exists"):
        call_command("export_rankings", "--project", project.name, "--out", str(out))
    with pytest.raises(CommandError, match="No project named 'missing'"):
        call_command("export_rankings", "--project", "missing", "--out", str(tmp_path / "y"))
