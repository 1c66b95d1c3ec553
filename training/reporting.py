"""Results out: the one Django-side implementation of the core's `Reporter` protocol (training/rlhf/reporter.py).

`RunReporter` records what a trainer reports on its `TrainingRun` — start (planned and resumed step), metrics,
sample tables, checkpoints, evaluation, outputs — and shows it on the console: log lines, and a tqdm bar over
the steps when asked. It also turns the first SIGINT/SIGTERM into a graceful stop (`should_stop()`); a second
one interrupts at once. Heartbeats ride on every call (at most every WORKBENCH_HEARTBEAT_SECONDS); the cancel
flag is re-read at most once a second so a fast loop does not hammer the database.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from training.models import Checkpoint, Metric, Sample, TrainingRun
from training.runkinds import run_kind

logger = logging.getLogger("training.runs")


class RunReporter:
    """The Reporter protocol written to the run's rows, echoed to the console (see the module docstring)."""

    def __init__(self, run: TrainingRun, *, echo: Callable[[str], None] | None = None, progress: bool = False) -> None:
        self.run = run
        self.echo = echo
        self.progress = progress
        self.bar = None
        self.signalled = False
        self._previous_handlers: dict[int, Any] = {}
        self._last_heartbeat = 0.0
        self._last_stop_check = 0.0
        self._cancel_requested = False

    # --- the protocol ---------------------------------------------------------------------------------------

    def on_start(self, *, total_steps: int, start_step: int) -> None:
        """The planned number of steps (RM optimizer steps, PPO iterations) and the step a resume starts at."""
        summary = dict(self.run.summary or {})
        summary["total_steps"] = int(total_steps)
        summary.setdefault("step", int(start_step))
        # For the run page's phase, progress and ETA (training.selectors.run_progress); one per start, so a
        # resume measures its own rate.
        summary["progress"] = {"start_step": int(start_step), "started_at": timezone.now().timestamp()}
        self.run.summary = summary
        TrainingRun.objects.filter(pk=self.run.pk).update(summary=summary)
        self.heartbeat(force=True)
        if self.progress:
            from tqdm import tqdm

            kind = run_kind(self.run.kind)
            self.bar = tqdm(total=total_steps, initial=start_step, unit=kind.progress_unit, file=sys.stderr,
                            dynamic_ncols=True, disable=None, desc=kind.command)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        rows = [
            Metric(run=self.run, step=step, name=name, value=float(value))
            for name, value in metrics.items()
            if value is not None and value == value  # drop None and NaN
        ]
        # update_conflicts: a resumed run may report a step again; the newer value wins.
        Metric.objects.bulk_create(
            rows, update_conflicts=True, unique_fields=["run", "name", "step"], update_fields=["value"]
        )
        summary = dict(self.run.summary or {})
        summary.update({name: float(value) for name, value in metrics.items() if value is not None})
        summary["step"] = step
        if run_kind(self.run.kind).progress_keys[0] in metrics and "progress" in summary:
            progress = dict(summary["progress"])
            now = timezone.now().timestamp()
            progress.setdefault("first_step", step)
            progress.setdefault("first_at", now)
            progress.update(step=step, at=now)
            summary["progress"] = progress
        self.run.summary = summary
        TrainingRun.objects.filter(pk=self.run.pk).update(summary=summary)
        self.heartbeat()
        self._advance_bar(step, metrics)

    def on_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        known = {"prompt", "response", "reward", "score", "kl"}
        Sample.objects.bulk_create([
            Sample(
                run=self.run, step=step, prompt=str(row.get("prompt", "")), response=str(row.get("response", "")),
                reward=row.get("reward"), score=row.get("score"), kl=row.get("kl"),
                extra={k: v for k, v in row.items() if k not in known},
            )
            for row in samples
        ])
        self.heartbeat()

    def on_checkpoint(self, step: int, path: str) -> None:
        Checkpoint.objects.create(run=self.run, step=step, path=str(path))
        self.heartbeat(force=True)

    def on_evaluation(self, results: dict[str, Any]) -> None:
        with transaction.atomic():
            run = TrainingRun.objects.select_for_update().get(pk=self.run.pk)
            run.evaluation = {**(run.evaluation or {}), **results}
            run.save(update_fields=["evaluation"])
        self.run.evaluation = run.evaluation

    def on_outputs(self, outputs: dict[str, str]) -> None:
        """What the trainer wrote; later stages (PPO from an RM, a new round from a policy) read it from here."""
        self.run.outputs = {**(self.run.outputs or {}), **{name: str(path) for name, path in outputs.items()}}
        TrainingRun.objects.filter(pk=self.run.pk).update(outputs=self.run.outputs)

    def on_log(self, message: str) -> None:
        logger.info("run %s: %s", self.run.pk, message)
        if self.bar is not None and not self.bar.disable:
            self.bar.write(message, file=sys.stdout)  # above the bar, not through it
        elif self.echo:
            self.echo(message)
        self.heartbeat()

    def should_stop(self) -> bool:
        if self.signalled or self._cancel_requested:
            return True
        now = timezone.now().timestamp()
        if now - self._last_stop_check >= 1.0:
            self._last_stop_check = now
            self._cancel_requested = TrainingRun.objects.filter(pk=self.run.pk, cancel_requested=True).exists()
            self.heartbeat()
        return self._cancel_requested

    # --- the rest ------------------------------------------------------------------------------------------

    def heartbeat(self, *, force: bool = False) -> None:
        now = timezone.now().timestamp()
        if force or now - self._last_heartbeat >= settings.WORKBENCH_HEARTBEAT_SECONDS:
            TrainingRun.objects.filter(pk=self.run.pk).update(heartbeat_at=timezone.now())
            self._last_heartbeat = now

    def _advance_bar(self, step: int, metrics: dict[str, float]) -> None:
        keys = run_kind(self.run.kind).progress_keys
        if self.bar is None or keys[0] not in metrics:  # evaluation metrics alone do not advance it
            return
        self.bar.update(max(0, step - self.bar.n))
        self.bar.set_postfix({key: f"{metrics.get(key, float('nan')):.3f}" for key in keys})

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread (e.g. a test runner's worker thread)
                pass

    def _on_signal(self, signum, frame) -> None:
        if self.signalled:
            self.close()
            raise KeyboardInterrupt
        self.signalled = True
        self.on_log(f"received {signal.Signals(signum).name}: stopping after this step with a checkpoint "
                    "(send it again to abort at once)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()
