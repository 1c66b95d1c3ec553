"""Reading K-wise ranking datasets (the data contract in docs/architecture.md) for the reward-model trainer.

`load_ranking_records(path, split=…)` accepts
- a snapshot directory written by `export_rankings` (manifest.json + kwise/ in format datasets, parquet or
  jsonl),
- a `kwise/` directory on its own (train.jsonl / train.parquet / a DatasetDict saved with save_to_disk),
- a single JSONL or Parquet file (a user's own data; it has no splits, so any `split` reads the whole file).

A K-wise record needs `prompt`, `responses` (≥ 2 strings) and `ranking` (tiers of indices, best first, every
index exactly once); `prompt_id`, `annotator`, `source`, `ratings`, `flags`, `all_bad` and `metadata` are
optional. Pairwise rows (`prompt`, `chosen`, `rejected`, TRL's column names) are read as K = 2 rankings.
Every error names the file, the line (JSONL) or row (Parquet/datasets) and the field.

This module is the one record contract of the workbench: the annotate app delegates to it for the tier
rules (`tier_issues`, `tiers_to_ranks`), the ordered pairs (`ordered_pairs`) and the file readers
(`jsonl_rows`, `open_parquet`/`parquet_rows`, `load_datasets_dir`); annotate keeps only its own messages,
limits and database writes.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, BinaryIO

SPLITS = ("train", "test")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file, line/row and field."""


# --- the record rules: tiers and ordered pairs ------------------------------------------------------------
#
# A ranking is a list of tiers, best first; a tier lists items (response indices in files, response ids in
# the database) and a tier of several items is a tie: [[2], [0, 3], [1]] says 2 > 0 = 3 > 1. A ranking of K
# responses must place every one of them exactly once.


@dataclass(frozen=True)
class TierIssue:
    """One way a ranking fails to partition its items: `kind` is "unknown" (an entry that is not one of the
    items), "repeated" (an item placed a second time) or "missing" (an item no tier places; `tier` is None)."""

    kind: str
    item: Any
    tier: int | None = None  # tier position, 0 = best


def tier_issues(tiers: Sequence[Sequence[Any]], items: Sequence[Hashable]) -> list[TierIssue]:
    """Everything that keeps `tiers` from being a partition of `items` (each item exactly once, no other
    entry): unknown and repeated entries in reading order, then the missing items in the order of `items`.
    [] means the ranking is valid. Booleans and floats never match integer items; unhashable entries are
    unknown.

    tier_issues([[2], [0, 3], [1]], range(4)) == []
    tier_issues([[0, 0], [5]], range(3)) == [repeated 0 (tier 0), unknown 5 (tier 1), missing 1, missing 2]
    """
    wanted = {(type(item), item): item for item in items}  # keyed by type too: True == 1 but is no index
    placed: set = set()
    issues: list[TierIssue] = []
    for position, tier in enumerate(tiers):
        for entry in tier:
            key = (type(entry), entry)
            try:
                known = key in wanted
            except TypeError:  # unhashable (a dict or list inside a tier)
                known = False
            if not known:
                issues.append(TierIssue("unknown", entry, position))
            elif key in placed:
                issues.append(TierIssue("repeated", entry, position))
            else:
                placed.add(key)
    issues.extend(TierIssue("missing", item) for key, item in wanted.items() if key not in placed)
    return issues


def tiers_to_ranks(ranking: Sequence[Sequence[int]], k: int) -> list[int]:
    """Tier position of each response (0 = best tier) from tiers of indices, e.g. [[2], [0, 3], [1]], 4 →
    [1, 2, 0, 1]. Every index in [0, k) must appear exactly once (ValueError naming the first problem)."""
    issues = tier_issues(ranking, range(k))
    if issues:
        first = issues[0]
        if first.kind == "unknown":
            raise ValueError(f"response index {first.item} out of range for {k} responses")
        if first.kind == "repeated":
            raise ValueError(f"response index {first.item} appears twice in the ranking")
        raise ValueError(f"response indices {[i.item for i in issues if i.kind == 'missing']} are missing from "
                         "the ranking")
    ranks = [0] * k
    for position, tier in enumerate(ranking):
        for index in tier:
            ranks[index] = position
    return ranks


def ordered_pairs(tiers: Sequence[Sequence[Hashable]]) -> list[tuple[Any, Any, int]]:
    """Every strict preference of a ranking as (winner, loser, tier distance), best pairs first.

    Tied pairs are left out. A full ranking of K items without ties has C(K, 2) = K(K−1)/2 pairs
    (K = 4 → 6, K = 9 → 36); a tie between two items removes exactly one pair. The reward model's loss uses
    the same pairs in vectorised form (rm_loss.preference_mask; tests/rlhf/test_rm_loss checks they agree).
    """
    pairs = []
    for hi, lo in combinations(range(len(tiers)), 2):
        for winner in tiers[hi]:
            for loser in tiers[lo]:
                pairs.append((winner, loser, lo - hi))
    return pairs


@dataclass(frozen=True)
class RankingRecord:
    """One annotator's ranking of one prompt's K responses (tiers of indices into `responses`, best first)."""

    prompt: str
    responses: tuple[str, ...]
    ranking: tuple[tuple[int, ...], ...]
    prompt_id: str = ""
    annotator: str = ""
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    ratings: tuple[int | None, ...] | None = None
    all_bad: bool = False
    origin: str = field(default="", compare=False)  # "file:line" for messages

    @property
    def k(self) -> int:
        return len(self.responses)

    @property
    def ranks(self) -> list[int]:
        """Tier position of each response (0 = best)."""
        return tiers_to_ranks(self.ranking, self.k)

    @property
    def group_key(self) -> str:
        """What keeps a prompt's rankings on one side of a train/test split: prompt_id, else the prompt text."""
        return self.prompt_id or "text:" + self.prompt

    def ordered_pairs(self) -> list[tuple[int, int]]:
        """(winner, loser) index pairs with a strict preference, sorted; tied pairs are not included."""
        return sorted((winner, loser) for winner, loser, _ in ordered_pairs(self.ranking))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt_id": self.prompt_id,
            "prompt": self.prompt,
            "responses": list(self.responses),
            "ranking": [list(t) for t in self.ranking],
            "annotator": self.annotator,
            "source": self.source,
            "metadata": self.metadata,
            "all_bad": self.all_bad,
        }
        if self.ratings is not None:
            out["ratings"] = list(self.ratings)
        return out


# --- validation --------------------------------------------------------------------------------------------


def _fail(where: str, fieldname: str, message: str) -> DatasetError:
    return DatasetError(f"{where}: field {fieldname!r}: {message}")


def _as_list(value: Any) -> Any:
    """numpy arrays (Parquet through some readers) → lists; everything else unchanged."""
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        return value.tolist()
    return value


def _maybe_json(value: Any) -> Any:
    """Columns a writer stored as JSON text (metadata, ranking) are decoded."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def record_from_dict(row: dict[str, Any], *, where: str) -> RankingRecord:
    """Validate one row (K-wise or pairwise) and build a RankingRecord; `where` is "file:line" for errors."""
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}")
    prompt = row.get("prompt")
    if not isinstance(prompt, str):
        raise _fail(where, "prompt", "required, a string" + ("" if prompt is None else f", got {type(prompt).__name__}"))

    if "responses" not in row and "chosen" in row and "rejected" in row:
        responses: Any = [row["chosen"], row["rejected"]]
        ranking: Any = [[0], [1]]
        names = ("chosen", "rejected")
        for name, value in zip(names, responses):
            if not isinstance(value, str):
                raise _fail(where, name, f"must be a string, got {type(value).__name__}")
    else:
        responses = _as_list(_maybe_json(row.get("responses")))
        if responses is None:
            raise _fail(where, "responses", "required (a list of ≥ 2 response strings)")
        if not isinstance(responses, list) or len(responses) < 2:
            raise _fail(where, "responses", "must be a list of at least 2 strings")
        for i, text in enumerate(responses):
            if not isinstance(text, str):
                raise _fail(where, f"responses[{i}]", f"must be a string, got {type(text).__name__}")
        ranking = _as_list(_maybe_json(row.get("ranking")))
        if ranking is None:
            raise _fail(where, "ranking", "required (tiers of response indices, best first)")
        if not isinstance(ranking, list) or not ranking:
            raise _fail(where, "ranking", "must be a non-empty list of tiers, e.g. [[2], [0, 3], [1]]")
        tiers = []
        for t, tier in enumerate(ranking):
            tier = _as_list(tier)
            if isinstance(tier, int) and not isinstance(tier, bool):
                tier = [tier]  # a flat ranking [2, 0, 3, 1] is read as one response per tier
            if not isinstance(tier, list) or not tier:
                raise _fail(where, f"ranking[{t}]", "must be a non-empty list of response indices")
            for index in tier:
                if isinstance(index, bool) or not isinstance(index, int):
                    raise _fail(where, f"ranking[{t}]", f"indices must be integers, got {index!r}")
            tiers.append(tier)
        ranking = tiers
        try:
            tiers_to_ranks(ranking, len(responses))
        except ValueError as exc:
            raise _fail(where, "ranking", str(exc)) from None

    metadata = _as_list(_maybe_json(row.get("metadata")))
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise _fail(where, "metadata", f"must be an object, got {type(metadata).__name__}")

    ratings = _as_list(row.get("ratings"))
    if ratings is not None:
        if not isinstance(ratings, list) or len(ratings) != len(responses):
            raise _fail(where, "ratings", f"must be a list with one entry (or null) per response ({len(responses)})")
        for value in ratings:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise _fail(where, "ratings", f"entries must be numbers or null, got {value!r}")

    def text_field(name: str) -> str:
        value = row.get(name)
        if value is None:
            return ""
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise _fail(where, name, f"must be a string, got {type(value).__name__}")
        return value

    return RankingRecord(
        prompt=prompt,
        responses=tuple(responses),
        ranking=tuple(tuple(int(i) for i in tier) for tier in ranking),
        prompt_id=text_field("prompt_id"),
        annotator=text_field("annotator"),
        source=text_field("source"),
        metadata=metadata,
        ratings=None if ratings is None else tuple(ratings),
        all_bad=bool(row.get("all_bad") or False),
        origin=where,
    )


# --- readers: rows out of JSONL, Parquet and `datasets` directories ----------------------------------------
#
# The row readers below are shared: this module's record loaders raise at the first bad row, annotate's
# importer (annotate/services/importing.py) reports every bad row with its own limits and messages.

UTF8_BOM = b"\xef\xbb\xbf"
DATASETS_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")


@dataclass(frozen=True)
class RowProblem:
    """A JSONL line a reader could not turn into a value: `kind` "too_long" (`position` = the byte limit),
    "encoding" (`reason` from the decoder, `position` = the first bad byte, from 1) or "json" (`reason` from
    the decoder, `position` = the column; 0 for "nested too deeply")."""

    kind: str
    reason: str = ""
    position: int = 0


def jsonl_rows(
    stream: BinaryIO, *, max_line_bytes: int | None = None, advance: Callable[[int], None] | None = None
) -> Iterator[tuple[int, Any]]:
    """(line number, the line's JSON value or a RowProblem) for every non-blank line of a binary stream.

    Line numbers count every line (blank ones too), from 1. A UTF-8 byte-order mark on line 1 is skipped.
    A line longer than `max_line_bytes` is not held in memory: the rest of it is read and dropped in 1 MiB
    chunks and it yields RowProblem("too_long"). `advance(n)` is told every n bytes read (a progress bar).
    """
    number = 0
    while True:
        line = stream.readline(-1 if max_line_bytes is None else max_line_bytes + 2)  # room for \r\n
        if not line:
            return
        number += 1
        if advance:
            advance(len(line))
        content = line.rstrip(b"\r\n")
        if max_line_bytes is not None and len(content) > max_line_bytes:
            if not line.endswith(b"\n"):
                while True:
                    chunk = stream.readline(1024 * 1024)
                    if advance:
                        advance(len(chunk))
                    if not chunk or chunk.endswith(b"\n"):
                        break
            yield number, RowProblem("too_long", position=max_line_bytes)
            continue
        if number == 1 and content.startswith(UTF8_BOM):
            content = content[len(UTF8_BOM):]
        if not content.strip():
            continue
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, RowProblem("encoding", exc.reason, exc.start + 1)
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield number, RowProblem("json", exc.msg, exc.colno)
            continue
        except RecursionError:  # nesting deeper than the interpreter's stack
            yield number, RowProblem("json", "nested too deeply")
            continue
        yield number, value


def open_parquet(source: str | Path | BinaryIO, *, name: str | Path):
    """A pyarrow ParquetFile for a path or a binary stream; DatasetError naming `name` when it is not one."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(source)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError subclasses for non-Parquet data
        raise DatasetError(f"{name}: not a readable Parquet file ({exc})") from exc


def parquet_rows(parquet, *, batch_size: int = 256) -> Iterator[dict[str, Any]]:
    """The rows of a ParquetFile as dicts, read in batches (a large file is never held whole)."""
    for batch in parquet.iter_batches(batch_size=batch_size):
        yield from batch.to_pylist()


def is_datasets_dir(path: str | Path) -> bool:
    """Whether `path` is a directory written by datasets' save_to_disk (a Dataset or a DatasetDict)."""
    return any((Path(path) / marker).exists() for marker in DATASETS_MARKERS)


def load_datasets_dir(path: str | Path):
    """datasets.load_from_disk(path): a Dataset or a DatasetDict; DatasetError (caused by the loader's
    exception) when it cannot be loaded."""
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable datasets directory ({exc})") from exc


def dataset_splits(loaded) -> list[tuple[str | None, Any]]:
    """(split name, Dataset) for each split of a DatasetDict, or [(None, dataset)] for a plain Dataset."""
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        return list(loaded.items())
    return [(None, loaded)]


def _iter_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open("rb") as handle:
        for number, value in jsonl_rows(handle):
            where = f"{path}:{number}"
            if isinstance(value, RowProblem):
                if value.kind == "encoding":
                    raise DatasetError(f"{where}: not valid UTF-8 (byte {value.position})")
                column = f" at column {value.position}" if value.position else ""
                raise DatasetError(f"{where}: invalid JSON ({value.reason}{column})")
            yield where, value


def _iter_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for number, row in enumerate(parquet_rows(open_parquet(path, name=path))):
        yield f"{path} row {number}", row


def _iter_datasets(path: Path, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    splits = dataset_splits(load_datasets_dir(path))
    if splits[0][0] is not None:
        named = dict(splits)
        if split not in named:
            raise DatasetError(f"{path}: no split {split!r} (has {sorted(named)})")
        dataset, location = named[split], f"{path}[{split}]"
    else:
        dataset, location = splits[0][1], str(path)
    for number, row in enumerate(dataset):
        yield f"{location} row {number}", row


def _read_file(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _iter_jsonl(path)
    if suffix in PARQUET_SUFFIXES:
        return _iter_parquet(path)
    raise DatasetError(f"{path}: unknown file type {suffix!r} (expected .jsonl or .parquet)")


def _split_source(directory: Path, split: str) -> tuple[str, Path] | None:
    """(kind, path) of `split` inside a kwise directory, or None when that split is absent."""
    if is_datasets_dir(directory):
        dict_file = directory / "dataset_dict.json"
        if dict_file.exists():
            splits = json.loads(dict_file.read_text(encoding="utf-8")).get("splits", [])
            return ("datasets", directory) if split in splits else None
        return ("datasets", directory)
    for suffix in JSONL_SUFFIXES + PARQUET_SUFFIXES:
        candidate = directory / f"{split}{suffix}"
        if candidate.exists():
            return ("file", candidate)
    return None


def resolve_kwise_dir(path: str | Path) -> Path:
    """The directory holding the K-wise splits: `path/kwise` for a snapshot, else `path` itself."""
    directory = Path(path)
    if (directory / "kwise").is_dir():
        return directory / "kwise"
    return directory


def available_splits(path: str | Path) -> list[str]:
    """The splits a dataset path offers; a single file counts as one unnamed split ["all"]."""
    source = Path(path)
    if not source.exists():
        raise DatasetError(f"{source}: no such file or directory")
    if source.is_file():
        return ["all"]
    directory = resolve_kwise_dir(source)
    found = [split for split in SPLITS if _split_source(directory, split) is not None]
    if not found and is_datasets_dir(directory):
        return ["all"]
    return found


def iter_ranking_records(path: str | Path, *, split: str = "train") -> Iterator[RankingRecord]:
    """Like `load_ranking_records`, one record at a time."""
    source = Path(path)
    if not source.exists():
        raise DatasetError(f"{source}: no such file or directory")
    if source.is_file():
        rows: Iterable[tuple[str, dict[str, Any]]] = _read_file(source)
    else:
        directory = resolve_kwise_dir(source)
        found = _split_source(directory, split)
        if found is None:
            offered = available_splits(source)
            raise DatasetError(
                f"{directory}: no {split!r} split (found: {', '.join(offered) or 'no ranking data'}; expected "
                f"{split}.jsonl, {split}.parquet or a DatasetDict with a {split!r} split)"
            )
        kind, location = found
        rows = _iter_datasets(location, split) if kind == "datasets" else _read_file(location)
    for where, row in rows:
        yield record_from_dict(row, where=where)


def load_ranking_records(path: str | Path, *, split: str = "train") -> list[RankingRecord]:
    """All K-wise ranking records of one split of a snapshot directory, kwise/ directory or single file.

    A single JSONL/Parquet file has no splits and is returned whole for any `split`.
    Raises DatasetError naming the file, line/row and field of the first bad record.
    """
    return list(iter_ranking_records(path, split=split))


def read_manifest(path: str | Path) -> dict[str, Any] | None:
    """The snapshot's manifest.json (found beside kwise/ or one level up), or None for plain files."""
    source = Path(path)
    candidates = [source / "manifest.json", source.parent / "manifest.json"] if source.is_dir() else [
        source.parent / "manifest.json"
    ]
    for candidate in candidates:
        if candidate.exists():
            try:
                return json.loads(candidate.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{candidate}: invalid JSON ({exc.msg})") from None
    return None


def snapshot_prompt_format(path: str | Path):
    """The prompt format (`chat_format.PromptFormat`) a snapshot's manifest records — its project's when it was
    exported — or None for data without one (a user's own file, an older snapshot)."""
    from training.rlhf.chat_format import PromptFormat, PromptFormatError

    recorded = (read_manifest(path) or {}).get("prompt_format")
    if not isinstance(recorded, dict):
        return None
    try:
        return PromptFormat.from_dict(recorded)
    except PromptFormatError:
        return None


def dataset_fingerprint(path: str | Path) -> str:
    """The snapshot's content hash from its manifest; for a user's own data a sha256 of the files' bytes."""
    manifest = read_manifest(path)
    if manifest:
        for key in ("content_hash", "hash", "sha256"):
            if manifest.get(key):
                return str(manifest[key])
    source = Path(path)
    files = [source] if source.is_file() else sorted(p for p in resolve_kwise_dir(source).rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(source) if source.is_dir() else file.name).encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def split_by_prompt(
    records: list[RankingRecord], *, test_fraction: float, seed: int
) -> tuple[list[RankingRecord], list[RankingRecord]]:
    """Hold out a fraction of the *prompts* (all their rankings go to one side), deterministically.

    At least one prompt lands on each side when there are two or more prompts.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    keys = sorted({r.group_key for r in records})
    random.Random(seed).shuffle(keys)
    n_test = round(len(keys) * test_fraction)
    if len(keys) >= 2:
        n_test = min(max(1, n_test), len(keys) - 1)
    test_keys = set(keys[:n_test])
    train = [r for r in records if r.group_key not in test_keys]
    test = [r for r in records if r.group_key in test_keys]
    return train, test


def load_calibration_texts(path: str | Path) -> list[tuple[str, str]]:
    """(prompt, response) pairs from a calibration file (JSONL/Parquet): rows with `prompt` and `response`
    (demonstrations, reference samples) or ranking records (`responses`: every response is used), or
    `chosen`/`rejected` rows (both are used)."""
    source = Path(path)
    if not source.is_file():
        raise DatasetError(f"{source}: calibration file not found")
    pairs: list[tuple[str, str]] = []
    for where, row in _read_file(source):
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}")
        prompt = row.get("prompt")
        if not isinstance(prompt, str):
            raise _fail(where, "prompt", "required, a string")
        if "response" in row:
            if not isinstance(row["response"], str):
                raise _fail(where, "response", "must be a string")
            pairs.append((prompt, row["response"]))
            continue
        texts = _as_list(_maybe_json(row.get("responses")))
        if texts is None and "chosen" in row:
            texts = [row.get("chosen"), row.get("rejected")]
        if not isinstance(texts, list) or not texts:
            raise _fail(where, "response", "required: a `response` string (or a `responses` list)")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise _fail(where, f"responses[{i}]", "must be a string")
            pairs.append((prompt, text))
    if not pairs:
        raise DatasetError(f"{source}: the calibration file has no rows")
    return pairs


def unique_responses(records: Iterable[RankingRecord]) -> list[tuple[str, str]]:
    """Every distinct (prompt, response) of the records, in first-seen order."""
    seen: dict[tuple[str, str], None] = {}
    for record in records:
        for response in record.responses:
            seen.setdefault((record.prompt, response), None)
    return list(seen)


def write_jsonl(records: Iterable[RankingRecord | dict[str, Any]], path: str | Path) -> Path:
    """Write records (or plain dicts) one JSON object per line; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as handle:
        for record in records:
            row = record.to_dict() if isinstance(record, RankingRecord) else record
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return target
