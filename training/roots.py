"""The configured roots: the only places a form or API call may name (docs/architecture.md, "Paths").

Models live under `settings.WORKBENCH_MODEL_ROOTS` (a finished run's output under WORKBENCH_RUNS_ROOT is a
model too), datasets and prompt files under `WORKBENCH_DATA_ROOT`, run outputs are always generated under
`WORKBENCH_RUNS_ROOT`. Discovery offers what is there; `resolve_inside` refuses anything else, including
symlinks and `..` that lead out of a root.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

MODEL_MARKERS = ("config.json", "adapter_config.json")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
DATASET_DIR_MARKERS = ("dataset_dict.json", "dataset_info.json", "manifest.json")
MAX_DEPTH = 4
MAX_ENTRIES = 500
SKIP_DIRS = {"checkpoints", "logs", "__pycache__", ".git", "node_modules"}


class OutsideRoots(ValueError):
    """A path that does not resolve inside any configured root (or does not exist)."""


def model_roots() -> list[Path]:
    return [Path(p).resolve() for p in settings.WORKBENCH_MODEL_ROOTS]


def data_root() -> Path:
    return Path(settings.WORKBENCH_DATA_ROOT).resolve()


def runs_root() -> Path:
    return Path(settings.WORKBENCH_RUNS_ROOT).resolve()


def resolve_inside(path: str | Path, roots: Iterable[Path], *, must_exist: bool = True) -> Path:
    """`path` resolved (symlinks followed); OutsideRoots unless it lies inside one of `roots`."""
    text = str(path).strip()
    if not text:
        raise OutsideRoots("No path given.")
    roots = [Path(r).resolve() for r in roots]
    candidate = Path(text)
    if not candidate.is_absolute():
        # A relative name is relative to the first root that has it.
        for root in roots:
            if (root / candidate).exists():
                candidate = root / candidate
                break
        else:
            candidate = roots[0] / candidate if roots else candidate
    resolved = candidate.resolve()
    if not any(resolved == root or root in resolved.parents for root in roots):
        raise OutsideRoots(f"{text} is outside the configured roots ({', '.join(str(r) for r in roots)}).")
    if must_exist and not resolved.exists():
        raise OutsideRoots(f"{text} does not exist.")
    return resolved


@dataclass(frozen=True)
class Found:
    path: Path
    root: Path

    @property
    def label(self) -> str:
        try:
            rel = self.path.relative_to(self.root)
        except ValueError:  # pragma: no cover - found paths are under their root
            rel = self.path
        return f"{self.root.name}/{rel}" if str(rel) != "." else self.root.name


def _walk(root: Path, *, is_match, descend_into_matches: bool) -> list[Found]:
    found: list[Found] = []
    if not root.is_dir():
        return found
    root_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        depth = len(here.parts) - root_depth
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        if depth >= MAX_DEPTH:
            dirnames[:] = []
        matched = is_match(here, filenames)
        for item in matched:
            found.append(Found(item, root))
        if matched and here in matched and not descend_into_matches:
            dirnames[:] = []
        if len(found) >= MAX_ENTRIES:
            break
    return found


def discover_models() -> list[Found]:
    """Model directories (a config.json or a LoRA adapter) under the model roots."""

    def match(here: Path, filenames: list[str]) -> list[Path]:
        return [here] if any(marker in filenames for marker in MODEL_MARKERS) else []

    results: list[Found] = []
    for root in model_roots():
        results += _walk(root, is_match=match, descend_into_matches=False)
    return results


def discover_data(*, include_dirs: bool = True) -> list[Found]:
    """Prompt/dataset files (JSONL, JSON, CSV, Parquet) and `datasets` directories under the data root."""

    def match(here: Path, filenames: list[str]) -> list[Path]:
        if include_dirs and any(marker in filenames for marker in DATASET_DIR_MARKERS):
            return [here]
        return [here / name for name in sorted(filenames) if name.endswith(DATA_SUFFIXES)]

    return _walk(data_root(), is_match=match, descend_into_matches=False)

