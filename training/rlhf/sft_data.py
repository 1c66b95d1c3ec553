"""Reading SFT demonstration datasets (the SFT record contract in docs/architecture.md) for the SFT trainer.

`read_sft_records(path, split=…)` accepts
- a snapshot directory written by `export_demonstrations` (manifest.json + train/test in JSONL or Parquet, or a
  DatasetDict saved with save_to_disk),
- a single JSONL or Parquet file (a user's own data; it has no splits, so any `split` reads the whole file).

A record needs `prompt` and `response` (strings, the response not blank); `completion` is read as `response`
(TRL's prompt/completion columns), and a row with only `messages` (TRL's conversational format) takes the
prompt from its last user turn and the response from its final assistant turn. `messages`, when present, is a
list of `{"role": "system" | "user" | "assistant", "content": str}` ending with the assistant's turn.
Every error names the file, the line (JSONL) or row (Parquet/datasets) and the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.rlhf.data import (
    DatasetError,
    _fail,
    _iter_datasets,
    _maybe_json,
    _read_file,
    _split_source,
    is_datasets_dir,
    read_manifest,
)

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class SftRecord:
    """One demonstration: the prompt, the ideal response, and the chat turns when the data has them."""

    prompt: str
    response: str
    messages: list[dict[str, str]] | None = None
    prompt_id: str | None = None
    annotator: str | None = None
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def group_key(self) -> str:
        """What a prompt split keeps together: the prompt id, else the prompt text."""
        return self.prompt_id if self.prompt_id is not None else self.prompt

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"prompt_id": self.prompt_id, "prompt": self.prompt, "response": self.response}
        if self.messages is not None:
            row["messages"] = self.messages
        row.update(annotator=self.annotator, source=self.source, metadata=self.metadata)
        return row


def chat_messages(*, prompt: str, response: str, system_prompt: str = "") -> list[dict[str, str]]:
    """The conversation of one demonstration: [system], user = prompt, assistant = response."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def _messages(value: Any, *, where: str) -> list[dict[str, str]]:
    value = _maybe_json(value)
    if not isinstance(value, list) or not value:
        raise _fail(where, "messages", "must be a non-empty list of {role, content} objects")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise _fail(where, f"messages[{i}]", "must be an object with `role` and `content`")
        role, content = turn.get("role"), turn.get("content")
        if role not in ROLES:
            raise _fail(where, f"messages[{i}].role", f"must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise _fail(where, f"messages[{i}].content", "required, a string")
        turns.append({"role": role, "content": content})
    if turns[-1]["role"] != "assistant":
        raise _fail(where, "messages", "must end with the assistant's turn (the demonstration)")
    return turns


def _optional_str(row: dict[str, Any], name: str, *, where: str) -> str | None:
    value = row.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _fail(where, name, "must be a string")
    return str(value)


def sft_record_from_dict(row: Any, *, where: str) -> SftRecord:
    """Validate one row into an SftRecord; DatasetError naming `where` and the field otherwise."""
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(row).__name__}")
    messages = _messages(row["messages"], where=where) if row.get("messages") is not None else None
    prompt, response = row.get("prompt"), row.get("response", row.get("completion"))
    if messages is not None:
        if response is None:
            response = messages[-1]["content"]
        if prompt is None:
            users = [turn["content"] for turn in messages if turn["role"] == "user"]
            if not users:
                raise _fail(where, "messages", "has no user turn to take the prompt from")
            prompt = users[-1]
    if not isinstance(prompt, str):
        raise _fail(where, "prompt", "required, a string")
    if not isinstance(response, str):
        raise _fail(where, "response", "required, a string")
    if not response.strip():
        raise _fail(where, "response", "must not be blank")
    if messages is not None and messages[-1]["content"] != response:
        raise _fail(where, "messages", "the final assistant turn must equal `response`")
    metadata = _maybe_json(row.get("metadata")) or {}
    if not isinstance(metadata, dict):
        raise _fail(where, "metadata", "must be an object")
    return SftRecord(
        prompt=prompt,
        response=response,
        messages=messages,
        prompt_id=_optional_str(row, "prompt_id", where=where),
        annotator=_optional_str(row, "annotator", where=where),
        source=_optional_str(row, "source", where=where),
        metadata=metadata,
    )


def iter_sft_records(path: str | Path, *, split: str = "train") -> Iterator[SftRecord]:
    """Like `read_sft_records`, one record at a time."""
    source = Path(path)
    if not source.exists():
        raise DatasetError(f"{source}: no such file or directory")
    if source.is_file():
        rows: Iterable[tuple[str, Any]] = _read_file(source)
    elif is_datasets_dir(source) and not (source / "dataset_dict.json").exists():
        rows = _iter_datasets(source, split)  # one plain Dataset: no splits
    else:
        found = _split_source(source, split)
        if found is None:
            raise DatasetError(
                f"{source}: no {split!r} split (expected {split}.jsonl, {split}.parquet or a DatasetDict with a "
                f"{split!r} split)"
            )
        kind, location = found
        rows = _iter_datasets(location, split) if kind == "datasets" else _read_file(location)
    for where, row in rows:
        yield sft_record_from_dict(row, where=where)


def read_sft_records(path: str | Path, *, split: str = "train") -> list[SftRecord]:
    """All demonstrations of one split of an SFT snapshot directory, or of a single JSONL/Parquet file (read
    whole for any `split`). Raises DatasetError naming the file, line/row and field of the first bad record."""
    return list(iter_sft_records(path, split=split))


def has_sft_split(path: str | Path, split: str) -> bool:
    """Whether the snapshot directory `path` holds `split` (a single file has no splits: False)."""
    source = Path(path)
    if not split or not source.is_dir():
        return False
    if is_datasets_dir(source) and not (source / "dataset_dict.json").exists():
        return False  # one plain Dataset: no splits
    return _split_source(source, split) is not None


def read_sft_manifest(path: str | Path) -> dict[str, Any] | None:
    """The snapshot's manifest.json (None for a user's own file)."""
    return read_manifest(path)
