"""Import demonstrations (prompt + ideal response) from JSONL, CSV, Parquet or a `datasets` directory.

The readers are the prompt import's (`annotate.services.importing`: file/line locations, the per-record size
limit); each record is validated by the SFT record contract's own reader (`sft_record_from_dict`), so what
imports here is what `train_sft` would read: ``prompt`` + ``response`` (or ``completion``, or only TRL's
``messages``), optional ``id``/``prompt_id``, ``metadata`` and ``annotator`` (kept in ``source_detail``).

All or nothing: every record is validated first and if any is rejected nothing is written and `ImportFailed`
lists the problems (file, line or row, field). The prompts are found by normalised text in the project's round
or created there; each record becomes one Demonstration with source "imported", accepted unless the import
asks for review.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import transaction

from annotate.models import Demonstration, Project, Prompt, text_hash
from annotate.services.importing import (
    MAX_REPORTED_ERRORS,
    ImportFailed,
    RecordError,
    RecordFileError,
    RecordSource,
    open_path,
    open_upload,
)
from training.rlhf.data import DatasetError
from training.rlhf.sft_data import sft_record_from_dict
from webapp.boundary import BoundaryError, check_value

BATCH = 500


@dataclass
class DemonstrationImportSummary:
    project: str
    source: str
    round: int
    records: int = 0
    demonstrations: int = 0
    prompts_created: int = 0
    status: str = Demonstration.Status.ACCEPTED
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"project": self.project, "source": self.source, "round": self.round, "records": self.records,
                "demonstrations": self.demonstrations, "prompts_created": self.prompts_created,
                "status": self.status}

    def __str__(self) -> str:
        return (f"{self.records} records: imported {self.demonstrations} demonstrations ({self.status}) into "
                f"project '{self.project}' round {self.round}, {self.prompts_created} new prompts.")


SFT_COLUMNS = ("response", "completion", "messages", "annotator")


def _lift_columns(raw: dict) -> dict:
    """The table readers (CSV, Parquet, datasets) keep the prompt import's known columns and put the others in
    ``_extra_metadata``; the SFT columns come back out, the rest joins the prompt's metadata."""
    extra = raw.get("_extra_metadata")
    if not isinstance(extra, dict):
        return raw
    row = {k: v for k, v in raw.items() if k != "_extra_metadata"}
    for name in SFT_COLUMNS:
        if name in extra and row.get(name) is None:
            row[name] = extra.pop(name)
    if extra:
        metadata = row.get("metadata")
        row["metadata"] = {**extra, **metadata} if isinstance(metadata, dict) else (metadata or extra)
    return row


def _validate(source: RecordSource) -> tuple[list[tuple[str, Any]], list[str], int]:
    clean, errors, seen = [], [], 0
    for location, raw in source.records():
        seen += 1
        if isinstance(raw, RecordError):
            errors.append(str(raw))
            continue
        raw = _lift_columns(raw)
        try:
            check_value(raw)  # NUL, lone surrogates, non-finite numbers, nesting: refused, not a 500
            record = sft_record_from_dict(raw, where=location)
        except BoundaryError as exc:
            errors.append(f"{location}, field '{exc.field}': {exc.message}")
            continue
        except DatasetError as exc:
            errors.append(str(exc))
            continue
        if not record.prompt.strip():
            errors.append(f"{location}, field 'prompt': must not be blank")
            continue
        external = raw.get("id", raw.get("prompt_id"))
        clean.append((location, (record, "" if external is None else str(external))))
    return clean, errors, seen


def import_demonstrations(*, project: Project, source: RecordSource, round: int = 1,  # noqa: A002
                          needs_review: bool = False) -> DemonstrationImportSummary:
    """Validate every record of `source`, then write them all in one transaction (or nothing)."""
    if isinstance(round, bool) or not isinstance(round, int) or round < 1:
        raise ImportFailed(["round must be a positive integer"])
    status = Demonstration.Status.SUBMITTED if needs_review else Demonstration.Status.ACCEPTED
    summary = DemonstrationImportSummary(project=project.name, source=source.name, round=round, status=status)
    clean, errors, summary.records = _validate(source)
    if errors:
        summary.errors = errors[:MAX_REPORTED_ERRORS]
        more = f" ({len(errors) - MAX_REPORTED_ERRORS} more not shown)" if len(errors) > MAX_REPORTED_ERRORS else ""
        raise ImportFailed([f"{len(errors)} of {summary.records} records were rejected{more}:",
                            *summary.errors])
    if not clean:
        raise ImportFailed([f"{source.name}: no records"])
    with transaction.atomic():
        by_hash = {}
        hashes = sorted({text_hash(record.prompt) for _, (record, _) in clean})
        for start in range(0, len(hashes), BATCH):
            for prompt in Prompt.objects.filter(project=project, round=round, text_hash__in=hashes[start:start + BATCH]):
                by_hash[prompt.text_hash] = prompt
        rows = []
        for _, (record, external) in clean:
            key = text_hash(record.prompt)
            prompt = by_hash.get(key)
            if prompt is None:
                prompt = Prompt.objects.create(project=project, round=round, text=record.prompt,
                                               external_id=external[:200], metadata=record.metadata,
                                               source=source.name[:500])
                by_hash[key] = prompt
                summary.prompts_created += 1
            detail = source.name if not record.annotator else f"{source.name} · {record.annotator}"
            rows.append(Demonstration(
                prompt=prompt, annotator=None, text=record.response, submitted_text=record.response,
                status=status, source=Demonstration.Source.IMPORTED, source_detail=detail[:500],
                guideline_version=project.guidelines_version,
            ))
        Demonstration.objects.bulk_create(rows, batch_size=BATCH)
        summary.demonstrations = len(rows)
    return summary


def import_demonstrations_file(*, project: Project, path: str | Path, round: int = 1,  # noqa: A002
                               needs_review: bool = False) -> DemonstrationImportSummary:
    """From a file or `datasets` directory on disk. RecordFileError / ImportFailed on bad input."""
    return import_demonstrations(project=project, source=open_path(path), round=round, needs_review=needs_review)


def import_demonstrations_upload(*, project: Project, uploaded, round: int = 1,  # noqa: A002
                                 needs_review: bool = False) -> DemonstrationImportSummary:
    return import_demonstrations(project=project, source=open_upload(uploaded), round=round,
                                 needs_review=needs_review)


__all__ = ["DemonstrationImportSummary", "ImportFailed", "RecordFileError", "import_demonstrations",
           "import_demonstrations_file", "import_demonstrations_upload"]
