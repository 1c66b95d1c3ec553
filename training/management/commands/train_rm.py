"""`python manage.py train_rm`: train a K-wise reward model as a recorded TrainingRun (kind rm).

    manage.py train_rm --snapshot 12 --model var/models/tiny                  (a recorded DatasetSnapshot)
    manage.py train_rm --dataset var/data/my-rankings.jsonl --model gpt2 --out var/runs/rm-mine --lora true
    manage.py train_rm --run-id 7                                             (a queued run, as the worker does)

The training itself is `training.rlhf.rm_trainer.train_reward_model`; this command resolves the data, creates
(or loads) the run and executes it inside `training.services.executing`, which records running → succeeded,
failed (with the traceback) or cancelled. Under `accelerate launch` only the main process touches the
database; the other processes train with a NullReporter. Ctrl+C (or SIGTERM) once stops gracefully with a
checkpoint; the run ends as cancelled.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from training.models import TrainingRun
from training.rlhf.configs import ConfigError, add_config_arguments, config_from_dict, config_to_dict
from training.rlhf.reporter import NullReporter, Reporter
from training.rlhf.rm_config import CALIBRATION_SETS, RewardModelConfig

# Options this command names itself (the rest come from RewardModelConfig).
OWN_FIELDS = {"dataset", "model", "output_dir"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def is_main_process() -> bool:
    """True unless this is a non-zero rank under `accelerate launch` / torchrun (RANK is set there)."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def resolve_snapshot(value: str):
    """A DatasetSnapshot by primary key or by (a unique prefix of, ≥ 6 characters) its content hash."""
    from annotate.models import DatasetSnapshot

    value = value.strip()
    if value.isdigit():
        snapshot = DatasetSnapshot.objects.filter(pk=int(value)).first()
        if snapshot is None:
            raise CommandError(f"No dataset snapshot with id {value}.")
        return snapshot
    if len(value) < 6 or not re.fullmatch(r"[0-9a-fA-F]+", value):
        raise CommandError(f"--snapshot takes a snapshot id or at least 6 hex digits of its hash, got {value!r}.")
    matches = list(DatasetSnapshot.objects.filter(content_hash__startswith=value.lower()).order_by("-created_at"))
    if not matches:
        raise CommandError(f"No dataset snapshot whose hash starts with {value}.")
    if len({s.content_hash for s in matches}) > 1:
        raise CommandError(f"{value} matches {len({s.content_hash for s in matches})} different snapshots; give "
                           "more of the hash or the snapshot id.")
    on_disk = [s for s in matches if Path(s.path).exists()]
    return (on_disk or matches)[0]


def check_model_reference(model: str) -> None:
    """A local path must exist; anything else must look like a hub id (owner/name)."""
    path = Path(model).expanduser()
    if path.exists():
        return
    if model.startswith((".", "/", "~")) or "\\" in model or not HUB_ID.match(model):
        raise CommandError(f"Model not found: {model} (neither a local directory nor a hub id like owner/name).")


def check_inputs(config: RewardModelConfig) -> None:
    """The operator's mistakes, caught before a run is recorded."""
    if not Path(config.dataset).exists():
        raise CommandError(f"Dataset not found: {config.dataset}")
    check_model_reference(config.model)
    if config.tokenizer:
        check_model_reference(config.tokenizer)
    if config.calibration_set not in CALIBRATION_SETS and not Path(config.calibration_set).is_file():
        raise CommandError(f"Calibration file not found: {config.calibration_set}")


class ProgressReporter:
    """The run's reporter plus a tqdm bar over the steps (on a terminal) and a graceful stop on the first
    SIGINT/SIGTERM (a second one interrupts at once)."""

    def __init__(self, inner: Reporter, *, progress: bool) -> None:
        self.inner = inner
        self.progress = progress
        self.bar = None
        self.signalled = False
        self._previous: dict[int, Any] = {}

    def install_signal_handlers(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread (e.g. a test runner's worker thread)
                pass

    def restore_signal_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _on_signal(self, signum, frame) -> None:
        if self.signalled:
            self.restore_signal_handlers()
            raise KeyboardInterrupt
        self.signalled = True
        self.inner.on_log(f"received {signal.Signals(signum).name}: stopping after this step with a checkpoint "
                          "(send it again to abort at once)")

    def on_start(self, *, total_steps: int, start_step: int) -> None:
        if hasattr(self.inner, "on_start"):
            self.inner.on_start(total_steps=total_steps, start_step=start_step)
        if self.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", file=sys.stderr, dynamic_ncols=True,
                            disable=None, desc="train_rm")

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.inner.on_metrics(step, metrics)
        if self.bar is not None and "loss" in metrics:
            self.bar.update(max(0, step - self.bar.n))
            self.bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics.get('accuracy', 0):.2f}")

    def on_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        self.inner.on_samples(step, samples)

    def on_checkpoint(self, step: int, path: str) -> None:
        self.inner.on_checkpoint(step, path)

    def on_evaluation(self, results: dict[str, Any]) -> None:
        self.inner.on_evaluation(results)

    def on_log(self, message: str) -> None:
        self.inner.on_log(message)

    def on_outputs(self, outputs: dict[str, str]) -> None:
        self.inner.on_outputs(outputs)

    def should_stop(self) -> bool:
        return self.signalled or self.inner.should_stop()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.restore_signal_handlers()


class Command(BaseCommand):
    help = (
        "Train a reward model with the InstructGPT K-wise loss on a dataset snapshot (or any ranking dataset) "
        "and record it as a training run: status, config, metrics every step, evaluation, output directory, "
        "and the traceback on failure. `--run-id N` executes a queued run from its stored config."
    )

    def add_arguments(self, parser):
        source = parser.add_argument_group("what to train")
        source.add_argument("--snapshot", help="A recorded DatasetSnapshot: its id or a prefix of its content hash.")
        source.add_argument("--dataset", help="Or a dataset path: snapshot directory, kwise/ directory, or one "
                                              "JSONL/Parquet file.")
        source.add_argument("--model", help="Backbone: a local checkpoint directory or a hub id.")
        source.add_argument("--out", "--output-dir", dest="output_dir",
                            help="Output directory (default: <WORKBENCH_RUNS_ROOT>/rm-<run id>).")
        source.add_argument("--name", default="", help="A name for the run on the dashboard.")
        source.add_argument("--run-id", type=int, help="Execute this queued run with its stored config instead.")
        source.add_argument("--no-progress", action="store_true", help="No progress bar (log lines only).")
        add_config_arguments(parser, RewardModelConfig, exclude=OWN_FIELDS)

    def handle(self, *args, **options):
        main = is_main_process()
        run, config = self.resolve_run(options, main=main)
        self.run_training(run, config, main=main, progress=not options["no_progress"])

    # --- the run --------------------------------------------------------------------------------------------

    def resolve_run(self, options: dict[str, Any], *, main: bool) -> tuple[TrainingRun | None, RewardModelConfig]:
        """The run to execute and its config: an existing queued run (--run-id), or a new one from options.
        Non-main processes never write: they read the run, or train without one (needs --out)."""
        from training.services import create_run, default_output_dir, mark_finished

        names = {f.name for f in dataclasses.fields(RewardModelConfig)}
        given = {k: v for k, v in options.items() if k in names and v is not None}
        if options.get("run_id") is not None:
            if given or options.get("snapshot") or options.get("name"):
                raise CommandError("--run-id executes the run's stored config; give no other training options.")
            run = TrainingRun.objects.filter(pk=options["run_id"]).select_related("snapshot").first()
            if run is None:
                raise CommandError(f"No training run with id {options['run_id']}.")
            if run.kind != TrainingRun.Kind.RM:
                raise CommandError(f"Run {run.pk} is a {run.get_kind_display()} run, not a reward-model run.")
            if run.status not in TrainingRun.ACTIVE_STATUSES:
                raise CommandError(f"Run {run.pk} has already ended ({run.status}); resume or retry it from the "
                                   "dashboard, which creates a new run.")
            values = dict(run.config or {})
            if not values.get("dataset") and run.snapshot_id:
                values["dataset"] = run.snapshot.path
            out = values.get("output_dir") or run.output_dir or str(default_output_dir(run=run).resolve())
            values["output_dir"] = out
            try:
                config = config_from_dict(RewardModelConfig, values)
            except (ConfigError, TypeError) as exc:
                if main:
                    mark_finished(run=run, status=TrainingRun.Status.FAILED, error=f"Invalid config: {exc}")
                raise CommandError(f"Run {run.pk} has an invalid config: {exc}") from exc
            if main and (run.output_dir != out or run.config.get("output_dir") != out):
                TrainingRun.objects.filter(pk=run.pk).update(output_dir=out, config=config_to_dict(config))
                run.refresh_from_db()
            return run, config

        snapshot = None
        if options.get("snapshot") and options.get("dataset"):
            raise CommandError("Give --snapshot or --dataset, not both.")
        if options.get("snapshot"):
            snapshot = resolve_snapshot(options["snapshot"])
            given["dataset"] = snapshot.path
        elif options.get("dataset"):
            given["dataset"] = options["dataset"]
        else:
            raise CommandError("Give --snapshot ID_OR_HASH or --dataset PATH (or --run-id N).")
        if not options.get("model"):
            raise CommandError("--model is required (a local checkpoint directory or a hub id).")
        given["model"] = options["model"]
        if options.get("output_dir"):
            given["output_dir"] = str(Path(options["output_dir"]).expanduser().resolve())
        elif not main:
            raise CommandError("Under accelerate launch give --out (or --run-id), so every process writes to the "
                               "same directory.")
        try:
            config = RewardModelConfig(**given)
        except ConfigError as exc:
            raise CommandError(f"--{exc.field.replace('_', '-')}: {str(exc).split(': ', 1)[-1]}") from exc
        check_inputs(config)
        if not main:
            return None, config
        run = create_run(kind=TrainingRun.Kind.RM, config=config_to_dict(config), name=options.get("name") or "",
                         snapshot=snapshot, project=getattr(snapshot, "project", None))
        if not config.output_dir:
            config = dataclasses.replace(config, output_dir=str(default_output_dir(run=run).resolve()))
        TrainingRun.objects.filter(pk=run.pk).update(output_dir=config.output_dir, config=config_to_dict(config))
        run.refresh_from_db()
        self.stdout.write(f"Created {run} → {config.output_dir}")
        return run, config

    def run_training(self, run: TrainingRun | None, config: RewardModelConfig, *, main: bool, progress: bool) -> None:
        from training.rlhf.rm_trainer import train_reward_model
        from training.services import RunCancelled, executing

        if not main or run is None:
            train_reward_model(config, reporter=NullReporter())
            return
        bar_holder: list[ProgressReporter] = []

        def echo(message: str) -> None:  # log lines above the progress bar, not through it
            bar = bar_holder[0].bar if bar_holder else None
            if bar is not None and not bar.disable:
                bar.write(message, file=self.stdout, end="")  # OutputWrapper adds the newline
            else:
                self.stdout.write(message)

        try:
            with executing(run=run, echo=echo) as database_reporter:
                reporter = ProgressReporter(database_reporter, progress=progress)
                bar_holder.append(reporter)
                reporter.install_signal_handlers()
                try:
                    result = train_reward_model(config, reporter=reporter)
                finally:
                    reporter.close()
                if result.stopped:
                    raise RunCancelled(f"stopped at step {result.steps}; checkpoint {result.checkpoint}")
        except Exception as exc:
            raise CommandError(f"{run} failed: {exc} (the traceback is stored on the run)") from exc
        run.refresh_from_db()
        if run.status == TrainingRun.Status.CANCELLED:
            self.stdout.write(self.style.WARNING(
                f"{run} stopped on request at step {run.summary.get('step', '?')}; its checkpoint is in "
                f"{Path(run.output_dir) / 'checkpoints'}."
            ))
            return
        heldout = (run.evaluation or {}).get("heldout", {})
        figures = ""
        if heldout:
            figures = f": held-out accuracy {heldout.get('accuracy', float('nan')):.3f}"
            if "oracle" in heldout:
                figures += f", against the oracle {heldout['oracle']['accuracy']:.3f}"
        self.stdout.write(self.style.SUCCESS(f"{run} {run.status}{figures}. Reward model: {run.output_dir}"))
