"""Export a project's accepted demonstrations as an SFT snapshot (the SFT record contract in
docs/architecture.md; `training.rlhf.sft_data.read_sft_records` reads it).

    SNAPSHOT/manifest.json   kind "sft", format, content hash, counts, prompt_format, params, created_at
    SNAPSHOT/train.jsonl, SNAPSHOT/test.jsonl          (format "jsonl", the default)
    SNAPSHOT/train.parquet, SNAPSHOT/test.parquet      (format "parquet")

One record per accepted demonstration: prompt_id, prompt, response, messages (chat projects only: [system],
user = prompt, assistant = response), annotator (pseudonymous, as in ranking snapshots), source,
demonstration_id, metadata (the prompt's). In Parquet, `messages` and `metadata` are JSON text columns (the
reader parses them back).

The split is by prompt text with the ranking export's seeded hash (`exporting.assign_splits`), so a prompt
is on the same side in the SFT and the ranking snapshots of a project exported with the same seed — the
SFT model's held-out prompts stay held out for the reward model too — and all demonstrations of one prompt
share a side. The content hash is sha256 over canonical JSON lines of train then test (format and created_at
excluded). Written into a staging directory and renamed into place, then recorded as a DatasetSnapshot with
kind "sft".
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from annotate.models import DatasetSnapshot, Demonstration, Project
from annotate.services.exporting import (
    SPLITS,
    ExportError,
    _move_into_place,
    annotator_pseudonym,
    assign_splits,
)
from training.rlhf.sft_data import chat_messages
from webapp.boundary import scrub

SFT_FORMATS = ("jsonl", "parquet")
SCHEMA_VERSION = 1
SFT_COLUMNS = ("prompt_id", "prompt", "response", "messages", "annotator", "source", "demonstration_id", "metadata")


@dataclass
class SftRecords:
    rows: dict[str, list[dict[str, Any]]]
    counts: dict[str, Any]


def demonstration_annotator_key(demonstration: Demonstration) -> str:
    if demonstration.annotator_id is not None:
        return f"user:{demonstration.annotator_id}"  # the same key as rankings: one pseudonym per person
    return f"imported:{demonstration.source_detail}"


def build_sft_records(*, project: Project, test_fraction: float, seed: int,
                      rounds: list[int] | None = None) -> SftRecords:
    demonstrations = (Demonstration.objects.filter(prompt__project=project, status=Demonstration.Status.ACCEPTED)
                      .select_related("prompt").order_by("prompt_id", "pk"))
    if rounds is not None:
        demonstrations = demonstrations.filter(prompt__round__in=rounds)
    chat = project.prompt_format == Project.PromptFormat.CHAT
    keyed: list[tuple[str, dict[str, Any]]] = []
    annotators: set[str] = set()
    for demo in demonstrations.iterator(chunk_size=2000):
        prompt = demo.prompt
        record: dict[str, Any] = {"prompt_id": str(prompt.pk), "prompt": prompt.text, "response": demo.text}
        if chat:
            record["messages"] = chat_messages(prompt=prompt.text, response=demo.text,
                                               system_prompt=project.system_prompt)
        record.update(
            annotator=annotator_pseudonym(demonstration_annotator_key(demo)),
            source=demo.source,
            demonstration_id=str(demo.pk),
            metadata=scrub(prompt.metadata or {}),
        )
        annotators.add(record["annotator"])
        keyed.append((prompt.text_hash, record))
    splits = assign_splits((h for h, _ in keyed), seed=seed, test_fraction=test_fraction)
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    prompts: dict[str, set[str]] = {s: set() for s in SPLITS}
    for key, record in keyed:
        rows[splits[key]].append(record)
        prompts[splits[key]].add(key)
    counts = {
        "train": len(rows["train"]), "test": len(rows["test"]),
        "prompts": {s: len(prompts[s]) for s in SPLITS},
        "annotators": len(annotators),
        "not_accepted": Demonstration.objects.filter(prompt__project=project)
        .exclude(status__in=(Demonstration.Status.ACCEPTED, Demonstration.Status.SKIPPED)).count(),
    }
    return SftRecords(rows=rows, counts=counts)


def sft_content_hash(records: SftRecords) -> str:
    digest = hashlib.sha256()
    for split in SPLITS:
        digest.update(f"# sft/{split}\n".encode())
        for row in records.rows[split]:
            digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
            digest.update(b"\n")
    return digest.hexdigest()


def _write(records: SftRecords, directory: Path, fmt: str) -> list[str]:
    if fmt == "jsonl":
        for split in SPLITS:
            with (directory / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
                for row in records.rows[split]:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for split in SPLITS:
            columns: dict[str, list] = {name: [] for name in SFT_COLUMNS}
            for row in records.rows[split]:
                for name in SFT_COLUMNS:
                    value = row.get(name)
                    if name in ("messages", "metadata") and value is not None:
                        value = json.dumps(value, ensure_ascii=False)
                    columns[name].append(value)
            schema = pa.schema([(name, pa.string()) for name in SFT_COLUMNS])
            pq.write_table(pa.table(columns, schema=schema), directory / f"{split}.parquet")
    return sorted(p.name for p in directory.iterdir() if p.is_file())


def export_sft_snapshot(*, project: Project, out_dir: str | Path, format: str = "jsonl",  # noqa: A002
                        test_fraction: float = 0.1, seed: int = 0, rounds: list[int] | None = None,
                        created_by=None, overwrite: bool = False) -> DatasetSnapshot:
    """Write the project's accepted demonstrations as an SFT snapshot at out_dir and record it
    (DatasetSnapshot.kind = "sft"). Raises ExportError for bad parameters, an existing target, or nothing
    accepted to export."""
    if format not in SFT_FORMATS:
        raise ExportError(f"format must be one of {', '.join(SFT_FORMATS)}, got {format!r}")
    if not 0 <= test_fraction < 1:
        raise ExportError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if rounds is not None:
        rounds = sorted(set(rounds))
        if not rounds or any(r < 1 for r in rounds):
            raise ExportError(f"rounds must be positive integers, got {rounds}")
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory")
    if out.exists() and not overwrite and any(out.iterdir()):
        raise ExportError(f"{out} already exists; choose a new directory or overwrite it")

    records = build_sft_records(project=project, test_fraction=test_fraction, seed=seed, rounds=rounds)
    if not records.rows["train"] and not records.rows["test"]:
        raise ExportError(
            f"Project '{project.name}' has no accepted demonstrations to export "
            f"({records.counts['not_accepted']} submitted, rejected or draft ones are not exported)."
        )
    digest = sft_content_hash(records)
    params = {"format": format, "test_fraction": test_fraction, "seed": seed, "rounds": rounds}
    prompt_format = {"format": project.prompt_format, "system_prompt": project.system_prompt}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        files = _write(records, staging, format)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "kind": "sft",
            "format": format,
            "created_at": timezone.now().isoformat(),
            "content_hash": digest,
            "content_hash_method": "sha256 over canonical JSON lines of train then test (created_at and file "
            "format excluded)",
            "project": {"id": project.pk, "name": project.name},
            "prompt_format": prompt_format,
            "params": params,
            "counts": records.counts,
            "columns": list(SFT_COLUMNS),
            "files": files,
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        with transaction.atomic():
            snapshot = DatasetSnapshot.objects.create(
                project=project, kind=DatasetSnapshot.Kind.SFT, path=str(out), format=format,
                params={**params, "prompt_format": prompt_format}, counts=records.counts, content_hash=digest,
                created_by=created_by if getattr(created_by, "pk", None) else None,
            )
            _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return snapshot
