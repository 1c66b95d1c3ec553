"""Run logs: where a run's log lives and the tail the pages show. A leaf module (no project imports), so the
worker, the launch pipeline and the selectors can all use it."""

from __future__ import annotations

import os
from pathlib import Path

LOG_TAIL_BYTES = 16_000


def run_log_path(*, kind: str, run_id: int, output_dir: str | Path) -> Path:
    """One log per run; a resumed run shares its parent's output directory but not its log."""
    return Path(output_dir) / "logs" / f"{kind}-run-{run_id}.log"


def tail_text(path: str | Path, *, max_bytes: int = LOG_TAIL_BYTES) -> str:
    """The last `max_bytes` of a text file (from a line start), or "" when it does not exist."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return ""
    if size > max_bytes and b"\n" in data:
        data = data.split(b"\n", 1)[1]
    return data.decode("utf-8", errors="replace")
