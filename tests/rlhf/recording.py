"""A Reporter (training/rlhf/reporter.py) for trainer tests: keeps every event."""

from __future__ import annotations


class RecordingReporter:
    """Every event a trainer reports, in order; asks to stop once a training step ≥ `stop_after` was reported.

    metrics: [(step, metrics)] in call order (the RM trainer reports training and evaluation metrics at one
    step in separate calls); `by_step()` merges them per step.
    """

    def __init__(self, stop_after: int | None = None) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.samples: dict[int, list[dict]] = {}
        self.checkpoints: list[tuple[int, str]] = []
        self.evaluations: list[dict] = []
        self.logs: list[str] = []
        self.starts: list[tuple[int, int]] = []  # (total_steps, start_step)
        self.outputs: list[dict[str, str]] = []
        self.stop_after = stop_after

    def on_start(self, *, total_steps, start_step):
        self.starts.append((total_steps, start_step))

    def on_metrics(self, step, metrics):
        self.metrics.append((step, dict(metrics)))

    def on_samples(self, step, samples):
        self.samples[step] = list(samples)

    def on_checkpoint(self, step, path):
        self.checkpoints.append((step, path))

    def on_evaluation(self, results):
        self.evaluations.append(results)

    def on_log(self, message):
        self.logs.append(message)

    def on_outputs(self, outputs):
        self.outputs.append(dict(outputs))

    def should_stop(self):
        steps = self.train_steps()
        return self.stop_after is not None and bool(steps) and steps[-1] >= self.stop_after

    def train_steps(self) -> list[int]:
        """Steps of training metrics (those with a loss or, for PPO, a reward)."""
        return [s for s, m in self.metrics if "loss" in m or "reward" in m]

    def by_step(self) -> dict[int, dict[str, float]]:
        merged: dict[int, dict[str, float]] = {}
        for step, metrics in self.metrics:
            merged.setdefault(step, {}).update(metrics)
        return merged
