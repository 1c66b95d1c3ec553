"""Import prompts (optionally with pre-generated responses and an existing ranking) into a project.

One service, `import_records`, behind three doors: the `import_prompts` command (`import_file`), the staff
upload page (`import_upload`) and the API (a list of records). Readers stream JSONL, CSV, Parquet and
`datasets` directories (saved with `save_to_disk`) as `(location, record)` pairs, where the location
("prompts.jsonl line 17") names the file and line or row for error messages.

A record: ``{"prompt": str, "id": str|int, "metadata": {…}, "responses": [str, …],
"ranking": [[best indices], …, [worst]], "annotator": str, "ratings": [int|null, …],
"flags": [[flag, …], …], "all_bad": bool, "rationale": str}``; only `prompt` is required. Other keys
(and, in CSV/Parquet/datasets, other columns) go into the prompt's metadata. An exported K-wise snapshot
reads back as-is (`prompt_id` is taken as the id).

The import is all or nothing: every record is validated, and if any is rejected nothing is published and
`ImportFailed` lists the problems. The rows are written in short transactions into a hidden staging project and
moved into the project in one statement at the end, so a long import never holds the database's write lock for
long (annotators keep saving meanwhile). Prompts already in the project's round (same normalised text)
are skipped and counted; a prompt repeated within the import with the same responses and another ranking
adds that ranking to the first copy (a multi-annotator file), otherwise it is skipped too. A repeat with other
responses (and no ranking on either copy) MERGES them: its new texts join the first copy's responses,
de-duplicated, up to the project's K max, counted in the summary (`merged`, `merged_duplicates`). With
`strict=True` such a repeat is rejected instead (the whole import fails), as are all repeats with other
responses carrying a ranking (a ranking places every response of its prompt, so it cannot cover merged ones).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Max

from annotate.models import (
    LIKERT_MAX,
    LIKERT_MIN,
    RESPONSE_FLAGS,
    Project,
    Prompt,
    Ranking,
    Response,
    text_hash,
)
from training.rlhf.data import (
    DatasetError,
    RowProblem,
    dataset_splits,
    is_datasets_dir,
    jsonl_rows,
    load_datasets_dir,
    open_parquet,
    parquet_rows,
    tier_issues,
)
from webapp.boundary import BoundaryError, check_value, too_deep

DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
MAX_REPORTED_ERRORS = 50
# Records per write transaction: each batch is a short transaction of its own (annotators' writes queue behind
# at most one batch; on SQLite there is one writer at a time).
BATCH_SIZE = 100
# SQLite's busy handler retries a waiting writer only every 50-100 ms once it has waited a while, so an import
# that starts its next batch the moment the last one commits can starve an annotator's save for seconds (3 s
# seen under load). A short pause after each batch (outside any transaction) lets the waiting writers in.
SQLITE_PAUSE_AFTER_BATCH_S = 0.02
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
UPLOAD_FORMATS = (".jsonl", ".ndjson", ".csv", ".parquet")
KNOWN_FIELDS = {
    "prompt", "id", "prompt_id", "metadata", "responses", "ranking", "annotator", "ratings", "flags",
    "all_bad", "rationale", "source",
}
RANKING_EXTRAS = ("annotator", "ratings", "flags", "all_bad", "rationale")


def max_record_bytes() -> int:
    return int(getattr(settings, "WORKBENCH_MAX_IMPORT_RECORD_BYTES", DEFAULT_MAX_RECORD_BYTES))


# --- Errors and results ----------------------------------------------------------------------------------


class RecordFileError(ValueError):
    """The file as a whole cannot be read (missing, unsupported, empty, not CSV/Parquet…)."""


@dataclass
class RecordError:
    """One problem with one record. `field` is None when the record as a whole is broken."""

    location: str
    message: str
    field: str | None = None

    def __str__(self) -> str:
        where = f"{self.location}, field '{self.field}'" if self.field else self.location
        return f"{where}: {self.message}"


@dataclass
class ImportSummary:
    project: str
    project_created: bool
    source: str
    round: int
    records: int = 0
    imported: int = 0  # prompts created
    responses: int = 0
    rankings: int = 0
    skipped: int = 0  # duplicates of prompts already in the project's round, or earlier in the import
    merged: int = 0  # repeats of a prompt with other responses, merged into its first copy (not strict)
    merged_duplicates: int = 0  # responses of those repeats that the first copy already had (dropped)
    rejected: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "project_created": self.project_created,
            "source": self.source,
            "round": self.round,
            "records": self.records,
            "imported": self.imported,
            "responses": self.responses,
            "rankings": self.rankings,
            "skipped": self.skipped,
            "merged": self.merged,
            "merged_duplicates": self.merged_duplicates,
            "rejected": self.rejected,
            "errors": self.errors,
        }

    def __str__(self) -> str:
        merged = ""
        if self.merged:
            merged = (
                f"merged {self.merged} repeated prompt{'s' if self.merged != 1 else ''} with other responses into "
                f"their first copy ({self.merged_duplicates} duplicate response"
                f"{'s' if self.merged_duplicates != 1 else ''} dropped); "
            )
        return (
            f"{self.records} records: imported {self.imported} prompts ({self.responses} responses, "
            f"{self.rankings} rankings) into project '{self.project}' round {self.round}; "
            f"{merged}skipped {self.skipped} duplicates; rejected {self.rejected}."
        )


class ImportFailed(Exception):
    """Nothing was imported. `errors` lists the problems (the first MAX_REPORTED_ERRORS), `summary` counts."""

    def __init__(self, errors: list[str], summary: ImportSummary | None = None):
        self.errors = errors
        self.summary = summary
        if summary is not None and summary.rejected:
            head = f"Nothing was imported: {summary.rejected} of {summary.records} records were rejected."
        else:
            head = "Nothing was imported."
        more = ""
        if summary is not None and summary.rejected > len(errors):
            more = f"\n… and {summary.rejected - len(errors)} more rejected records."
        super().__init__("\n".join([head, *errors]) + more)


# --- Readers -----------------------------------------------------------------------------------------------

Advance = Callable[[int], None]
Located = tuple[str, "dict | RecordError"]


def _no_progress(_: int) -> None:
    return None


@dataclass
class RecordSource:
    """A readable set of records: `records(advance)` yields (location, record or RecordError).

    `total` and `unit` size a progress bar: bytes for JSONL and CSV, rows for Parquet and datasets.
    """

    name: str
    format: str
    total: int | None
    unit: str
    _reader: Callable[[Advance], Iterator[Located]]

    def records(self, advance: Advance | None = None) -> Iterator[Located]:
        return self._reader(advance or _no_progress)


def open_path(path: str | Path, *, max_bytes: int | None = None) -> RecordSource:
    """A RecordSource for a file or directory on disk (format from the extension / directory layout)."""
    path = Path(path)
    limit = max_bytes or max_record_bytes()
    if not path.exists():
        raise RecordFileError(f"{path}: no such file or directory")
    if path.is_dir():
        return _datasets_source(path, limit)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise RecordFileError(
            f"{path.name}: unsupported file type '{path.suffix}'; use .jsonl, .csv, .parquet "
            "or a directory saved with datasets' save_to_disk"
        )
    size = path.stat().st_size
    if fmt == "parquet":
        return _parquet_source(path.name, lambda: path.open("rb"), limit)

    def reader(advance: Advance) -> Iterator[Located]:
        with path.open("rb") as stream:
            yield from _TEXT_READERS[fmt](stream, path.name, limit, advance)

    return RecordSource(path.name, fmt, size, "B", reader)


def open_upload(uploaded, *, max_bytes: int | None = None) -> RecordSource:
    """A RecordSource for a Django UploadedFile (JSONL, CSV or Parquet)."""
    name = Path(uploaded.name or "upload").name
    limit = max_bytes or max_record_bytes()
    suffix = Path(name).suffix.lower()
    if suffix not in UPLOAD_FORMATS:
        raise RecordFileError(f"{name}: unsupported file type '{suffix}'; upload a .jsonl, .csv or .parquet file")
    fmt = FORMATS[suffix]

    def opener() -> BinaryIO:
        uploaded.seek(0)
        return uploaded

    if fmt == "parquet":
        return _parquet_source(name, opener, limit, close=False)

    def reader(advance: Advance) -> Iterator[Located]:
        yield from _TEXT_READERS[fmt](opener(), name, limit, advance)

    return RecordSource(name, fmt, uploaded.size, "B", reader)


def api_records(records: list) -> Iterator[Located]:
    """(location, record) pairs for a list posted to the API: 'record 1', 'record 2', …"""
    for number, record in enumerate(records, start=1):
        location = f"record {number}"
        if isinstance(record, dict):
            yield location, record
        else:
            yield location, RecordError(location, f"expected a JSON object, got {_type_name(record)}")


def read_jsonl(stream: BinaryIO, name: str, limit: int, advance: Advance = _no_progress) -> Iterator[Located]:
    """One JSON object per line; blank lines are ignored. A line longer than `limit` bytes is rejected
    without being held in memory (the record contract's reader, training.rlhf.data.jsonl_rows)."""
    seen_content = False
    for number, value in jsonl_rows(stream, max_line_bytes=limit, advance=advance):
        seen_content = True
        location = f"{name} line {number}"
        if isinstance(value, RowProblem):
            yield location, RecordError(location, _row_problem(value, limit))
        elif not isinstance(value, dict):
            yield location, RecordError(location, f"expected a JSON object, got {_type_name(value)}")
        else:
            yield location, value
    if not seen_content:
        raise RecordFileError(f"{name}: the file is empty (no records)")


def _row_problem(problem: RowProblem, limit: int) -> str:
    if problem.kind == "too_long":
        return _too_long(limit)
    if problem.kind == "encoding":
        return f"not valid UTF-8 (byte {problem.position})"
    if not problem.position:
        return f"not valid JSON: {problem.reason}"
    return f"not valid JSON: {problem.reason} (column {problem.position})"


class _CountingReader(io.RawIOBase):
    """Reports how many bytes were read from the wrapped binary stream (for the progress bar)."""

    def __init__(self, stream: BinaryIO, advance: Advance):
        self._stream, self._advance = stream, advance

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        self._advance(len(data))
        return len(data)


# CSV columns holding JSON (a spreadsheet cell cannot hold a list otherwise).
_CSV_JSON_COLUMNS = ("metadata", "responses", "ranking", "ratings", "flags")


def read_csv(stream: BinaryIO, name: str, limit: int, advance: Advance = _no_progress) -> Iterator[Located]:
    """A header row naming the columns; `prompt` is required, `id` optional; `metadata`, `responses`,
    `ranking`, `ratings` and `flags` cells hold JSON; every other non-empty cell goes into metadata.
    Locations are the line where the record starts (the spreadsheet's row number: the header is line 1)."""
    if csv.field_size_limit() < limit + 1:
        csv.field_size_limit(limit + 1)
    text = io.TextIOWrapper(io.BufferedReader(_CountingReader(stream, advance)), encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader, None)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise RecordFileError(f"{name} line 1: cannot read the header: {exc}") from exc
    if header is None or not any(h.strip() for h in header):
        raise RecordFileError(f"{name}: the file is empty (no header and no records)")
    columns = [h.strip() for h in header]
    if "prompt" not in columns:
        raise RecordFileError(f"{name}: no 'prompt' column in the header (columns: {', '.join(columns)})")
    duplicated = sorted({c for c in columns if columns.count(c) > 1 and c})
    if duplicated:
        raise RecordFileError(f"{name}: duplicated columns in the header: {', '.join(duplicated)}")
    rows = 0
    while True:
        start = reader.line_num + 1
        location = f"{name} line {start}"
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if "field larger than field limit" in str(exc):
                raise RecordFileError(f"{location}: {_too_long(limit)}") from exc
            raise RecordFileError(f"{location}: not valid CSV: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise RecordFileError(f"{location}: not valid UTF-8: {exc.reason}") from exc
        if not any(cell.strip() for cell in row):
            continue
        rows += 1
        if sum(len(cell) for cell in row) > limit:
            yield location, RecordError(location, _too_long(limit))
            continue
        if len(row) != len(columns):
            yield location, RecordError(location, f"expected {len(columns)} columns, found {len(row)}")
            continue
        record: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        bad = None
        for column, cell in zip(columns, row):
            if column in _CSV_JSON_COLUMNS:
                if cell.strip() == "":
                    continue
                try:
                    record[column] = json.loads(cell)
                except json.JSONDecodeError as exc:
                    bad = RecordError(location, f"not valid JSON: {exc.msg} (column {exc.colno})", column)
                    break
                except RecursionError:
                    bad = RecordError(location, f"not valid JSON: {too_deep()}", column)
                    break
            elif column in ("prompt", "id", "prompt_id", "annotator", "rationale"):
                record[column] = cell
            elif column == "all_bad":
                record[column] = cell.strip().lower() in {"1", "true", "yes"}
            elif column and cell != "":
                extra[column] = cell
        if bad:
            yield location, bad
            continue
        if extra:
            record["_extra_metadata"] = extra
        yield location, record
    if rows == 0:
        raise RecordFileError(f"{name}: the file has a header but no records")


_TEXT_READERS = {"jsonl": read_jsonl, "csv": read_csv}


def _parquet_source(name: str, opener: Callable[[], BinaryIO], limit: int, close: bool = True) -> RecordSource:
    def open_file():
        stream = opener()
        try:
            return stream, open_parquet(stream, name=name)
        except DatasetError as exc:
            if close:
                stream.close()
            raise RecordFileError(str(exc)) from exc

    stream, parquet = open_file()
    total = parquet.metadata.num_rows
    columns = parquet.schema_arrow.names
    if close:
        stream.close()
    if "prompt" not in columns:
        raise RecordFileError(f"{name}: no 'prompt' column (columns: {', '.join(columns)})")
    if total == 0:
        raise RecordFileError(f"{name}: the file is empty (no records)")

    def reader(advance: Advance) -> Iterator[Located]:
        stream, parquet = open_file()
        try:
            for row_number, row in enumerate(parquet_rows(parquet), start=1):
                advance(1)
                location = f"{name} row {row_number}"
                yield location, _table_record(location, row, limit)
        finally:
            if close:
                stream.close()

    return RecordSource(name, "parquet", total, "rows", reader)


def _datasets_source(path: Path, limit: int) -> RecordSource:
    """A directory saved with `save_to_disk` (Dataset or DatasetDict; every split is read), or a snapshot
    directory written by `export_rankings` (its K-wise records are read)."""
    if (path / "manifest.json").exists() and (path / "kwise").is_dir():
        path = path / "kwise"
        if not ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            raise RecordFileError(f"{path}: this snapshot is not in the datasets format; import its files instead")
    if not is_datasets_dir(path):
        raise RecordFileError(f"{path}: not a directory saved with datasets' save_to_disk")
    try:
        splits = dataset_splits(load_datasets_dir(path))
    except DatasetError as exc:
        raise RecordFileError(f"{path}: cannot load it with datasets.load_from_disk ({exc.__cause__})") from exc
    name = path.name
    for split, dataset in splits:
        if "prompt" not in dataset.column_names:
            where = f"{name} split '{split}'" if split else name
            raise RecordFileError(f"{where}: no 'prompt' column (columns: {', '.join(dataset.column_names)})")
    total = sum(d.num_rows for _, d in splits)
    if total == 0:
        raise RecordFileError(f"{name}: the dataset is empty (no records)")

    def reader(advance: Advance) -> Iterator[Located]:
        for split, dataset in splits:
            for index, row in enumerate(dataset, start=1):
                advance(1)
                location = f"{name} split '{split}' row {index}" if split else f"{name} row {index}"
                yield location, _table_record(location, row, limit)

    return RecordSource(name, "datasets", total, "rows", reader)


def _table_record(location: str, row: dict, limit: int) -> dict | RecordError:
    """A Parquet / datasets row as a record: JSON-string metadata decoded, other columns to metadata."""
    if _approx_size(row) > limit:
        return RecordError(location, _too_long(limit))
    record: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for column, value in row.items():
        if column in KNOWN_FIELDS:
            if value is None:
                continue
            if column == "metadata" and isinstance(value, str):
                try:
                    value = json.loads(value) if value.strip() else {}
                except json.JSONDecodeError as exc:
                    return RecordError(location, f"not valid JSON: {exc.msg}", "metadata")
            record[column] = value
        elif value is not None:
            extra[column] = _jsonable(value)
    if extra:
        record["_extra_metadata"] = extra
    return record


# --- Validation ----------------------------------------------------------------------------------------------


@dataclass
class CleanRanking:
    tiers: list[list[int]]  # indices into the record's responses
    ratings: list[int | None] | None
    flags: list[list[str]] | None
    all_bad: bool
    rationale: str
    annotator: str


@dataclass
class CleanRecord:
    location: str
    prompt: str
    external_id: str
    metadata: dict
    responses: list[str] | None
    ranking: CleanRanking | None

    @property
    def key(self) -> str:
        return text_hash(self.prompt)


def validate_record(location: str, raw: dict, *, k_min: int, k_max: int) -> tuple[CleanRecord | None, list]:
    """Check one record against the contract; returns (clean record, []) or (None, [RecordError, …])."""
    errors: list[RecordError] = []

    def err(field_name: str | None, message: str) -> None:
        errors.append(RecordError(location, message, field_name))

    prompt = raw.get("prompt")
    if "prompt" not in raw or prompt is None:
        err("prompt", "missing (every record needs a non-empty 'prompt' string)")
    elif not isinstance(prompt, str):
        err("prompt", f"expected a string, got {_type_name(prompt)}")
    elif not prompt.strip():
        err("prompt", "is empty")
    elif "\x00" in prompt:
        err("prompt", "contains a NUL character (\\u0000), which the database cannot store")

    external_id = ""
    raw_id = raw.get("id", raw.get("prompt_id"))
    id_field = "id" if "id" in raw else "prompt_id"
    if raw_id is not None and raw_id != "":
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
            err(id_field, f"expected a string or an integer, got {_type_name(raw_id)}")
        elif len(str(raw_id)) > 200:
            err(id_field, "longer than 200 characters")
        else:
            external_id = str(raw_id)

    metadata = raw.get("metadata", {})
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        err("metadata", f"expected an object (a dict), got {_type_name(metadata)}")
        metadata = {}
    metadata = dict(metadata)
    extras = {k: v for k, v in raw.items() if k not in KNOWN_FIELDS and k != "_extra_metadata"}
    extras.update(raw.get("_extra_metadata", {}))
    for key, value in extras.items():
        metadata.setdefault(key, value)
    try:
        if "\\u0000" in json.dumps(metadata, allow_nan=False):
            err("metadata", "contains a NUL character (\\u0000), which the database cannot store")
    except (TypeError, ValueError) as exc:
        err("metadata", f"not JSON-serialisable ({exc})")

    responses = raw.get("responses")
    if responses is not None:
        responses = _check_responses(responses, k_min, k_max, err)

    ranking = None
    has_ranking = raw.get("ranking") is not None
    for extra_field in RANKING_EXTRAS:
        if raw.get(extra_field) not in (None, "", False) and not has_ranking:
            err(extra_field, "only allowed with a 'ranking'")
    if has_ranking:
        if raw.get("responses") is None:
            err("ranking", "needs 'responses' (the ranking's indices point into them)")
        elif responses is not None:
            ranking = _check_ranking(raw, len(responses), err)

    if errors:
        return None, errors
    return CleanRecord(location, prompt, external_id, metadata, responses, ranking), []


def _check_responses(value: Any, k_min: int, k_max: int, err) -> list[str] | None:
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        err("responses", "expected a list of strings")
        return None
    empty = [str(i) for i, r in enumerate(value) if not r.strip()]
    if empty:
        err("responses", f"response {', '.join(empty)} is empty (indices from 0)")
        return None
    if any("\x00" in r for r in value):
        err("responses", "a response contains a NUL character (\\u0000), which the database cannot store")
        return None
    if not k_min <= len(value) <= k_max:
        err("responses", f"expected {k_min} to {k_max} responses (the project's K range), got {len(value)}")
        return None
    seen: dict[str, int] = {}
    for index, text in enumerate(value):
        key = text_hash(text)
        if key in seen:
            err("responses", f"responses {seen[key]} and {index} are the same text (indices from 0)")
            return None
        seen[key] = index
    return value


def _check_ranking(raw: dict, n: int, err) -> CleanRanking | None:
    tiers = raw["ranking"]
    example = "e.g. [[2], [0, 3], [1]] (best first; a tier of several is a tie)"
    if (
        not isinstance(tiers, list)
        or not tiers
        or not all(isinstance(t, list) and t for t in tiers)
        or not all(isinstance(i, int) and not isinstance(i, bool) for t in tiers for i in t)
    ):
        err("ranking", f"expected a list of non-empty lists of response indices, {example}")
        return None
    issues = tier_issues(tiers, range(n))  # the record contract's partition rule (training/rlhf/data.py)

    def items(kind: str) -> str:
        return ", ".join(str(i) for i in sorted({issue.item for issue in issues if issue.kind == kind}))

    if items("unknown"):
        err("ranking", f"index {items('unknown')} out of range ({n} responses, indices 0–{n - 1})")
        return None
    if items("repeated"):
        err("ranking", f"response {items('repeated')} appears more than once")
        return None
    if items("missing"):
        err("ranking", f"response {items('missing')} missing: a ranking must place every response")
        return None

    ratings = raw.get("ratings")
    if ratings is not None:
        valid = isinstance(ratings, list) and len(ratings) == n and all(
            r is None or (isinstance(r, int) and not isinstance(r, bool) and LIKERT_MIN <= r <= LIKERT_MAX)
            for r in ratings
        )
        if not valid:
            err("ratings", f"expected a list of {n} ratings, each null or an integer {LIKERT_MIN}–{LIKERT_MAX}")
    flags = raw.get("flags")
    if flags is not None:
        valid = isinstance(flags, list) and len(flags) == n and all(
            isinstance(f, list) and all(isinstance(x, str) for x in f) for f in flags
        )
        if not valid:
            err("flags", f"expected a list of {n} lists of flag names")
        else:
            unknown = sorted({x for f in flags for x in f} - set(RESPONSE_FLAGS))
            if unknown:
                err("flags", f"unknown flag {', '.join(unknown)} (known: {', '.join(RESPONSE_FLAGS)})")
    all_bad = raw.get("all_bad", False)
    if not isinstance(all_bad, bool):
        err("all_bad", f"expected true or false, got {_type_name(all_bad)}")
    rationale = raw.get("rationale") or ""
    if not isinstance(rationale, str):
        err("rationale", f"expected a string, got {_type_name(rationale)}")
    annotator = raw.get("annotator") or ""
    if not isinstance(annotator, str | int) or isinstance(annotator, bool):
        err("annotator", f"expected a string, got {_type_name(annotator)}")
    return CleanRanking(
        tiers=[sorted(t) for t in tiers],
        ratings=ratings,
        flags=flags,
        all_bad=bool(all_bad),
        rationale=rationale if isinstance(rationale, str) else "",
        annotator=str(annotator)[:100],
    )


# --- The service -----------------------------------------------------------------------------------------


def import_records(
    *,
    project_name: str,
    records: Iterable[tuple[str, dict | RecordError]],
    source: str,
    created_by=None,
    round: int | None = None,  # noqa: A002 - the model field's name
    strict: bool = False,
) -> ImportSummary:
    """Validate and store records in one transaction; raise `ImportFailed` (nothing written) on any error.

    project_name: created with the model defaults when missing. source: shown in Prompt.source and, for
    imported rankings, in Ranking.source_detail (a file name, "api", …). round: the prompts' round; by
    default the project's latest round (1 for a new project). created_by is accepted for symmetry with
    the other services (the models do not record an importer). strict: a prompt repeated with other
    responses is an error instead of being merged into its first copy (see the module docstring).
    """
    project_name = (project_name or "").strip()
    if not project_name:
        raise ImportFailed(["The project name is empty."])
    if round is not None and round < 1:
        raise ImportFailed([f"The round must be 1 or more, got {round}."])
    project, created = Project.objects.get_or_create(name=project_name)
    if round is None:
        round = project.prompts.aggregate(latest=Max("round"))["latest"] or 1
    summary = ImportSummary(project=project.name, project_created=created, source=source, round=round)
    writer = _Writer(project, round, source, summary, strict=strict)
    with writer.staged():  # short write transactions into a hidden project; published at the end, or removed
        try:
            for location, raw in records:
                summary.records += 1
                if isinstance(raw, RecordError):
                    writer.reject([raw])
                    continue
                try:  # the boundary's checks: invalid Unicode, NUL, nesting depth, unstorable numbers
                    check_value(raw)
                except BoundaryError as exc:
                    writer.reject([RecordError(location, exc.message, exc.field)])
                    continue
                clean, errors = validate_record(location, raw, k_min=project.k_min, k_max=project.k_max)
                if errors:
                    writer.reject(errors)
                    continue
                writer.add(clean)
            writer.flush()
        except RecordFileError as exc:
            raise ImportFailed([*summary.errors, str(exc)], summary) from exc
        if summary.records == 0:
            raise ImportFailed(["No records to import."], summary)
        if summary.rejected:
            raise ImportFailed(summary.errors, summary)
    return summary


class _Writer:
    """Buffers validated records and writes them in batches (bulk inserts), each batch in a short transaction of
    its own, into a hidden staging project; `staged` publishes them all at once at the end (one UPDATE moves the
    prompts into the project) or, on any rejection or error, removes them. So a long import never holds the
    write lock that annotators' saves need (SQLite has one writer at a time), and nothing of a failed import
    is ever visible in the project. After the first rejection it only validates: nothing will be published."""

    def __init__(self, project: Project, round: int, source: str, summary: ImportSummary,  # noqa: A002
                 *, strict: bool = False):
        self.project, self.round, self.source, self.summary = project, round, source, summary
        self.strict = strict
        self.ranked: set[str] = set()  # prompts of this import that carry a ranking (their responses are fixed)
        self.late: list[tuple[str, list[str]]] = []  # merged responses for prompts written in an earlier batch
        self.stage: Project | None = None
        self.pending: list[CleanRecord] = []
        # text hash → (location, normalised response keys or None, response ids, prompt id) for this import
        self.seen: dict[str, tuple[str, list[str] | None, list[int], int]] = {}
        self.in_database: set[str] = set()

    def reject(self, errors: list[RecordError]) -> None:
        self.summary.rejected += 1
        room = MAX_REPORTED_ERRORS - len(self.summary.errors)
        self.summary.errors.extend(str(e) for e in errors[: max(room, 0)])
        self.pending.clear()

    def add(self, record: CleanRecord) -> None:
        if self.summary.rejected:
            return
        self.pending.append(record)
        if len(self.pending) >= BATCH_SIZE:
            self.flush()

    @contextmanager
    def staged(self):
        # The stage has the project's settings (the queue's fields of its prompts are computed with them) and no
        # members, so no annotator is offered its prompts; staff see it in the project list while it lasts.
        self.stage = Project.objects.create(
            name=f"{self.project.name[:150]} (import in progress {uuid.uuid4().hex[:8]})",
            description=f"Staging area of an import into {self.project.name!r}; removed when the import ends.",
            k_min=self.project.k_min, k_max=self.project.k_max,
            annotators_per_prompt=self.project.annotators_per_prompt,
            guidelines_version=self.project.guidelines_version,
        )
        try:
            yield
            self._publish()
        except BaseException:
            self._discard()
            raise

    def _publish(self) -> None:
        try:
            with transaction.atomic():
                Prompt.objects.filter(project=self.stage).update(project=self.project)
                self.stage.delete()
        except IntegrityError as exc:  # another import added some of the same prompts meanwhile
            raise ImportFailed(["Another import added some of these prompts to the project meanwhile; nothing "
                                "was imported. Import the file again: the prompts already there are skipped."],
                               self.summary) from exc

    def _discard(self, chunk: int = 1000) -> None:
        """Remove the staged rows in short transactions, then the stage (and the project, if this import
        created it and it is still empty)."""
        ids = list(Prompt.objects.filter(project=self.stage).values_list("pk", flat=True))
        for start in range(0, len(ids), chunk):
            with transaction.atomic():
                Prompt.objects.filter(pk__in=ids[start:start + chunk]).delete()
        Project.objects.filter(pk=self.stage.pk).delete()
        if self.summary.project_created and not self.project.prompts.exists():
            Project.objects.filter(pk=self.project.pk).delete()

    def flush(self) -> None:
        with transaction.atomic():
            self._flush()
        if connection.vendor == "sqlite" and not connection.in_atomic_block:
            time.sleep(SQLITE_PAUSE_AFTER_BATCH_S)

    def _flush(self) -> None:
        if self.summary.rejected or not self.pending:
            self.pending.clear()
            return
        batch, self.pending = self.pending, []
        keys = {r.key for r in batch} - set(self.seen) - self.in_database
        self.in_database |= set(
            Prompt.objects.filter(project=self.project, round=self.round, text_hash__in=keys).values_list(
                "text_hash", flat=True
            )
        )
        new_prompts: list[tuple[CleanRecord, Prompt]] = []
        extra_rankings: list[tuple[CleanRecord, list[int], list[int]]] = []  # (record, index map, ids)
        batch_seen: dict[str, CleanRecord] = {}
        for record in batch:
            key = record.key
            if key in self.in_database:
                self.summary.skipped += 1
                continue
            first = batch_seen.get(key)
            if first is not None or key in self.seen:
                index_map = self._repeat(record, first)
                if index_map is not None:
                    self.ranked.add(key)
                    extra_rankings.append((record, index_map, []))
                continue
            batch_seen[key] = record
            if record.ranking is not None:
                self.ranked.add(key)
            metadata = record.metadata
            prompt = Prompt(
                project=self.stage,
                text=record.prompt,
                text_hash=key,
                external_id=record.external_id,
                metadata=metadata,
                source=self.source[:500],
                round=self.round,
            )
            new_prompts.append((record, prompt))
        if self.summary.rejected:
            return
        created = Prompt.objects.bulk_create([p for _, p in new_prompts])
        responses: list[Response] = []
        for (record, _), prompt in zip(new_prompts, created):
            for text in record.responses or []:
                responses.append(
                    Response(
                        prompt=prompt,
                        text=text,
                        text_hash=text_hash(text),
                        origin=Response.Origin.IMPORTED,
                        round=self.round,
                    )
                )
        late = [(self.seen[key][3], text) for key, texts in self.late for text in texts]
        for prompt_id, text in late:  # merged into a prompt of an earlier batch: after its own responses
            responses.append(Response(prompt_id=prompt_id, text=text, text_hash=text_hash(text),
                                      origin=Response.Origin.IMPORTED, round=self.round))
        responses = Response.objects.bulk_create(responses)
        by_prompt: dict[int, list[int]] = {}
        for response in responses:
            by_prompt.setdefault(response.prompt_id, []).append(response.pk)
        for key, _ in self.late:
            location, keys, ids, prompt_id = self.seen[key]
            ids.extend(by_prompt.pop(prompt_id, []))  # in the order of `keys` (the merge appended them there)
        self.late.clear()
        rankings: list[Ranking] = []
        for (record, _), prompt in zip(new_prompts, created):
            ids = by_prompt.get(prompt.pk, [])
            self.seen[record.key] = (record.location, _response_keys(record.responses), ids, prompt.pk)
            if record.ranking is not None:
                rankings.append(self._ranking(record, prompt.pk, ids))
        for record, index_map, _ in extra_rankings:
            _, _, ids, prompt_id = self.seen[record.key]
            rankings.append(self._ranking(record, prompt_id, [ids[index_map[i]] for i in range(len(index_map))]))
        Ranking.objects.bulk_create(rankings)
        self.summary.imported += len(created)
        self.summary.responses += len(responses)
        self.summary.rankings += len(rankings)

    def _repeat(self, record: CleanRecord, first: CleanRecord | None) -> list[int] | None:
        """A repeat of a prompt earlier in this import (`first`: its copy in this batch, else it was written
        before). Its ranking joins the first copy when the responses are the same texts (in any order): returns
        the index map (this record's index → first copy's index). Without a ranking it is skipped, or its other
        responses are merged into the first copy (not strict); None then."""
        if first is not None:
            first_location, first_keys = first.location, _response_keys(first.responses)
        else:
            first_location, first_keys, _, _ = self.seen[record.key]
        keys = _response_keys(record.responses)
        if record.ranking is None:
            if keys is None or sorted(keys) == sorted(first_keys or []):
                self.summary.skipped += 1
            elif self.strict:
                self.reject([RecordError(record.location, f"the same prompt appears at {first_location} "
                                         "with different responses (strict mode: repeats are not merged)",
                                         "responses")])
            else:
                self._merge_responses(record, first, first_location, first_keys or [], keys)
            return None
        if first_keys is None or sorted(keys) != sorted(first_keys):
            self.reject([RecordError(record.location, f"the same prompt appears at {first_location} with "
                                     "different responses; a repeated prompt may only add another ranking of "
                                     "the same responses", "responses")])
            return None
        return [first_keys.index(k) for k in keys]

    def _merge_responses(self, record: CleanRecord, first: CleanRecord | None, first_location: str,
                         first_keys: list[str], keys: list[str]) -> None:
        if record.key in self.ranked:
            self.reject([RecordError(record.location, f"the same prompt appears at {first_location} with "
                                     "different responses and a ranking; responses can only be merged into a "
                                     "prompt without rankings (a ranking places every response)", "responses")])
            return
        have = set(first_keys)
        new = [(text, key) for text, key in zip(record.responses, keys) if key not in have]
        total = len(first_keys) + len(new)
        if total > self.project.k_max:
            self.reject([RecordError(record.location, f"the same prompt appears at {first_location}; merged, it "
                                     f"would have {total} different responses, more than the project's K max "
                                     f"({self.project.k_max})", "responses")])
            return
        texts = [text for text, _ in new]
        if first is not None:  # still pending: its responses are written with it
            first.responses = [*(first.responses or []), *texts]
        else:
            location, _, ids, prompt_id = self.seen[record.key]
            self.seen[record.key] = (location, [*first_keys, *(key for _, key in new)], ids, prompt_id)
            self.late.append((record.key, texts))
        self.summary.merged += 1
        self.summary.merged_duplicates += len(keys) - len(new)

    def _ranking(self, record: CleanRecord, prompt_id: int, response_ids: list[int]) -> Ranking:
        ranking = record.ranking
        detail = self.source if not ranking.annotator else f"{self.source} · annotator {ranking.annotator}"
        return Ranking(
            prompt_id=prompt_id,
            source=Ranking.Source.IMPORTED,
            source_detail=detail[:500],
            tiers=[sorted(response_ids[i] for i in tier) for tier in ranking.tiers],
            display_order=[],
            ratings={
                str(response_ids[i]): r for i, r in enumerate(ranking.ratings or []) if r is not None
            },
            flags={str(response_ids[i]): sorted(set(f)) for i, f in enumerate(ranking.flags or []) if f},
            rationale=ranking.rationale,
            all_bad=ranking.all_bad,
            guideline_version=self.project.guidelines_version,
        )


def _response_keys(responses: list[str] | None) -> list[str] | None:
    return None if responses is None else [text_hash(r) for r in responses]


# --- Entry points for the command, the upload page and the API ----------------------------------------------


def import_file(
    *,
    path: str | Path,
    project_name: str,
    created_by=None,
    round: int | None = None,  # noqa: A002
    progress: bool = False,
    max_bytes: int | None = None,
    strict: bool = False,
) -> ImportSummary:
    """Import a JSONL / CSV / Parquet file or a `datasets` directory (the `import_prompts` command)."""
    try:
        source = open_path(path, max_bytes=max_bytes)
    except RecordFileError as exc:
        raise ImportFailed([str(exc)]) from exc
    return _import_source(source, project_name=project_name, created_by=created_by, round=round, progress=progress,
                          strict=strict)


def import_upload(
    *, uploaded_file, project_name: str, created_by=None, round: int | None = None, strict: bool = False  # noqa: A002
) -> ImportSummary:
    """Import an uploaded file (the staff upload page). The caller enforces the upload size limit."""
    try:
        source = open_upload(uploaded_file)
    except RecordFileError as exc:
        raise ImportFailed([str(exc)]) from exc
    return _import_source(source, project_name=project_name, created_by=created_by, round=round, progress=False,
                          strict=strict)


def _import_source(source: RecordSource, *, project_name, created_by, round, progress,  # noqa: A002
                   strict: bool = False) -> ImportSummary:
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=source.total, unit=source.unit, unit_scale=source.unit == "B", desc=f"import {source.name}")
    try:
        return import_records(
            project_name=project_name,
            records=source.records(bar.update if bar else None),
            source=source.name,
            created_by=created_by,
            round=round,
            strict=strict,
        )
    finally:
        if bar is not None:
            bar.close()


# --- Helpers ------------------------------------------------------------------------------------------------


def _too_long(limit: int) -> str:
    return (
        f"the record is larger than the {limit:,} byte limit for one record "
        "(WORKBENCH_MAX_IMPORT_RECORD_BYTES)"
    )


def _type_name(value: Any) -> str:
    return {
        dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
        bool: "true/false", type(None): "null",
    }.get(type(value), type(value).__name__)


def _approx_size(value: Any) -> int:
    """Roughly the JSON size of a value, without building the JSON (for the record size guard)."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass")) + 2
    if isinstance(value, dict):
        return sum(_approx_size(k) + _approx_size(v) + 2 for k, v in value.items()) + 2
    if isinstance(value, list | tuple):
        return sum(_approx_size(v) + 1 for v in value) + 2
    return 8


def _jsonable(value: Any) -> Any:
    """Parquet/datasets cell → JSON-friendly value (dates and decimals as strings, NaN as null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
