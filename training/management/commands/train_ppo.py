"""`python manage.py train_ppo`: RLHF with PPO as a recorded TrainingRun (kind ppo).

    manage.py train_ppo --policy var/models/tiny --reward-model 3 --prompts "Demo reviews"
    manage.py train_ppo --policy gpt2 --reward-model var/runs/rm-3 --prompts var/data/prompts.jsonl --out var/runs/p
    manage.py train_ppo --run-id 9                                  (a queued run, as the dashboard's worker does)

`--reward-model` is a reward-model directory or the id of a reward-model run (the run is linked as the PPO
run's `reward_model_run`; a directory that is an RM run's output is linked too). `--prompts` is a prompt file
(JSONL with "prompt", or text lines) or the name of an annotation project, whose prompts are written to
OUT/prompts.jsonl first. The training is `training.rlhf.ppo_trainer.train_ppo`; it runs inside
`training.services.executing` (running → succeeded, failed with the traceback, or cancelled), reports metrics
every iteration, sample tables and checkpoints, and ends with the before/after evaluation. Under `accelerate
launch` only the main process writes to the database; the others train with a NullReporter. Ctrl+C (SIGINT)
or SIGTERM once stops gracefully with a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from training.management.commands.train_rm import ProgressReporter, check_model_reference, is_main_process
from training.models import TrainingRun
from training.rlhf.configs import ConfigError, add_config_arguments, config_from_dict, config_to_dict
from training.rlhf.ppo_config import PPOConfig
from training.rlhf.reporter import NullReporter

OWN_FIELDS = {"policy", "reward_model", "prompts", "output_dir"}
PROMPTS_FILE = "prompts.jsonl"
PROMPT_FILE_WAIT_SECONDS = 600


class PPOProgress(ProgressReporter):
    """The run's reporter plus a progress bar over iterations and the graceful stop on SIGINT/SIGTERM."""

    def on_start(self, *, total_steps: int, start_step: int) -> None:
        self.inner.on_start(total_steps=total_steps, start_step=start_step)
        if self.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="it", disable=None, dynamic_ncols=True,
                            desc="train_ppo")

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.inner.on_metrics(step, metrics)
        if self.bar is not None:
            self.bar.update(max(0, step - self.bar.n))
            self.bar.set_postfix(reward=f"{metrics.get('reward', float('nan')):.3f}",
                                 kl=f"{metrics.get('kl', float('nan')):.3f}")


def resolve_reward_model(value: str) -> tuple[str, TrainingRun | None]:
    """(reward-model directory, its RM run or None) from a directory or an RM run id."""
    from training import selectors

    value = value.strip()
    if value.isdigit() and not Path(value).exists():
        run = TrainingRun.objects.filter(pk=int(value)).first()
        if run is None:
            raise CommandError(f"No training run with id {value}.")
        if run.kind != TrainingRun.Kind.RM:
            raise CommandError(f"Run {run.pk} is a {run.get_kind_display()} run, not a reward-model run.")
        if run.status != TrainingRun.Status.SUCCEEDED:
            raise CommandError(f"Reward-model run {run.pk} has not succeeded ({run.status}).")
        directory = selectors.run_model_dir(run)
        if directory is None or not (directory / "reward_model.json").exists():
            raise CommandError(f"Reward-model run {run.pk} left no reward model in {run.output_dir}.")
        return str(directory.resolve()), run
    path = Path(value).expanduser()
    if not (path / "reward_model.json").exists():
        raise CommandError(f"Not a reward model directory (no reward_model.json): {value}. Give a directory "
                           "written by train_rm or the id of a reward-model run.")
    resolved = path.resolve()
    linked = None
    for run in TrainingRun.objects.filter(kind=TrainingRun.Kind.RM).exclude(output_dir="").order_by("-created_at"):
        directory = selectors.run_model_dir(run)
        if directory is not None and directory.resolve() == resolved:
            linked = run
            break
    return str(resolved), linked


def find_project(name: str):
    from annotate.models import Project

    return Project.objects.filter(name=name).first()


def write_project_prompts(project, path: Path) -> int:
    """The project's prompts (distinct texts of every round, with their metadata) as a JSONL prompt file,
    written atomically. Returns how many."""
    seen: set[str] = set()
    lines = []
    for prompt in project.prompts.order_by("pk").iterator(chunk_size=2000):
        if prompt.text_hash in seen:
            continue
        seen.add(prompt.text_hash)
        lines.append(json.dumps({"id": prompt.external_id or str(prompt.pk), "prompt": prompt.text,
                                 "metadata": prompt.metadata}, ensure_ascii=False))
    if not lines:
        raise CommandError(f"Project {project.name!r} has no prompts.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
    return len(lines)


def wait_for_file(path: Path, *, seconds: float = PROMPT_FILE_WAIT_SECONDS) -> None:
    """A non-main process waits for the prompt file the main process writes."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            raise CommandError(f"Timed out waiting for {path} (written by the main process).")
        time.sleep(0.5)


def check_inputs(config: PPOConfig, *, prompts_exported: bool = False) -> None:
    """The operator's mistakes, caught before a run is recorded."""
    check_model_reference(config.policy)
    for name in ("prompts", "eval_prompts", "ptx_dataset"):
        value = getattr(config, name)
        if name == "prompts" and prompts_exported:
            continue
        if value and not Path(value).is_file():
            raise CommandError(f"--{name.replace('_', '-')}: file not found: {value}")
    if config.resume not in ("", "last", "latest") and not Path(config.resume).is_dir():
        raise CommandError(f"--resume: checkpoint directory not found: {config.resume}")


def _config(values: dict[str, Any]) -> PPOConfig:
    try:
        return PPOConfig(**values)
    except ConfigError as exc:
        raise CommandError(f"--{exc.field.replace('_', '-')}: {str(exc).split(': ', 1)[-1]}") from exc


class Command(BaseCommand):
    help = (
        "Train a policy with PPO against a reward model (InstructGPT recipe, design.md §7) and record it as a "
        "training run: config, metrics every iteration, sample tables, checkpoints, the before/after "
        "evaluation and the traceback on failure. `--run-id N` executes a queued run from its stored config."
    )

    def add_arguments(self, parser):
        source = parser.add_argument_group("what to train")
        source.add_argument("--policy", help="The policy to start from: a local checkpoint directory or a hub id.")
        source.add_argument("--reward-model", dest="reward_model",
                            help="A reward-model directory (train_rm's output) or the id of a reward-model run.")
        source.add_argument("--prompts", help="A prompt file (JSONL with \"prompt\", or one prompt per line) or the "
                                              "name of an annotation project (its prompts are exported first).")
        source.add_argument("--out", "--output-dir", dest="output_dir",
                            help="Output directory (default: <WORKBENCH_RUNS_ROOT>/ppo-<run id>).")
        source.add_argument("--name", default="", help="A name for the run on the dashboard.")
        source.add_argument("--run-id", type=int, help="Execute this queued PPO run with its stored config instead.")
        source.add_argument("--no-progress", action="store_true", help="No progress bar (log lines only).")
        add_config_arguments(parser, PPOConfig, exclude=OWN_FIELDS)

    def handle(self, *args, **options):
        main = is_main_process()
        run, config = self.prepare(options, main=main)
        self.run_training(run, config, main=main, progress=not options["no_progress"])

    # --- the run --------------------------------------------------------------------------------------------

    def prepare(self, options: dict[str, Any], *, main: bool) -> tuple[TrainingRun | None, PPOConfig]:
        if options.get("run_id") is not None:
            return self.prepare_queued(options, main=main)
        return self.prepare_new(options, main=main)

    def prepare_queued(self, options: dict[str, Any], *, main: bool) -> tuple[TrainingRun, PPOConfig]:
        """An existing queued run: its stored config (the reward model may be a run id, the prompts a project
        name, as on the command line)."""
        from training.services import default_output_dir

        names = {f.name for f in dataclasses.fields(PPOConfig)}
        if any(options.get(k) is not None for k in names) or options.get("name"):
            raise CommandError("--run-id executes the run's stored config; give no other training options.")
        run = TrainingRun.objects.filter(pk=options["run_id"]).select_related("reward_model_run", "project").first()
        if run is None:
            raise CommandError(f"No training run with id {options['run_id']}.")
        if run.kind != TrainingRun.Kind.PPO:
            raise CommandError(f"Run {run.pk} is a {run.get_kind_display()} run, not a PPO run.")
        if run.status not in TrainingRun.ACTIVE_STATUSES:
            raise CommandError(f"Run {run.pk} has already ended ({run.status}); resume or retry it from the "
                               "dashboard, which creates a new run.")
        values = dict(run.config or {})
        out = values.get("output_dir") or run.output_dir or str(default_output_dir(run=run).resolve())
        values["output_dir"] = out
        rm_run = run.reward_model_run
        if values.get("reward_model"):
            values["reward_model"], found = resolve_reward_model(str(values["reward_model"]))
            rm_run = rm_run or found
        elif rm_run is not None:
            values["reward_model"], _ = resolve_reward_model(str(rm_run.pk))
        prompts = str(values.get("prompts") or "")
        if not Path(prompts).is_file():
            project = find_project(prompts) if prompts else run.project
            if project is None:
                raise CommandError(f"Run {run.pk}: prompts {prompts!r} is neither a file nor a project name.")
            values["prompts"] = str(Path(out) / PROMPTS_FILE)
            if main:
                write_project_prompts(project, Path(values["prompts"]))
            else:
                wait_for_file(Path(values["prompts"]))
        try:
            config = config_from_dict(PPOConfig, values)
        except (ConfigError, TypeError) as exc:
            raise CommandError(f"Run {run.pk} has an invalid config: {exc}") from exc
        check_inputs(config)
        if main and (run.output_dir != out or run.config != config_to_dict(config) or run.reward_model_run != rm_run):
            TrainingRun.objects.filter(pk=run.pk).update(output_dir=out, config=config_to_dict(config),
                                                         reward_model_run=rm_run)
            run.refresh_from_db()
        return run, config

    def prepare_new(self, options: dict[str, Any], *, main: bool) -> tuple[TrainingRun | None, PPOConfig]:
        """A new run from the options; non-main processes train without one (they need --out)."""
        from django.db import transaction

        from training.services import create_run, default_output_dir

        names = {f.name for f in dataclasses.fields(PPOConfig)}
        given = {k: v for k, v in options.items() if k in names - OWN_FIELDS and v is not None}
        for flag in ("policy", "reward_model", "prompts"):
            if not options.get(flag):
                raise CommandError(f"--{flag.replace('_', '-')} is required (or --run-id N).")
        given["policy"] = options["policy"]
        given["reward_model"], rm_run = resolve_reward_model(options["reward_model"])
        prompts = options["prompts"]
        project = None
        if Path(prompts).expanduser().is_file():
            given["prompts"] = str(Path(prompts).expanduser().resolve())
        else:
            project = find_project(prompts)
            if project is None:
                raise CommandError(f"--prompts: {prompts!r} is neither a file nor the name of a project.")
            given["prompts"] = prompts  # replaced by the exported file once the output directory is known
        if options.get("output_dir"):
            given["output_dir"] = str(Path(options["output_dir"]).expanduser().resolve())
        elif not main:
            raise CommandError("Under accelerate launch give --out (or --run-id), so every process writes to the "
                               "same directory.")
        else:
            given["output_dir"] = "(generated from the run id)"
        config = _config(given)  # validates every option before anything is written
        check_inputs(config, prompts_exported=project is not None)
        if not main:
            if project is not None:
                prompt_file = Path(config.output_dir) / PROMPTS_FILE
                wait_for_file(prompt_file)
                config = dataclasses.replace(config, prompts=str(prompt_file))
            return None, config
        with transaction.atomic():
            run = create_run(kind=TrainingRun.Kind.PPO, config=config_to_dict(config), name=options.get("name") or "",
                             project=project or getattr(rm_run, "project", None), reward_model_run=rm_run)
            out = given["output_dir"] if options.get("output_dir") else str(default_output_dir(run=run).resolve())
            config = dataclasses.replace(config, output_dir=out)
            if project is not None:
                count = write_project_prompts(project, Path(out) / PROMPTS_FILE)
                config = dataclasses.replace(config, prompts=str(Path(out) / PROMPTS_FILE))
                self.stdout.write(f"Wrote {count} prompts of project {project.name!r} to {config.prompts}")
            TrainingRun.objects.filter(pk=run.pk).update(output_dir=out, config=config_to_dict(config))
            run.refresh_from_db()
        linked = f" (reward model: {rm_run})" if rm_run else ""
        self.stdout.write(f"Created {run}{linked} → {config.output_dir}")
        return run, config

    def run_training(self, run: TrainingRun | None, config: PPOConfig, *, main: bool, progress: bool) -> None:
        from training.rlhf.ppo_trainer import train_ppo
        from training.services import RunCancelled, executing

        if not main or run is None:
            train_ppo(config, reporter=NullReporter())
            return
        try:
            with executing(run=run, echo=self.stdout.write) as database_reporter:
                reporter = PPOProgress(database_reporter, progress=progress)
                reporter.install_signal_handlers()
                try:
                    result = train_ppo(config, reporter=reporter)
                finally:
                    reporter.close()
                if result.stopped:
                    raise RunCancelled(f"stopped at iteration {result.iterations}; checkpoint {result.checkpoint}")
        except Exception as exc:
            raise CommandError(f"{run} failed: {exc} (the traceback is stored on the run)") from exc
        run.refresh_from_db()
        if run.status == TrainingRun.Status.CANCELLED:
            self.stdout.write(self.style.WARNING(
                f"{run} stopped on request at iteration {run.summary.get('step', '?')}; its checkpoint is in "
                f"{Path(run.output_dir) / 'checkpoints'} (resume with --resume last)."
            ))
            return
        self.stdout.write(self.style.SUCCESS(f"{run} {run.status}. Policy: {Path(run.output_dir) / 'policy'}"))
        evaluation = run.evaluation or {}
        before, after = evaluation.get("before") or {}, evaluation.get("after") or {}
        for name in ("rm_score", "oracle_score", "kl", "win_rate", "response_length", "eos_rate"):
            if name in before or name in after:
                self.stdout.write(f"  {name:16} before {_fmt(before.get(name))}  after {_fmt(after.get(name))}")


def _fmt(value: Any) -> str:
    return f"{value:9.4f}" if isinstance(value, int | float) else f"{'—':>9}"

