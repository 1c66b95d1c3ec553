"""Helpers shared by the dashboard/worker tests and the dashboard browser test."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from pathlib import Path

from django.conf import settings


def use_file_sqlite_test_database() -> None:
    """Make the SQLite test database a file, so processes started by a test (a `db_worker`, the trainer it
    spawns) open the same database as the test. Must run before the test database is created, i.e. at import
    time of a conftest or test module; a no-op on PostgreSQL or when WORKBENCH_TEST_SQLITE_PATH names a file.

    The file lives in a fresh temporary directory per pytest process: several pytest runs may share a machine.
    """
    db = settings.DATABASES["default"]
    if not db["ENGINE"].endswith("sqlite3"):
        return
    test = db.setdefault("TEST", {})
    if test.get("NAME"):
        return
    directory = tempfile.mkdtemp(prefix="workbench-test-db-")
    atexit.register(shutil.rmtree, directory, True)
    test["NAME"] = os.path.join(directory, "test.sqlite3")


def tiers_by_oracle(prompt: str, responses: list[str]) -> list[list[int]]:
    from training.rlhf.demo_task import oracle_score

    scores = [round(oracle_score(prompt, r), 6) for r in responses]
    return [[i for i, s in enumerate(scores) if s == value] for value in sorted(set(scores), reverse=True)]


def write_kwise_snapshot(directory: Path, *, train: int = 24, test: int = 8) -> dict[str, int]:
    """A tiny K-wise snapshot (kwise/train.jsonl, kwise/test.jsonl) of demo prompts ranked by the oracle."""
    from training.rlhf.demo_task import DEMO_TASK, demo_prompts, sample_demo_responses

    counts = {}
    (directory / "kwise").mkdir(parents=True)
    prompts = demo_prompts(n=train + test, seed=7)
    for split, chunk in (("train", prompts[:train]), ("test", prompts[train:])):
        lines = []
        for i, prompt in enumerate(chunk):
            responses = sample_demo_responses(prompt, k=4, seed=i)
            lines.append(json.dumps({
                "prompt_id": f"{split}-{i}", "prompt": prompt, "responses": responses,
                "ranking": tiers_by_oracle(prompt, responses), "annotator": "oracle", "source": "simulated",
                "metadata": {"task": DEMO_TASK},
            }))
        (directory / "kwise" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        counts[split] = len(lines)
    (directory / "manifest.json").write_text(json.dumps({"format": "jsonl", "counts": counts}))
    return counts


SFT_ANSWER = " The coffee was fresh and the staff were friendly. I would come back!"


def write_sft_snapshot(directory: Path, *, train: int = 16, test: int = 6, prompt_format: str = "plain",
                       system_prompt: str = "") -> dict[str, int]:
    """A tiny SFT snapshot (train.jsonl, test.jsonl, manifest.json as export_demonstrations writes them) of demo
    prompts, each answered with the same good review (a pattern a few steps learn)."""
    from training.rlhf.demo_task import DEMO_TASK, demo_prompts
    from training.rlhf.sft_data import chat_messages

    directory.mkdir(parents=True, exist_ok=True)
    prompts = demo_prompts(n=train + test, seed=7)
    counts = {}
    for split, chunk in (("train", prompts[:train]), ("test", prompts[train:])):
        rows = []
        for i, prompt in enumerate(chunk):
            row = {"prompt_id": f"{split}-{i}", "prompt": prompt, "response": SFT_ANSWER, "annotator": "sim",
                   "source": "simulated", "metadata": {"task": DEMO_TASK}}
            if prompt_format == "chat":
                row["messages"] = chat_messages(prompt=prompt, response=SFT_ANSWER, system_prompt=system_prompt)
            rows.append(json.dumps(row))
        (directory / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
        counts[split] = len(rows)
    (directory / "manifest.json").write_text(json.dumps({
        "kind": "sft", "format": "jsonl", "content_hash": "5f7" + "0" * 61, "counts": counts,
        "prompt_format": {"format": prompt_format, "system_prompt": system_prompt}}))
    return counts


def cancel_after_step(run, *, step: int, metric: str = "loss", timeout: float = 300):
    """A started thread that requests a graceful cancel of `run` once its `metric` reached `step` (the live
    metrics a worker's trainer writes); join it after the run ended."""
    import threading
    import time

    from django.db import connection

    from training.models import Metric, TrainingRun
    from training.services import request_cancel

    def watch():
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if Metric.objects.filter(run=run, name=metric, step__gte=step).exists():
                    request_cancel(run=TrainingRun.objects.get(pk=run.pk))
                    return
                time.sleep(0.2)
        finally:
            connection.close()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread
