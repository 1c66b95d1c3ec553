"""What the train_rm / train_ppo commands share (`TrainCommand`): which process may write to the database, the
checks of a model reference, and running a launch — a queued run (`--run-id`, as the worker does) or one
recorded from the command's options — with the console reporter. The commands themselves only parse their
sources (what to train) and print their closing report."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from training import launching, services
from training.models import TrainingRun
from training.rlhf.configs import add_config_arguments
from training.rlhf.reporter import is_main_process
from training.runkinds import run_kind

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_model_reference(model: str) -> None:
    """A local path must exist; anything else must look like a hub id (owner/name)."""
    path = Path(model).expanduser()
    if path.exists():
        return
    if model.startswith((".", "/", "~")) or "\\" in model or not HUB_ID.match(model):
        raise CommandError(f"Model not found: {model} (neither a local directory nor a hub id like owner/name).")


def default_prompt_format(values: dict[str, Any], *, kind: str, reward_model: str | None = None) -> None:
    """A command given neither --prompt-format nor --system-prompt takes the format its input records, read from
    files so every process of a multi-process run takes the same: train_rm the snapshot manifest's (the
    project's, as export_rankings wrote it), train_ppo the reward model's (reward_model.json; an ensemble's
    first member). Nothing recorded: the default, plain."""
    if "prompt_format" in values or "system_prompt" in values:
        return
    if kind == "rm":
        from training.rlhf.data import snapshot_prompt_format

        recorded = snapshot_prompt_format(values["dataset"]) if values.get("dataset") else None
    else:
        from training.rlhf.reward_model import saved_prompt_format
        from training.rlhf.rm_ensemble import resolve_reward_models

        try:
            recorded = saved_prompt_format(resolve_reward_models(reward_model)[0]) if reward_model else None
        except (OSError, ValueError, IndexError):
            recorded = None  # not a reward model directory: the pipeline and the trainer say so
    if recorded is not None:
        values["prompt_format"], values["system_prompt"] = recorded.kind, recorded.system_prompt


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


def dataset_source(options: dict[str, Any], *, values: dict[str, Any]):
    """`--snapshot` (returned, its path put in `values["dataset"]`) or `--dataset PATH`, exactly one; and
    `--model`. The snapshot's kind is checked by the run pipeline (a rankings snapshot trains an RM only)."""
    snapshot = None
    if options.get("snapshot") and options.get("dataset"):
        raise CommandError("Give --snapshot or --dataset, not both.")
    if options.get("snapshot"):
        snapshot = resolve_snapshot(options["snapshot"])
        values["dataset"] = snapshot.path
    elif options.get("dataset"):
        values["dataset"] = options["dataset"]
    else:
        raise CommandError("Give --snapshot ID_OR_HASH or --dataset PATH (or --run-id N).")
    if not options.get("model"):
        raise CommandError("--model is required (a local checkpoint directory or a hub id).")
    values["model"] = options["model"]
    return snapshot


def launch_error(exc: launching.LaunchError) -> CommandError:
    """A refused launch as the command reports it: the option's flag, then the reason."""
    if exc.field:
        return CommandError(f"--{exc.field.replace('_', '-')}: {exc}")
    return CommandError(str(exc))


def queued(*, kind: str, options: dict[str, Any], config_names: set[str], main: bool) -> tuple[TrainingRun, Any]:
    """`--run-id N`: the queued run and its stored config (no other training option may be given)."""
    if any(options.get(name) is not None for name in config_names) or options.get("name"):
        raise CommandError("--run-id executes the run's stored config; give no other training options.")
    try:
        return services.queued_run(run_id=options["run_id"], kind=kind, main=main)
    except services.NotExecutable as exc:
        raise CommandError(str(exc)) from exc


def recorded(*, kind: str, values: dict[str, Any], out, **sources: Any) -> tuple[TrainingRun, Any]:
    """A new run from the command's options, through the run pipeline (recorded, not queued)."""
    try:
        return launching.record_run(kind=kind, options=values, output_dir=out, **sources)
    except launching.LaunchError as exc:
        raise launch_error(exc) from exc


def unrecorded(*, kind: str, values: dict[str, Any], out) -> Any:
    """The config of a non-main process that trains without a run row (it needs the same --out as rank 0)."""
    if not out:
        raise CommandError("Under accelerate launch give --out (or --run-id), so every process writes to the "
                           "same directory.")
    try:
        return launching.build_config(kind=kind, values={**values, "output_dir": str(Path(out).resolve())})
    except launching.LaunchError as exc:
        raise launch_error(exc) from exc


def train(*, kind: str, run: TrainingRun | None, config: Any, main: bool, progress: bool,
          echo) -> TrainingRun | None:
    """Train here: on the main process recorded on `run` with the console reporter; elsewhere reporting nowhere.
    Returns the run as it ended (None on other processes)."""
    if not main or run is None:
        services.execute_without_record(kind=kind, config=config)
        return None
    try:
        services.execute_run(run=run, config=config, echo=echo, progress=progress)
    except Exception as exc:
        raise CommandError(f"{run} failed: {exc} (the traceback is stored on the run)") from exc
    run.refresh_from_db()
    return run



class TrainCommand(BaseCommand):
    """The skeleton both train commands share: the common options, `--run-id` or a new run, training here, and
    the closing report. Subclasses name their `kind`, their own source options and how a new run is made."""

    kind = ""
    own_fields: set[str] = set()  # config fields the command names itself (the rest are generated options)
    source_options: set[str] = set()  # non-config options that choose what to train (refused with --run-id)

    def add_sources(self, group) -> None:
        raise NotImplementedError

    def new_run(self, options: dict[str, Any], *, values: dict[str, Any], main: bool) -> tuple[Any, Any]:
        raise NotImplementedError

    def report(self, run: TrainingRun) -> None:
        raise NotImplementedError

    def report_stopped(self, run: TrainingRun) -> bool:
        """The closing line of a run stopped on request (True), where its checkpoint is; else False."""
        if run.status != TrainingRun.Status.CANCELLED:
            return False
        self.stdout.write(self.style.WARNING(
            f"{run} stopped on request at step {run.summary.get('step', '?')}; resume it from its run page. Its "
            f"checkpoint is in {Path(run.output_dir) / 'checkpoints'}."
        ))
        return True

    def add_arguments(self, parser):
        source = parser.add_argument_group("what to train")
        self.add_sources(source)
        source.add_argument("--out", "--output-dir", dest="output_dir",
                            help=f"Output directory (default: <WORKBENCH_RUNS_ROOT>/{self.kind}-<run id>).")
        source.add_argument("--name", default="", help="A name for the run on the dashboard.")
        source.add_argument("--run-id", type=int, help="Execute this queued run with its stored config instead.")
        source.add_argument("--no-progress", action="store_true", help="No progress bar (log lines only).")
        add_config_arguments(parser, run_kind(self.kind).config_class, exclude=self.own_fields)

    def handle(self, *args, **options):
        main = is_main_process()
        names = {f.name for f in dataclasses.fields(run_kind(self.kind).config_class)}
        if options.get("run_id") is not None:
            run, config = queued(kind=self.kind, options=options, config_names=names | self.source_options,
                                 main=main)
        else:
            values = {k: v for k, v in options.items() if k in names - self.own_fields and v is not None}
            run, config = self.new_run(options, values=values, main=main)
        run = train(kind=self.kind, run=run, config=config, main=main, progress=not options["no_progress"],
                    echo=self.stdout.write)
        if run is not None:
            self.report(run)
