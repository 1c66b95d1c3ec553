"""The prompts PPO trains and evaluates on: the prompt file (the export services write it,
annotate.services.exporting), the ptx texts, the held-out split, demo-task detection and the order prompts
are drawn in (resumable).

Prompt file: JSONL with a "prompt" string per line (optional "metadata" object; other keys are ignored), or
plain text with one prompt per line. Every error names the file and the line.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.rlhf import demo_task
from training.rlhf.data import RowProblem, jsonl_rows


@dataclass
class PromptRecord:
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def load_prompts(path: str | Path) -> list[PromptRecord]:
    """Prompts from a file: JSONL with a "prompt" field per line (optional "metadata" dict), or plain text with
    one prompt per line (blank lines skipped). A file whose first non-blank line starts with "{" is JSONL."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"prompt file not found: {file}")
    lines = file.read_text(encoding="utf-8").splitlines()
    first = next((line for line in lines if line.strip()), "")
    records: list[PromptRecord] = []
    if first.lstrip().startswith("{"):
        with file.open("rb") as stream:
            rows = list(jsonl_rows(stream))  # the record contract's JSONL reader (training/rlhf/data.py)
        for number, row in rows:
            if isinstance(row, RowProblem):
                raise ValueError(f"{file}:{number}: not valid JSON ({row.reason})")
            prompt = row.get("prompt") if isinstance(row, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"{file}:{number}: a JSONL prompt line needs a non-empty \"prompt\" string")
            metadata = row.get("metadata") or {}
            if not isinstance(metadata, dict):
                raise ValueError(f"{file}:{number}: \"metadata\" must be an object")
            records.append(PromptRecord(prompt, metadata))
    else:
        records = [PromptRecord(line) for line in lines if line.strip()]
    if not records:
        raise ValueError(f"{file}: no prompts")
    return records


def load_texts(path: str | Path) -> list[str]:
    """Texts for PPO-ptx: JSONL with "text" (or "prompt" + "response") per line, or plain text lines."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"ptx dataset not found: {file}")
    lines = [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = []
    for number, line in enumerate(lines, start=1):
        if line.lstrip().startswith("{"):
            row = json.loads(line)
            text = row.get("text") if "text" in row else str(row.get("prompt", "")) + str(row.get("response", ""))
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{file}:{number}: needs a \"text\" (or \"prompt\" and \"response\") string")
            texts.append(text)
        else:
            texts.append(line)
    if not texts:
        raise ValueError(f"{file}: no texts")
    return texts


def is_demo_task(records: Sequence[PromptRecord], task: str) -> bool:
    """Whether the demo oracle applies: forced by `task`, or (auto) every record says metadata.task == "demo"
    or every prompt is one of the demo task's prompts."""
    if task != "auto":
        return task == "demo"
    if not records:
        return False
    if all(r.metadata.get("task") == demo_task.DEMO_TASK for r in records):
        return True
    pool = set(demo_task.demo_prompts(n=200, seed=0, split="all"))
    return all(r.text in pool for r in records)


def split_prompts(
    records: list[PromptRecord], *, eval_fraction: float, max_eval: int, seed: int
) -> tuple[list[PromptRecord], list[PromptRecord]]:
    """(train, held-out) split of distinct prompt texts, seeded; at least one prompt stays for training."""
    if eval_fraction <= 0:
        return records, []
    texts = sorted({r.text for r in records})
    random.Random(f"ppo-eval-split/{seed}").shuffle(texts)
    n_eval = min(max_eval, max(1, round(len(texts) * eval_fraction)), len(texts) - 1)
    held_out = set(texts[:n_eval])
    return [r for r in records if r.text not in held_out], [r for r in records if r.text in held_out][:max_eval]


class PromptStream:
    """The order prompts are drawn in: an epoch-seeded permutation of all training prompts, consumed in global
    batches (rollout_batch_size × processes); each process takes its own slice. Resumable (epoch, cursor)."""

    def __init__(self, size: int, *, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.cursor = 0

    def _order(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        random.Random(f"ppo-prompts/{self.seed}/{epoch}").shuffle(order)
        return order

    def next_batch(self, batch_size: int, *, rank: int = 0, world: int = 1) -> list[int]:
        needed = batch_size * world
        taken: list[int] = []
        while len(taken) < needed:
            order = self._order(self.epoch)
            chunk = order[self.cursor : self.cursor + needed - len(taken)]
            taken.extend(chunk)
            self.cursor += len(chunk)
            if self.cursor >= self.size:
                self.epoch += 1
                self.cursor = 0
        return taken[rank * batch_size : (rank + 1) * batch_size]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "size": self.size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["size"]) != self.size:
            raise ValueError(f"the checkpoint drew from {state['size']} prompts, this run has {self.size}")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
