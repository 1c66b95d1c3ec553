"""Demonstrations in and out: the SFT snapshot export (read back by training.rlhf.sft_data, the contract) and
the all-or-nothing import from JSONL, CSV, Parquet and datasets, through the services and the commands."""

from __future__ import annotations

import json
from io import StringIO

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.management import CommandError, call_command

from annotate.models import DatasetSnapshot, Demonstration, Project, Prompt
from annotate.services.demonstrations_import import ImportFailed, import_demonstrations_file
from annotate.services.export_sft import export_sft_snapshot
from annotate.services.exporting import ExportError, export_snapshot
from tests.annotate.data_fixtures import make_ranked_prompt
from training.rlhf.sft_data import read_sft_manifest, read_sft_records

pytestmark = pytest.mark.django_db


def add_demonstrations(project, annotators, *, prompts=12, status="accepted"):
    for i in range(prompts):
        prompt = Prompt.objects.create(project=project, text=f"Question {i}: how do I brew tea?",
                                       metadata={"task": "demo", "i": i})
        for user in annotators:
            Demonstration.objects.create(prompt=prompt, annotator=user, text=f"Answer {i} by {user.username}.",
                                         submitted_text="x", status=status)


@pytest.fixture
def project(make_project, alice, bob):
    project = make_project("SFT", prompts=0, members=[alice, bob], task_types=Project.TaskTypes.DEMONSTRATIONS)
    add_demonstrations(project, [alice, bob])
    return project


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_reads_back_through_the_contract(project, tmp_path, fmt, alice):
    # Not accepted ones stay out.
    extra = Prompt.objects.create(project=project, text="Pending prompt")
    Demonstration.objects.create(prompt=extra, annotator=alice, text="pending", status="submitted")
    snapshot = export_sft_snapshot(project=project, out_dir=tmp_path / "sft", format=fmt, test_fraction=0.25)
    assert snapshot.kind == DatasetSnapshot.Kind.SFT and snapshot.format == fmt
    train = read_sft_records(snapshot.path, split="train")
    test = read_sft_records(snapshot.path, split="test")
    assert len(train) + len(test) == 24 and train and test
    assert snapshot.counts["train"] == len(train) and snapshot.counts["not_accepted"] == 1
    # Split by prompt: no prompt on both sides, both annotators of a prompt on the same side.
    assert not {r.prompt_id for r in train} & {r.prompt_id for r in test}
    assert all(r.messages is None for r in train + test)  # plain project: no chat turns
    assert {r.source for r in train} == {"human"} and len({r.annotator for r in train}) == 2
    assert train[0].metadata["task"] == "demo" and not {r.annotator for r in train} & {"alice", "bob"}
    manifest = read_sft_manifest(snapshot.path)
    assert manifest["kind"] == "sft" and manifest["content_hash"] == snapshot.content_hash
    assert manifest["prompt_format"] == {"format": "plain", "system_prompt": ""}


def test_chat_projects_export_messages_and_hash_ignores_format(project, tmp_path):
    project.prompt_format = Project.PromptFormat.CHAT
    project.system_prompt = "You are a tea expert."
    project.save()
    a = export_sft_snapshot(project=project, out_dir=tmp_path / "a", format="jsonl")
    b = export_sft_snapshot(project=project, out_dir=tmp_path / "b", format="parquet")
    assert a.content_hash == b.content_hash  # the same data, whatever the file format
    record = read_sft_records(b.path, split="train")[0]
    assert [t["role"] for t in record.messages] == ["system", "user", "assistant"]
    assert record.messages[0]["content"] == "You are a tea expert." and record.messages[-1]["content"] == record.response
    assert read_sft_manifest(a.path)["prompt_format"]["format"] == "chat"


def test_sft_split_matches_the_ranking_split(make_project, alice, bob, tmp_path):
    """Same seed → each prompt on the same side in the SFT and the ranking snapshot of a project."""
    project = make_project("Both", prompts=0, members=[alice, bob], task_types=Project.TaskTypes.BOTH)
    prompts = [make_ranked_prompt(project, f"Shared prompt {i}", {alice: [[0], [1], [2], [3]]}, k=4) for i in range(16)]
    for prompt in prompts:
        Demonstration.objects.create(prompt=prompt, annotator=alice, text="ideal", status="accepted")
    sft = export_sft_snapshot(project=project, out_dir=tmp_path / "sft", test_fraction=0.3, seed=3)
    rm = export_snapshot(project=project, out_dir=tmp_path / "rm", format="jsonl", test_fraction=0.3, seed=3)
    sft_test = {r.prompt for r in read_sft_records(sft.path, split="test")}
    rm_test = {json.loads(line)["prompt"] for line in open(f"{rm.path}/kwise/test.jsonl")}
    assert sft_test == rm_test and sft_test


def test_export_refuses_bad_input_and_nothing_accepted(make_project, alice, tmp_path):
    empty = make_project("Empty", prompts=0, members=[alice], task_types=Project.TaskTypes.DEMONSTRATIONS)
    with pytest.raises(ExportError, match="no accepted demonstrations"):
        export_sft_snapshot(project=empty, out_dir=tmp_path / "x")
    with pytest.raises(ExportError, match="format"):
        export_sft_snapshot(project=empty, out_dir=tmp_path / "x", format="csv")
    with pytest.raises(ExportError, match="test_fraction"):
        export_sft_snapshot(project=empty, out_dir=tmp_path / "x", test_fraction=1.0)
    assert not (tmp_path / "x").exists() and not DatasetSnapshot.objects.exists()


def test_export_command(project, tmp_path):
    out = StringIO()
    call_command("export_demonstrations", "--project", "SFT", "--out", str(tmp_path / "s"), stdout=out)
    assert "Wrote SFT snapshot" in out.getvalue() and DatasetSnapshot.objects.get().kind == "sft"
    with pytest.raises(CommandError, match="already exists"):
        call_command("export_demonstrations", "--project", "SFT", "--out", str(tmp_path / "s"))
    with pytest.raises(CommandError, match="No project"):
        call_command("export_demonstrations", "--project", "Nope", "--out", str(tmp_path / "t"))


# --- import -------------------------------------------------------------------------------------------------

ROWS = [
    {"prompt": "How do I steep green tea?", "response": "Use 80 °C water for two minutes.", "id": "g1",
     "metadata": {"topic": "tea"}, "annotator": "vendor-7"},
    {"prompt": "Name a black tea.", "completion": "Assam."},
    {"messages": [{"role": "user", "content": "Is rooibos tea?"}, {"role": "assistant", "content": "A tisane."}]},
]


def write(tmp_path, fmt, rows):
    if fmt == "jsonl":
        path = tmp_path / "demos.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "csv":
        import csv

        path = tmp_path / "demos.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["prompt", "response"])
            writer.writeheader()
            for r in rows:
                writer.writerow({"prompt": r.get("prompt", ""), "response": r.get("response", r.get("completion", ""))})
    elif fmt == "parquet":
        path = tmp_path / "demos.parquet"
        pq.write_table(pa.Table.from_pylist([{"prompt": r["prompt"], "response": r.get("response", r.get("completion"))}
                                             for r in rows]), path)
    else:
        path = tmp_path / "demos_ds"
        datasets.Dataset.from_list([{"prompt": r["prompt"], "response": r.get("response", r.get("completion"))}
                                    for r in rows]).save_to_disk(str(path))
    return path


def test_import_jsonl_with_all_record_shapes(make_project, tmp_path):
    project = make_project("Imp", prompts=0)
    summary = import_demonstrations_file(project=project, path=write(tmp_path, "jsonl", ROWS))
    assert (summary.records, summary.demonstrations, summary.prompts_created) == (3, 3, 3)
    demos = list(Demonstration.objects.order_by("pk"))
    assert [d.status for d in demos] == ["accepted"] * 3 and {d.source for d in demos} == {"imported"}
    assert demos[0].source_detail == "demos.jsonl · vendor-7" and demos[0].prompt.external_id == "g1"
    assert demos[0].prompt.metadata == {"topic": "tea"} and demos[2].prompt.text == "Is rooibos tea?"
    assert demos[2].text == "A tisane."


@pytest.mark.parametrize("fmt", ["csv", "parquet", "datasets"])
def test_import_table_formats(make_project, tmp_path, fmt):
    project = make_project("Imp", prompts=0)
    rows = ROWS[:2]
    summary = import_demonstrations_file(project=project, path=write(tmp_path, fmt, rows), needs_review=True)
    assert summary.demonstrations == 2
    assert sorted(Demonstration.objects.values_list("text", flat=True)) == ["Assam.", "Use 80 °C water for two minutes."]
    assert set(Demonstration.objects.values_list("status", flat=True)) == {"submitted"}


def test_import_is_all_or_nothing_with_line_and_field(make_project, tmp_path):
    project = make_project("Imp", prompts=0)
    bad = [ROWS[0], {"prompt": "No answer"}, {"prompt": 5, "response": "x"}, {"prompt": "p", "response": "  "}]
    with pytest.raises(ImportFailed) as caught:
        import_demonstrations_file(project=project, path=write(tmp_path, "jsonl", bad))
    text = str(caught.value)
    assert "demos.jsonl line 2" in text and "response" in text
    assert "line 3" in text and "prompt" in text and "line 4" in text and "line 1" not in text
    assert not Demonstration.objects.exists() and not Prompt.objects.exists()


def test_import_reuses_existing_prompts_and_the_command(make_project, tmp_path):
    project = make_project("Imp", prompts=0)
    Prompt.objects.create(project=project, text="Name a black tea.")
    path = write(tmp_path, "jsonl", ROWS)
    out = StringIO()
    call_command("import_demonstrations", str(path), "--project", "Imp", stdout=out)
    assert "imported 3 demonstrations" in out.getvalue() and "2 new prompts" in out.getvalue()
    assert Prompt.objects.filter(project=project).count() == 3
    with pytest.raises(CommandError, match="No project"):
        call_command("import_demonstrations", str(path), "--project", "Nope")
    with pytest.raises(CommandError, match="no such file"):
        call_command("import_demonstrations", str(tmp_path / "missing.jsonl"), "--project", "Imp")


def test_import_refuses_unstorable_text_naming_line_and_field(make_project, tmp_path):
    project = make_project("Imp", prompts=0)
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "response": "fine"}\n{"prompt": "p", "response": "half \\ud83d"}\n'
                    '{"prompt": "nul \\u0000", "response": "r"}\n')
    with pytest.raises(ImportFailed) as caught:
        import_demonstrations_file(project=project, path=path)
    text = str(caught.value)
    assert "bad.jsonl line 2, field 'response'" in text and "surrogate" in text
    assert "bad.jsonl line 3, field 'prompt'" in text and "NUL" in text
    assert not Demonstration.objects.exists()
