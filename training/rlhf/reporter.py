"""How trainers report progress: a small callback protocol, implemented by the Django side (database writes)
and here by a JSONL file for the plain CLI.

Trainers call these on the main process only (accelerate's `is_main_process`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

EVENTS_FILE = "events.jsonl"  # the plain CLIs' event log, in the run's output directory


@runtime_checkable
class Reporter(Protocol):
    def on_start(self, *, total_steps: int, start_step: int) -> None:
        """The run begins: `total_steps` planned (RM optimizer steps, PPO iterations), `start_step` already done
        (0 on a fresh run, the checkpoint's step on a resumed one)."""

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Scalar metrics for one optimisation step (loss, reward, kl, lr, tokens_per_s…)."""

    def on_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        """A sample table: dicts with prompt, response and optional reward, score, kl (and extras)."""

    def on_checkpoint(self, step: int, path: str) -> None:
        """A resumable checkpoint was written at `path`."""

    def on_evaluation(self, results: dict[str, Any]) -> None:
        """Evaluation results (held-out accuracy, before/after PPO figures…), merged into the run's record."""

    def on_log(self, message: str) -> None:
        """A human-readable progress line."""

    def on_outputs(self, outputs: dict[str, str]) -> None:
        """What the finished run wrote, by name: {"reward_model": dir} or {"policy": dir, "value_model": dir,
        "policy_adapter": dir (LoRA only)}. Called once, at the end of a run that was not stopped."""

    def should_stop(self) -> bool:
        """True when the user asked for a graceful stop; trainers check it between steps."""


class NullReporter:
    """Reports nowhere; never asks to stop."""

    def on_start(self, *, total_steps: int, start_step: int) -> None:
        pass

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def on_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        pass

    def on_checkpoint(self, step: int, path: str) -> None:
        pass

    def on_evaluation(self, results: dict[str, Any]) -> None:
        pass

    def on_log(self, message: str) -> None:
        pass

    def on_outputs(self, outputs: dict[str, str]) -> None:
        pass

    def should_stop(self) -> bool:
        return False


class JsonlReporter:
    """Appends one JSON object per event to a file; a STOP file beside it requests a graceful stop.

    Used by the plain CLI (`python -m training.rlhf.cli …`), where there is no database.
    """

    def __init__(self, path: str | Path, *, echo: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stop_file = self.path.with_name("STOP")
        self.echo = echo

    def _write(self, event: str, **payload: Any) -> None:
        record = {"event": event, "time": time.time(), **payload}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")

    def on_start(self, *, total_steps: int, start_step: int) -> None:
        self._write("start", total_steps=total_steps, start_step=start_step)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self._write("metrics", step=step, metrics=metrics)

    def on_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        self._write("samples", step=step, samples=samples)

    def on_checkpoint(self, step: int, path: str) -> None:
        self._write("checkpoint", step=step, path=path)

    def on_evaluation(self, results: dict[str, Any]) -> None:
        self._write("evaluation", results=results)

    def on_log(self, message: str) -> None:
        self._write("log", message=message)
        if self.echo:
            print(message, flush=True)

    def on_outputs(self, outputs: dict[str, str]) -> None:
        self._write("outputs", outputs=outputs)

    def should_stop(self) -> bool:
        return self.stop_file.exists()


def is_main_process() -> bool:
    """False on the non-zero ranks of `accelerate launch` / torchrun (they set RANK): only rank 0 reports."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def cli_reporter(output_dir: str | Path, *, echo: bool) -> Reporter:
    """The plain CLIs' reporter: OUTPUT_DIR/events.jsonl on the main process, nothing on the others."""
    return JsonlReporter(Path(output_dir) / EVENTS_FILE, echo=echo) if is_main_process() else NullReporter()
