"""Export a project's rankings as a reward-model dataset snapshot (the contract in docs/architecture.md).

    SNAPSHOT/manifest.json          counts, parameters, content hash, created_at, format, prompt_format
                                    (the project's: kind plain | chat and system prompt, as a model reads it)
    SNAPSHOT/kwise/   SNAPSHOT/pairwise/
        "datasets": a DatasetDict saved with save_to_disk (splits train, test)
        "parquet":  train.parquet, test.parquet
        "jsonl":    train.jsonl, test.jsonl

K-wise record: prompt_id, prompt, responses, ranking (tiers of indices into responses, best first),
annotator (pseudonymous, or "consensus"), ratings, flags, all_bad, source, metadata (the prompt's).
Pairwise record (TRL's column names): prompt, chosen, rejected, margin (tier distance), annotator, prompt_id;
one per strictly ordered pair, ties left out (a full K=4 ranking gives 6 pairs, K=9 gives 36).

In the datasets and parquet formats `metadata` is a `datasets.Json()` column: `datasets` (load_from_disk,
Dataset.from_parquet) gives back a dict; plain pyarrow/pandas see its JSON text.

The split is by prompt text: a prompt lands in test when a seeded hash of its normalised text falls below
test_fraction, so it lands on the same side in every export with that seed, whatever else the project holds,
and never on both sides. The content hash is sha256 over the canonical JSON lines of the records (sorted
keys, section headers), independent of the file format and of created_at: exporting the same data with the
same parameters twice gives the same hash.

`export_snapshot` writes into a temporary directory beside the target and renames it into place, then
records a DatasetSnapshot row; nothing half-written is ever visible at the target path.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.crypto import salted_hmac

from annotate.agreement import consensus_ranking, ordered_pairs
from annotate.models import DatasetSnapshot, Project, Ranking, Response
from webapp.boundary import scrub

FORMATS = ("datasets", "parquet", "jsonl")
GROUPS = ("per-annotator", "consensus")
SPLITS = ("train", "test")
KINDS = ("kwise", "pairwise")
SCHEMA_VERSION = 1
KWISE_COLUMNS = (
    "prompt_id", "prompt", "responses", "ranking", "annotator", "ratings", "flags", "all_bad", "source", "metadata",
)
PAIRWISE_COLUMNS = ("prompt_id", "prompt", "chosen", "rejected", "margin", "annotator")


class ExportError(ValueError):
    """Bad export parameters, nothing to export, or a target that already exists."""


@dataclass
class ExportParams:
    format: str = "datasets"
    test_fraction: float = 0.1
    seed: int = 0
    drop_flagged: bool = False
    drop_all_bad: bool = False
    group: str = "per-annotator"
    rounds: list[int] | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if not 0 <= self.test_fraction < 1:
            raise ExportError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.group not in GROUPS:
            raise ExportError(f"group must be one of {', '.join(GROUPS)}, got {self.group!r}")
        if self.rounds is not None:
            self.rounds = sorted(set(self.rounds))
            if not self.rounds or any(r < 1 for r in self.rounds):
                raise ExportError(f"rounds must be positive integers, got {self.rounds}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
            "drop_flagged": self.drop_flagged,
            "drop_all_bad": self.drop_all_bad,
            "group": self.group,
            "rounds": self.rounds,
        }


@dataclass
class ExportRecords:
    kwise: dict[str, list[dict]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    pairwise: dict[str, list[dict]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    counts: dict[str, Any] = field(default_factory=dict)

    def sections(self) -> Iterable[tuple[str, str, list[dict]]]:
        for kind in KINDS:
            for split in SPLITS:
                yield kind, split, getattr(self, kind)[split]


# --- Records ---------------------------------------------------------------------------------------------


def annotator_pseudonym(key: str) -> str:
    """A stable pseudonymous id: HMAC-SHA256 of the key with the site's SECRET_KEY (12 hex digits)."""
    return salted_hmac("annotate.export.annotator", key, algorithm="sha256").hexdigest()[:12]


def annotator_key(ranking: Ranking) -> str:
    """Who made a ranking, for grouping: a user, or for imported rankings the file/annotator it came from."""
    if ranking.annotator_id is not None:
        return f"user:{ranking.annotator_id}"
    if ranking.source == Ranking.Source.IMPORTED:
        return f"imported:{ranking.source_detail}"
    return f"ranking:{ranking.pk}"


def split_of(text_hash: str, *, seed: int, test_fraction: float) -> tuple[str, float]:
    """("train" | "test", u): u = a uniform number in [0, 1) from sha256(seed, prompt text hash)."""
    digest = hashlib.sha256(f"split:{seed}:{text_hash}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return ("test" if u < test_fraction else "train"), u


def assign_splits(text_hashes: Iterable[str], *, seed: int, test_fraction: float) -> dict[str, str]:
    """Prompt text hash → split. Each prompt by its own seeded hash (`split_of`); when that leaves the test
    side empty although test_fraction > 0, the prompt with the smallest u goes to test, and when it leaves
    train empty the one with the largest u goes to train (tiny projects), so both sides are used."""
    draws = {h: split_of(h, seed=seed, test_fraction=test_fraction) for h in set(text_hashes)}
    splits = {h: side for h, (side, _) in draws.items()}
    if len(draws) >= 2 and test_fraction > 0:
        if "test" not in splits.values():
            splits[min(draws, key=lambda h: draws[h][1])] = "test"
        if "train" not in splits.values():
            splits[max(draws, key=lambda h: draws[h][1])] = "train"
    return splits


def build_records(*, project: Project, params: ExportParams) -> ExportRecords:
    """Gather the project's rankings and turn them into split K-wise and pairwise records."""
    rankings = Ranking.objects.filter(prompt__project=project).select_related("prompt").order_by("prompt_id", "pk")
    if params.rounds is not None:
        rankings = rankings.filter(prompt__round__in=params.rounds)
    by_prompt: dict[int, list[Ranking]] = defaultdict(list)
    prompts = {}
    counts = defaultdict(int)
    for ranking in rankings.iterator(chunk_size=2000):
        counts["rankings_total"] += 1
        if params.drop_all_bad and ranking.all_bad:
            counts["dropped_all_bad"] += 1
            continue
        if params.drop_flagged and any(flags for flags in (ranking.flags or {}).values()):
            counts["dropped_flagged"] += 1
            continue
        by_prompt[ranking.prompt_id].append(ranking)
        prompts[ranking.prompt_id] = ranking.prompt

    texts: dict[int, str] = {}
    prompt_ids = list(by_prompt)
    for start in range(0, len(prompt_ids), 500):
        texts.update(
            Response.objects.filter(prompt_id__in=prompt_ids[start:start + 500]).values_list("pk", "text")
        )

    kwise: list[tuple[str, dict]] = []  # (prompt text hash, record)
    annotators: set[str] = set()
    for prompt_id, group in by_prompt.items():
        prompt = prompts[prompt_id]
        valid = []
        for ranking in group:
            ids = [rid for tier in ranking.tiers for rid in tier]
            if len(ids) < 2 or len(set(ids)) != len(ids) or any(rid not in texts for rid in ids):
                counts["dropped_invalid"] += 1
                continue
            valid.append(ranking)
        if not valid:
            continue
        if params.group == "consensus":
            kwise.append((prompt.text_hash, _consensus_record(prompt, valid, texts)))
        else:
            for ranking in valid:
                record = _ranking_record(prompt, ranking, texts)
                annotators.add(record["annotator"])
                kwise.append((prompt.text_hash, record))

    splits = assign_splits((h for h, _ in kwise), seed=params.seed, test_fraction=params.test_fraction)
    out = ExportRecords()
    prompt_hashes = {s: set() for s in SPLITS}
    for key, record in kwise:
        split = splits[key]
        prompt_hashes[split].add(key)
        out.kwise[split].append(record)
        n = len(record["responses"])
        pairs = ordered_pairs(record["ranking"])
        counts["tied_pairs_excluded"] += n * (n - 1) // 2 - len(pairs)
        for winner, loser, margin in pairs:
            out.pairwise[split].append(
                {
                    "prompt_id": record["prompt_id"],
                    "prompt": record["prompt"],
                    "chosen": record["responses"][winner],
                    "rejected": record["responses"][loser],
                    "margin": margin,
                    "annotator": record["annotator"],
                }
            )
    out.counts = {
        "prompts": {s: len(prompt_hashes[s]) for s in SPLITS},
        "kwise": {s: len(out.kwise[s]) for s in SPLITS},
        "pairwise": {s: len(out.pairwise[s]) for s in SPLITS},
        "annotators": len(annotators) if params.group == "per-annotator" else None,
        "rankings_total": counts["rankings_total"],
        "dropped_flagged": counts["dropped_flagged"],
        "dropped_all_bad": counts["dropped_all_bad"],
        "dropped_invalid": counts["dropped_invalid"],
        "tied_pairs_excluded": counts["tied_pairs_excluded"],
    }
    return out


def _ranking_record(prompt, ranking: Ranking, texts: dict[int, str]) -> dict:
    ids = sorted(rid for tier in ranking.tiers for rid in tier)
    index = {rid: i for i, rid in enumerate(ids)}
    ratings = ranking.ratings or {}
    flags = ranking.flags or {}
    return {
        "prompt_id": str(prompt.pk),
        "prompt": prompt.text,
        "responses": [texts[rid] for rid in ids],
        "ranking": [sorted(index[rid] for rid in tier) for tier in ranking.tiers],
        "annotator": annotator_pseudonym(annotator_key(ranking)),
        "ratings": [_rating(ratings.get(str(rid))) for rid in ids],
        "flags": [sorted(flags.get(str(rid)) or []) for rid in ids],
        "all_bad": bool(ranking.all_bad),
        "source": ranking.source,
        "metadata": scrub(prompt.metadata or {}),
    }


def _consensus_record(prompt, rankings: list[Ranking], texts: dict[int, str]) -> dict:
    """One record per prompt: Borda consensus tiers (`consensus_ranking`); per response the median rating
    (rounded half up), the flags at least half of the annotators raised, and all_bad by majority."""
    tiers = consensus_ranking([r.tiers for r in rankings])
    ids = sorted(rid for tier in tiers for rid in tier)
    index = {rid: i for i, rid in enumerate(ids)}
    ratings, flags = [], []
    for rid in ids:
        given = [v for r in rankings if (v := _rating((r.ratings or {}).get(str(rid)))) is not None]
        ratings.append(math.floor(median(given) + 0.5) if given else None)
        votes: dict[str, int] = defaultdict(int)
        for r in rankings:
            for flag in set((r.flags or {}).get(str(rid)) or []):
                votes[flag] += 1
        flags.append(sorted(f for f, n in votes.items() if 2 * n >= len(rankings)))
    return {
        "prompt_id": str(prompt.pk),
        "prompt": prompt.text,
        "responses": [texts[rid] for rid in ids],
        "ranking": [sorted(index[rid] for rid in tier) for tier in tiers],
        "annotator": "consensus",
        "ratings": ratings,
        "flags": flags,
        "all_bad": 2 * sum(r.all_bad for r in rankings) > len(rankings),
        "source": "consensus",
        "metadata": scrub(prompt.metadata or {}),
    }


def _rating(value) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def content_hash(records: ExportRecords) -> str:
    """sha256 over "# kind/split" headers and each record as canonical JSON (sorted keys, no spaces)."""
    digest = hashlib.sha256()
    for kind, split, rows in records.sections():
        digest.update(f"# {kind}/{split}\n".encode())
        for row in rows:
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
            digest.update(b"\n")
    return digest.hexdigest()


# --- Files ---------------------------------------------------------------------------------------------


def _features(kind: str):
    from datasets import Features, Json, List, Value

    if kind == "kwise":
        return Features(
            {
                "prompt_id": Value("string"),
                "prompt": Value("string"),
                "responses": List(Value("string")),
                "ranking": List(List(Value("int64"))),
                "annotator": Value("string"),
                "ratings": List(Value("int64")),
                "flags": List(List(Value("string"))),
                "all_bad": Value("bool"),
                "source": Value("string"),
                "metadata": Json(),
            }
        )
    return Features(
        {
            "prompt_id": Value("string"),
            "prompt": Value("string"),
            "chosen": Value("string"),
            "rejected": Value("string"),
            "margin": Value("int64"),
            "annotator": Value("string"),
        }
    )


def _dataset(kind: str, rows: list[dict]):
    from datasets import Dataset

    features = _features(kind)
    return Dataset.from_dict({name: [row[name] for row in rows] for name in features}, features=features)


def write_records(records: ExportRecords, directory: Path, fmt: str) -> dict[str, list[str]]:
    """Write kwise/ and pairwise/ under `directory` in the given format; returns the files written."""
    import datasets

    files: dict[str, list[str]] = {}
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        for kind in KINDS:
            target = directory / kind
            target.mkdir(parents=True)
            splits = getattr(records, kind)
            if fmt == "datasets":
                parts = {split: _dataset(kind, splits[split]) for split in SPLITS}
                shards = {split: max(1, math.ceil(d.data.nbytes / 400e6)) for split, d in parts.items()}
                datasets.DatasetDict(parts).save_to_disk(str(target), num_shards=shards)
            elif fmt == "parquet":
                for split in SPLITS:
                    _dataset(kind, splits[split]).to_parquet(str(target / f"{split}.parquet"))
            else:
                for split in SPLITS:
                    with (target / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
                        for row in splits[split]:
                            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            files[kind] = sorted(str(p.relative_to(directory)) for p in target.rglob("*") if p.is_file())
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    return files


# --- The service ---------------------------------------------------------------------------------------


def export_snapshot(
    *,
    project: Project,
    out_dir: str | Path,
    format: str = "datasets",  # noqa: A002 - the option's name
    test_fraction: float = 0.1,
    seed: int = 0,
    drop_flagged: bool = False,
    drop_all_bad: bool = False,
    group: str = "per-annotator",
    rounds: list[int] | None = None,
    created_by=None,
    overwrite: bool = False,
) -> DatasetSnapshot:
    """Write the project's rankings as a snapshot directory at out_dir and record it as a DatasetSnapshot.

    out_dir must not exist (or be an empty directory) unless overwrite=True, in which case the old snapshot
    is replaced only once the new one is complete. Raises ExportError for bad parameters or when no ranking
    is left to export.
    """
    params = ExportParams(
        format=format, test_fraction=test_fraction, seed=seed, drop_flagged=drop_flagged,
        drop_all_bad=drop_all_bad, group=group, rounds=list(rounds) if rounds is not None else None,
    )
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists; choose a new directory or overwrite it")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory")

    records = build_records(project=project, params=params)
    if not any(records.kwise[s] for s in SPLITS):
        raise ExportError(
            f"Project '{project.name}' has no rankings to export"
            + (" with these filters" if params.rounds or params.drop_flagged or params.drop_all_bad else "")
            + f" ({records.counts['rankings_total']} rankings in scope)."
        )
    digest = content_hash(records)
    created_at = timezone.now()
    # How the models trained on this snapshot read its prompts (the launch forms start from it).
    chat = project.prompt_format == Project.PromptFormat.CHAT
    prompt_format = {"kind": project.prompt_format, "system_prompt": project.system_prompt if chat else ""}

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        files = write_records(records, staging, params.format)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "format": params.format,
            "created_at": created_at.isoformat(),
            "content_hash": digest,
            "content_hash_method": "sha256 over canonical JSON lines of kwise/train, kwise/test, "
            "pairwise/train, pairwise/test (created_at and file format excluded)",
            "project": {"id": project.pk, "name": project.name},
            "params": params.as_dict(),
            "prompt_format": prompt_format,
            "counts": records.counts,
            "columns": {"kwise": list(KWISE_COLUMNS), "pairwise": list(PAIRWISE_COLUMNS)},
            "files": files,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        with transaction.atomic():
            snapshot = DatasetSnapshot.objects.create(
                project=project,
                path=str(out),
                format=params.format,
                params={**params.as_dict(), "prompt_format": prompt_format},
                counts=records.counts,
                content_hash=digest,
                created_by=created_by if getattr(created_by, "pk", None) else None,
            )
            _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return snapshot


def _move_into_place(staging: Path, out: Path) -> None:
    """rename(2) the finished staging directory onto out (same filesystem: atomic). An existing snapshot
    is first renamed aside and deleted only after the new one is in place."""
    old = None
    if out.exists() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / "snapshot")
    elif out.exists():
        out.rmdir()
    try:
        os.rename(staging, out)
    except BaseException:
        if old is not None:
            os.rename(old / "snapshot", out)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def snapshot_dir_for(*, project: Project, name: str) -> Path:
    """Where the browser and API put a named snapshot: WORKBENCH_DATA_ROOT/snapshots/<project id>-<name>.

    name must be a plain slug (letters, digits, '-', '_', '.'), so the result stays inside the data root.
    """
    cleaned = name.strip()
    if not cleaned or not all(c.isalnum() or c in "-_." for c in cleaned) or cleaned.startswith("."):
        raise ExportError("The snapshot name may only contain letters, digits, '-', '_' and '.'")
    root = Path(settings.WORKBENCH_DATA_ROOT).resolve()
    path = (root / "snapshots" / f"{project.pk}-{cleaned}").resolve()
    if root not in path.parents:
        raise ExportError("The snapshot path must stay inside WORKBENCH_DATA_ROOT")
    return path


def _write_jsonl_atomically(lines: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        staging.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def export_prompts(*, project: Project, path: str | Path) -> tuple[Path, int]:
    """The project's prompts as the prompt file PPO reads: one `{"id", "prompt", "metadata"}` per line, the
    distinct texts of every round (first occurrence, in id order), written atomically. Returns (path, count);
    ExportError when the project has no prompts."""
    out = Path(path).expanduser().resolve()
    seen: set[str] = set()
    lines = []
    for prompt in project.prompts.order_by("pk").iterator(chunk_size=2000):
        if prompt.text_hash in seen:
            continue
        seen.add(prompt.text_hash)
        # scrub: metadata stored before the boundary checks may hold lone surrogates, which UTF-8 cannot write
        record = {"id": prompt.external_id or str(prompt.pk), "prompt": prompt.text,
                  "metadata": scrub(prompt.metadata)}
        lines.append(json.dumps(record, ensure_ascii=False))
    if not lines:
        raise ExportError(f"Project {project.name!r} has no prompts.")
    _write_jsonl_atomically(lines, out)
    return out, len(lines)


@dataclass
class RankingsFile:
    """A K-wise JSONL file of rankings (the snapshot's record format) and how many records it holds."""

    path: Path
    rankings: int


def export_rankings_since(*, project: Project, created_after, path: str | Path) -> RankingsFile:
    """Every ranking of `project` created after `created_after`, one K-wise record each (as in a snapshot's
    kwise split: per annotator, ties kept), to a JSONL file written atomically — what a reward model that was
    trained on the data exported at `created_after` has not seen. Each record's metadata also carries its
    prompt's `round`, so the evaluation can break the figures down by round."""
    out = Path(path).expanduser().resolve()
    rankings = list(Ranking.objects.filter(prompt__project=project, created_at__gt=created_after)
                    .select_related("prompt").order_by("prompt_id", "pk"))
    texts: dict[int, str] = {}
    prompt_ids = sorted({r.prompt_id for r in rankings})
    for start in range(0, len(prompt_ids), 500):
        texts.update(Response.objects.filter(prompt_id__in=prompt_ids[start:start + 500]).values_list("pk", "text"))
    lines = []
    for ranking in rankings:
        if any(rid not in texts for tier in ranking.tiers for rid in tier):
            continue  # a response was deleted since; the ranking cannot be scored whole
        record = _ranking_record(ranking.prompt, ranking, texts)
        record["metadata"] = {**record["metadata"], "round": ranking.prompt.round}
        lines.append(json.dumps(record, ensure_ascii=False))
    _write_jsonl_atomically(lines, out)
    return RankingsFile(path=out, rankings=len(lines))
