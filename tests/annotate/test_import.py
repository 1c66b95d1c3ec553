"""Import service and command: every format, good and bad input; all or nothing; duplicates."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.management import CommandError, call_command

from annotate.models import Project, Prompt, Ranking, Response
from annotate.services.importing import ImportFailed, api_records, import_file, import_records

pytestmark = pytest.mark.django_db

RESPONSES = ["Sunny and warm.", "Cold rain all day.", "A grey sky.", "Snow in the hills."]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def nothing_written(project_name="p"):
    return not Project.objects.filter(name=project_name).exists() and not Prompt.objects.exists()


def failure(path, project="p", **kwargs) -> ImportFailed:
    with pytest.raises(ImportFailed) as info:
        import_file(path=path, project_name=project, **kwargs)
    return info.value


# --- JSONL -----------------------------------------------------------------------------------------------


def test_jsonl_import_creates_project_prompts_responses_and_ranking(tmp_path):
    path = write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            {"prompt": "Describe the weather.", "id": "w1", "metadata": {"task": "demo"}},
            {"prompt": "Rank these.", "id": 7, "responses": RESPONSES, "ranking": [[2], [0, 3], [1]],
             "ratings": [5, None, 6, 5], "flags": [[], ["unhelpful"], [], []], "annotator": "ann-1",
             "topic": "weather"},
        ],
    )
    summary = import_file(path=path, project_name="p")
    assert (summary.records, summary.imported, summary.responses, summary.rankings) == (2, 2, 4, 1)
    assert summary.project_created and summary.round == 1
    project = Project.objects.get(name="p")
    assert (project.k_min, project.k_max) == (4, 9)  # model defaults
    first, second = Prompt.objects.order_by("pk")
    assert (first.external_id, first.metadata, first.source) == ("w1", {"task": "demo"}, "prompts.jsonl")
    assert second.external_id == "7" and second.metadata == {"topic": "weather"}  # unknown keys → metadata
    responses = list(second.responses.order_by("pk"))
    assert [r.text for r in responses] == RESPONSES
    assert {r.origin for r in responses} == {Response.Origin.IMPORTED}
    ranking = Ranking.objects.get()
    ids = [r.pk for r in responses]
    assert ranking.tiers == [[ids[2]], [ids[0], ids[3]], [ids[1]]]
    assert ranking.source == Ranking.Source.IMPORTED
    assert ranking.source_detail == "prompts.jsonl · annotator ann-1"
    assert ranking.ratings == {str(ids[0]): 5, str(ids[2]): 6, str(ids[3]): 5}
    assert ranking.flags == {str(ids[1]): ["unhelpful"]}


def test_duplicates_are_skipped_and_counted(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "One"}, {"prompt": "Two"}, {"prompt": " One "}])
    first = import_file(path=path, project_name="p")
    assert (first.imported, first.skipped) == (2, 1)  # " One " normalises to "One"
    again = import_file(path=path, project_name="p")
    assert (again.imported, again.skipped, again.project_created) == (0, 3, False)
    assert Prompt.objects.count() == 2
    # Another round is another set of prompts.
    third = import_file(path=path, project_name="p", round=2)
    assert (third.imported, third.round) == (2, 2)
    # By default the import goes into the project's latest round.
    assert import_file(path=write_jsonl(tmp_path / "b.jsonl", [{"prompt": "Three"}]), project_name="p").round == 2


def test_repeated_prompt_with_same_responses_adds_a_ranking(tmp_path):
    # An exported multi-annotator file: one prompt, two annotators' rankings (responses in another order).
    path = write_jsonl(
        tmp_path / "multi.jsonl",
        [
            {"prompt": "Q", "responses": RESPONSES, "ranking": [[0], [1], [2], [3]], "annotator": "a"},
            {"prompt": "Q", "responses": RESPONSES[::-1], "ranking": [[3], [2], [1, 0]], "annotator": "b"},
        ],
    )
    summary = import_file(path=path, project_name="p")
    assert (summary.imported, summary.responses, summary.rankings) == (1, 4, 2)
    ids = list(Response.objects.order_by("pk").values_list("pk", flat=True))
    second = Ranking.objects.order_by("pk").last()
    # b's index 3 is RESPONSES[0], 2 → RESPONSES[1], 1 → RESPONSES[2], 0 → RESPONSES[3].
    assert second.tiers == [[ids[0]], [ids[1]], [ids[2], ids[3]]]


def test_repeated_prompt_with_other_responses_is_rejected_in_strict_mode(tmp_path):
    path = write_jsonl(
        tmp_path / "clash.jsonl",
        [{"prompt": "Q", "responses": RESPONSES}, {"prompt": "Q", "responses": [*RESPONSES[:3], "Other."]}],
    )
    exc = failure(path, strict=True)
    assert "clash.jsonl line 2, field 'responses': the same prompt appears at clash.jsonl line 1" in str(exc)
    assert nothing_written()


@pytest.mark.parametrize(
    "record, message",
    [
        ({"id": 3}, "bad.jsonl line 2, field 'prompt': missing"),
        ({"prompt": 42}, "bad.jsonl line 2, field 'prompt': expected a string, got an integer"),
        ({"prompt": "   "}, "bad.jsonl line 2, field 'prompt': is empty"),
        ({"prompt": "x", "metadata": [1]}, "bad.jsonl line 2, field 'metadata': expected an object"),
        ({"prompt": "x", "responses": "just one"}, "bad.jsonl line 2, field 'responses': expected a list of strings"),
        ({"prompt": "x", "responses": ["a", 2, "c", "d"]}, "field 'responses': expected a list of strings"),
        ({"prompt": "x", "responses": ["a", "b", "c"]}, "field 'responses': expected 4 to 9 responses"),
        ({"prompt": "x", "responses": ["a", "", "c", "d"]}, "field 'responses': response 1 is empty"),
        ({"prompt": "x", "responses": ["a", "b", "a ", "d"]}, "responses 0 and 2 are the same text"),
        ({"prompt": "x", "ranking": [[0]]}, "field 'ranking': needs 'responses'"),
        ({"prompt": "x", "responses": RESPONSES, "ranking": [0, 1, 2, 3]}, "field 'ranking': expected a list of"),
        ({"prompt": "x", "responses": RESPONSES, "ranking": [[0], [1], [2], [4]]}, "index 4 out of range"),
        ({"prompt": "x", "responses": RESPONSES, "ranking": [[0], [1], [2]]}, "response 3 missing"),
        ({"prompt": "x", "responses": RESPONSES, "ranking": [[0, 0], [1], [2], [3]]}, "appears more than once"),
        ({"prompt": "x", "responses": RESPONSES, "ranking": [[0], [1], [2], [3]], "ratings": [9, 1, 1, 1]},
         "field 'ratings': expected a list of 4 ratings"),
        ({"prompt": "x", "responses": RESPONSES, "ranking": [[0], [1], [2], [3]], "flags": [["nope"], [], [], []]},
         "field 'flags': unknown flag nope"),
        ({"prompt": "x", "ratings": [1, 2, 3, 4]}, "field 'ratings': only allowed with a 'ranking'"),
        ({"prompt": "a\u0000b"}, "field 'prompt': contains a NUL character"),
    ],
)
def test_jsonl_bad_records_name_line_and_field_and_write_nothing(tmp_path, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "good one"}, record, {"prompt": "another good one"}])
    exc = failure(path)
    assert message in str(exc)
    assert exc.summary.rejected == 1 and exc.summary.records == 3
    assert str(exc).startswith("Nothing was imported: 1 of 3 records were rejected.")
    assert nothing_written()


def test_jsonl_broken_line_and_non_object(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": "unterminated\n[1, 2]\n\n{"prompt": "fine"}\n', encoding="utf-8")
    exc = failure(path)
    assert "broken.jsonl line 2: not valid JSON: Unterminated string" in str(exc)
    assert "broken.jsonl line 3: expected a JSON object, got a list" in str(exc)
    assert exc.summary.rejected == 2 and exc.summary.records == 4  # the blank line 4 is not a record
    assert nothing_written()


def test_jsonl_empty_file(tmp_path):
    for content in ("", "\n  \n"):
        path = tmp_path / "empty.jsonl"
        path.write_text(content)
        exc = failure(path)
        assert "empty.jsonl: the file is empty (no records)" in str(exc)
        assert nothing_written()


def test_jsonl_huge_line_is_rejected_without_stopping_the_scan(tmp_path, settings):
    settings.WORKBENCH_MAX_IMPORT_RECORD_BYTES = 1000
    path = tmp_path / "huge.jsonl"
    path.write_text(
        json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"prompt": "x" * 5000}) + "\n" + '{"prompt": 1}\n'
    )
    exc = failure(path)
    assert "huge.jsonl line 2: the record is larger than the 1,000 byte limit" in str(exc)
    assert "huge.jsonl line 3, field 'prompt': expected a string" in str(exc)  # line counting continued
    assert nothing_written()
    # The command-line limit overrides the setting.
    summary = import_file(path=write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "y" * 3000}]), project_name="p",
                          max_bytes=10_000)
    assert summary.imported == 1


def test_bad_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"prompt": "café"}\n'.encode("latin-1"))
    assert "latin1.jsonl line 1: not valid UTF-8" in str(failure(path))


def test_jsonl_nested_too_deeply_names_the_line(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": "x", "metadata": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}\n")
    exc = failure(path)
    assert "deep.jsonl line 2: not valid JSON: nested too deeply" in str(exc)
    assert exc.summary.rejected == 1 and nothing_written()


def test_unsupported_and_missing_files(tmp_path):
    (tmp_path / "data.txt").write_text("hello")
    assert "unsupported file type '.txt'" in str(failure(tmp_path / "data.txt"))
    assert "no such file or directory" in str(failure(tmp_path / "nope.jsonl"))
    (tmp_path / "plain-dir").mkdir()
    assert "not a directory saved with datasets' save_to_disk" in str(failure(tmp_path / "plain-dir"))
    assert nothing_written()


def test_project_k_range_is_the_projects(tmp_path):
    Project.objects.create(name="wide", k_min=5, k_max=6)
    path = write_jsonl(tmp_path / "k.jsonl", [{"prompt": "x", "responses": RESPONSES}])
    assert "expected 5 to 6 responses (the project's K range), got 4" in str(failure(path, project="wide"))
    assert not Prompt.objects.exists()


# --- CSV -------------------------------------------------------------------------------------------------


def test_csv_import_other_columns_become_metadata(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text(
        'id,prompt,topic,responses,ranking\na1,"Write a poem, please",poetry,,\n'
        'a2,"Multi\nline",,"[""A"", ""B"", ""C"", ""D""]","[[1], [0, 2], [3]]"\n',
        encoding="utf-8",
    )
    summary = import_file(path=path, project_name="p")
    assert (summary.imported, summary.responses, summary.rankings) == (2, 4, 1)
    first, second = Prompt.objects.order_by("pk")
    assert (first.text, first.external_id, first.metadata) == ("Write a poem, please", "a1", {"topic": "poetry"})
    assert second.text == "Multi\nline" and second.metadata == {}
    assert list(second.responses.values_list("text", flat=True)) == ["A", "B", "C", "D"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("id,text\n1,hello\n", "bad.csv: no 'prompt' column in the header (columns: id, text)"),
        ("id,prompt\n1,hello\n2,\n", "bad.csv line 3, field 'prompt': is empty"),
        ("id,prompt\n1,hello\n2,a,b\n", "bad.csv line 3: expected 2 columns, found 3"),
        ('prompt,responses\nhello,"[1, 2"\n', "bad.csv line 2, field 'responses': not valid JSON"),
        ('prompt,responses\nhello,"{""a"": 1}"\n', "bad.csv line 2, field 'responses': expected a list of strings"),
        ("", "bad.csv: the file is empty (no header and no records)"),
        ("id,prompt\n", "bad.csv: the file has a header but no records"),
    ],
)
def test_csv_bad_input(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    assert message in str(failure(path))
    assert nothing_written()


def test_csv_huge_field(tmp_path, settings):
    settings.WORKBENCH_MAX_IMPORT_RECORD_BYTES = 1000
    path = tmp_path / "huge.csv"
    path.write_text("prompt\nshort\n" + "y" * 5000 + "\n", encoding="utf-8")
    assert "huge.csv line 3: the record is larger than the 1,000 byte limit" in str(failure(path))
    assert nothing_written()


# --- Parquet ---------------------------------------------------------------------------------------------


def write_parquet(path, rows, schema=None):
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def test_parquet_import(tmp_path):
    path = write_parquet(
        tmp_path / "prompts.parquet",
        [
            {"prompt": "P1", "id": "x", "responses": None, "ranking": None, "lang": "en",
             "metadata": json.dumps({"task": "demo"})},
            {"prompt": "P2", "id": "y", "responses": RESPONSES, "ranking": [[3], [2], [1], [0]], "lang": None,
             "metadata": None},
        ],
    )
    summary = import_file(path=path, project_name="p")
    assert (summary.imported, summary.responses, summary.rankings) == (2, 4, 1)
    p1, p2 = Prompt.objects.order_by("pk")
    assert p1.metadata == {"task": "demo", "lang": "en"} and p2.metadata == {}


def test_parquet_bad_input(tmp_path, settings):
    settings.WORKBENCH_MAX_IMPORT_RECORD_BYTES = 1000
    missing = write_parquet(tmp_path / "missing.parquet", [{"prompt": "ok"}, {"prompt": None}])
    assert "missing.parquet row 2, field 'prompt': missing" in str(failure(missing))
    wrong = write_parquet(tmp_path / "wrong.parquet", [{"prompt": "ok", "responses": "abc"}])
    assert "wrong.parquet row 1, field 'responses': expected a list of strings" in str(failure(wrong))
    no_column = write_parquet(tmp_path / "nocol.parquet", [{"text": "ok"}])
    assert "nocol.parquet: no 'prompt' column (columns: text)" in str(failure(no_column))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not really parquet")
    assert "broken.parquet: not a readable Parquet file" in str(failure(broken))
    empty = write_parquet(tmp_path / "empty.parquet", [], schema=pa.schema([("prompt", pa.string())]))
    assert "empty.parquet: the file is empty (no records)" in str(failure(empty))
    huge = write_parquet(tmp_path / "huge.parquet", [{"prompt": "ok"}, {"prompt": "z" * 5000}])
    assert "huge.parquet row 2: the record is larger than the 1,000 byte limit" in str(failure(huge))
    assert nothing_written()


# --- datasets directory ----------------------------------------------------------------------------------


def test_datasets_directory_import_every_split(tmp_path):
    import datasets

    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_list([{"prompt": "T1", "id": "1"}, {"prompt": "T2", "id": "2"}]),
        test=datasets.Dataset.from_list([{"prompt": "E1", "id": "3"}]),
    )
    dd.save_to_disk(str(tmp_path / "ds"))
    summary = import_file(path=tmp_path / "ds", project_name="p")
    assert summary.imported == 3
    assert sorted(Prompt.objects.values_list("text", flat=True)) == ["E1", "T1", "T2"]


def test_datasets_directory_bad_input(tmp_path, settings):
    import datasets

    settings.WORKBENCH_MAX_IMPORT_RECORD_BYTES = 1000
    datasets.Dataset.from_list([{"prompt": "a"}, {"prompt": ""}]).save_to_disk(str(tmp_path / "missing"))
    assert "missing row 2, field 'prompt': is empty" in str(failure(tmp_path / "missing"))
    datasets.Dataset.from_list([{"prompt": "a", "responses": [1, 2, 3, 4]}]).save_to_disk(str(tmp_path / "wrong"))
    assert "wrong row 1, field 'responses': expected a list of strings" in str(failure(tmp_path / "wrong"))
    datasets.Dataset.from_list([{"text": "a"}]).save_to_disk(str(tmp_path / "nocol"))
    assert "nocol: no 'prompt' column" in str(failure(tmp_path / "nocol"))
    datasets.Dataset.from_dict({"prompt": []}, features=datasets.Features({"prompt": datasets.Value("string")})) \
        .save_to_disk(str(tmp_path / "empty"), num_shards=1)
    assert "empty: the dataset is empty (no records)" in str(failure(tmp_path / "empty"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "state.json").write_text("{not json")
    assert "broken: cannot load it with datasets.load_from_disk" in str(failure(broken))
    datasets.Dataset.from_list([{"prompt": "a"}, {"prompt": "b" * 5000}]).save_to_disk(str(tmp_path / "huge"))
    assert "huge row 2: the record is larger than the 1,000 byte limit" in str(failure(tmp_path / "huge"))
    assert nothing_written()


# --- API records and the command -------------------------------------------------------------------------


def test_import_records_from_api_list():
    summary = import_records(project_name="p", records=api_records([{"prompt": "a"}, {"prompt": "b"}]), source="api")
    assert summary.imported == 2
    with pytest.raises(ImportFailed) as info:
        import_records(project_name="p", records=api_records([{"prompt": "c"}, "d"]), source="api")
    assert "record 2: expected a JSON object, got a string" in str(info.value)
    assert Prompt.objects.count() == 2  # the failed call wrote nothing


def test_large_import_in_batches(tmp_path):
    records = [{"prompt": f"prompt {i}", "responses": [f"r{i}-{j}" for j in range(4)], "ranking": [[0], [1], [2], [3]]}
               for i in range(1203)]
    summary = import_file(path=write_jsonl(tmp_path / "big.jsonl", records), project_name="p")
    assert (summary.imported, summary.responses, summary.rankings) == (1203, 4812, 1203)
    ranking = Ranking.objects.select_related("prompt").order_by("pk").last()
    texts = dict(Response.objects.filter(prompt=ranking.prompt).values_list("pk", "text"))
    assert [texts[t[0]] for t in ranking.tiers] == ["r1202-0", "r1202-1", "r1202-2", "r1202-3"]


def test_command_success_and_failure(tmp_path, capsys):
    path = write_jsonl(tmp_path / "cmd.jsonl", [{"prompt": "a"}, {"prompt": "a"}])
    call_command("import_prompts", str(path), "--project", "cmdp", "--no-progress")
    out = capsys.readouterr().out
    assert "Created project 'cmdp' with default settings." in out
    assert "2 records: imported 1 prompts (0 responses, 0 rankings) into project 'cmdp' round 1; " \
           "skipped 1 duplicates; rejected 0." in out
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "b"}, {"prompt": ["x"]}])
    with pytest.raises(CommandError, match=r"bad.jsonl line 2, field 'prompt': expected a string, got a list"):
        call_command("import_prompts", str(bad), "--project", "cmdp", "--no-progress")
    assert Prompt.objects.count() == 1


def test_exported_snapshot_imports_back(tmp_path):
    """An export_rankings snapshot (any format) is a valid import: prompts, responses and every ranking."""
    from django.contrib.auth import get_user_model

    from annotate.services.exporting import export_snapshot
    from tests.annotate.data_fixtures import make_ranked_prompt

    alice, bob = (get_user_model().objects.create_user(n) for n in ("alice", "bob"))
    source = Project.objects.create(name="source")
    make_ranked_prompt(source, "first", {alice: [[0], [1, 2], [3]], bob: [[3], [2], [1], [0]]},
                       metadata={"task": "demo"}, flags={alice: {1: ["unhelpful"]}})
    make_ranked_prompt(source, "second", {alice: [[4], [3], [2], [1], [0]]})
    for fmt in ("datasets", "jsonl"):
        export_snapshot(project=source, out_dir=tmp_path / fmt, format=fmt, test_fraction=0)
    summary = import_file(path=tmp_path / "datasets", project_name="copy")
    assert (summary.imported, summary.responses, summary.rankings) == (2, 9, 3)
    copy = Project.objects.get(name="copy")
    first = copy.prompts.get(text="first")
    assert first.metadata == {"task": "demo"}
    ids = list(first.responses.order_by("pk").values_list("pk", flat=True))
    tiers = sorted(Ranking.objects.filter(prompt=first).values_list("tiers", flat=True))
    assert tiers == sorted([[[ids[0]], [ids[1], ids[2]], [ids[3]]], [[ids[3]], [ids[2]], [ids[1]], [ids[0]]]])
    flagged = Ranking.objects.get(prompt=first, tiers=[[ids[0]], [ids[1], ids[2]], [ids[3]]])
    assert flagged.flags == {str(ids[1]): ["unhelpful"]} and flagged.source == Ranking.Source.IMPORTED
    # The JSONL files of the other snapshot import too (into another project).
    assert import_file(path=tmp_path / "jsonl" / "kwise" / "train.jsonl", project_name="copy2").rankings == 3


def test_jsonl_line_numbers_with_crlf_at_the_size_limit(tmp_path, settings):
    record = json.dumps({"prompt": "p" * 20})
    settings.WORKBENCH_MAX_IMPORT_RECORD_BYTES = len(record)  # exactly at the limit: accepted
    path = tmp_path / "crlf.jsonl"
    path.write_bytes((record + "\r\n" + json.dumps({"prompt": 3}) + "\r\n").encode())
    assert "crlf.jsonl line 2, field 'prompt'" in str(failure(path))
    path.write_bytes((record + "\r\n" + json.dumps({"prompt": "q" * 21}) + "\r\n").encode())
    assert f"crlf.jsonl line 2: the record is larger than the {len(record)} byte limit" in str(failure(path))


def test_repeated_prompt_with_other_responses_is_merged(tmp_path):
    # Issue 16, item 7: one prompt twice with different responses -> one prompt, responses de-duplicated.
    path = write_jsonl(
        tmp_path / "merge.jsonl",
        [{"prompt": "Q", "responses": RESPONSES}, {"prompt": "R"},
         {"prompt": "Q", "responses": [RESPONSES[1], "Other.", RESPONSES[0], "Fifth."]}],
    )
    summary = import_file(path=path, project_name="p")
    assert (summary.imported, summary.responses, summary.merged, summary.merged_duplicates) == (2, 6, 1, 2)
    assert "merged 1 repeated prompt with other responses into their first copy (2 duplicate responses dropped)" \
        in str(summary)
    prompt = Prompt.objects.get(text="Q")
    assert list(prompt.responses.order_by("pk").values_list("text", flat=True)) == [*RESPONSES, "Other.", "Fifth."]
    assert prompt.num_responses == 6  # the queue's stored count follows


def test_merge_across_batches_and_its_limits(tmp_path, monkeypatch):
    from annotate.services import importing

    monkeypatch.setattr(importing, "BATCH_SIZE", 2)  # the first copy is written before its repeat is read
    records = [{"prompt": "Q", "responses": RESPONSES}, {"prompt": "a"}, {"prompt": "b"},
               {"prompt": "Q", "responses": [*RESPONSES[:2], "X.", "Y."]},
               {"prompt": "Q", "responses": ["Y.", "Z.", RESPONSES[3], "X."]}]
    summary = import_file(path=write_jsonl(tmp_path / "batches.jsonl", records), project_name="p")
    assert (summary.merged, summary.merged_duplicates, summary.responses) == (2, 5, 7)
    assert Prompt.objects.get(text="Q").responses.count() == 7

    # Merged, a prompt may not exceed the project's K max; nothing is written then.
    Project.objects.create(name="small", k_max=5)
    too_many = write_jsonl(tmp_path / "many.jsonl", [{"prompt": "S", "responses": RESPONSES},
                                                      {"prompt": "S", "responses": ["1", "2", "3", "4"]}])
    with pytest.raises(ImportFailed, match=r"many.jsonl line 2, field 'responses': the same prompt appears at "
                                           r"many.jsonl line 1; merged, it would have 8 different responses, more "
                                           r"than the project's K max \(5\)"):
        import_file(path=too_many, project_name="small")
    assert not Prompt.objects.filter(project__name="small").exists()


def test_repeat_with_a_ranking_is_not_merged(tmp_path):
    ranked = write_jsonl(tmp_path / "ranked.jsonl", [
        {"prompt": "Q", "responses": RESPONSES, "ranking": [[0], [1], [2], [3]]},
        {"prompt": "Q", "responses": [*RESPONSES[:3], "Other."]},
    ])
    exc = failure(ranked)
    assert "ranked.jsonl line 2, field 'responses': the same prompt appears at ranked.jsonl line 1 with different " \
           "responses and a ranking" in str(exc)
    assert nothing_written()


def test_strict_mode_refuses_repeats_with_other_responses(tmp_path, capsys):
    path = write_jsonl(tmp_path / "strict.jsonl",
                       [{"prompt": "Q", "responses": RESPONSES}, {"prompt": "Q", "responses": [*RESPONSES[:3], "O."]}])
    with pytest.raises(ImportFailed, match="strict.jsonl line 2, field 'responses': the same prompt appears at "
                                           "strict.jsonl line 1 with different responses"):
        import_file(path=path, project_name="p", strict=True)
    assert nothing_written()
    with pytest.raises(CommandError, match="strict mode"):
        call_command("import_prompts", str(path), "--project", "p", "--strict", "--no-progress")
    assert nothing_written()
    call_command("import_prompts", str(path), "--project", "p", "--no-progress")
    assert "merged 1 repeated prompt" in capsys.readouterr().out
