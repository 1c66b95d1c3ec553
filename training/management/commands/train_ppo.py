"""`python manage.py train_ppo`: RLHF with PPO as a recorded TrainingRun (kind ppo).

    manage.py train_ppo --policy var/models/tiny --reward-model 3 --prompts "Demo reviews"
    manage.py train_ppo --policy gpt2 --reward-model var/runs/rm-3 --prompts var/data/prompts.jsonl --out var/runs/p
    manage.py train_ppo --run-id 9                                  (a queued run, as the dashboard's worker does)

`--reward-model` is a reward-model directory or the id of a reward-model run (the run is linked as the PPO
run's `reward_model_run`; a directory that an RM run reported writing is linked too). `--prompts` is a prompt
file (JSONL with "prompt", or text lines) or the name of an annotation project, whose prompts the run pipeline
exports to OUT/prompts.jsonl. Argument parsing only: `training.launching.record_run` records the run,
`training.cli.train` trains it here with the console reporter and ends with the before/after evaluation. Under
`accelerate launch` only the main process writes to the database. Ctrl+C (SIGINT) or SIGTERM once stops
gracefully with a checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError

from training import cli
from training.launching import PROMPTS_FILE
from training.models import TrainingRun

OWN_FIELDS = {"policy", "reward_model", "prompts", "output_dir"}
PROMPT_FILE_WAIT_SECONDS = 600


def reward_model_source(value: str) -> dict[str, Any]:
    """`--reward-model`: a reward-model run (by id) or a reward-model directory, as the pipeline takes it."""
    value = value.strip()
    if value.isdigit() and not Path(value).exists():
        run = TrainingRun.objects.filter(pk=int(value)).first()
        if run is None:
            raise CommandError(f"No training run with id {value}.")
        if run.kind != TrainingRun.Kind.RM:
            raise CommandError(f"Run {run.pk} is a {run.get_kind_display()} run, not a reward-model run.")
        if run.status != TrainingRun.Status.SUCCEEDED:
            raise CommandError(f"Reward-model run {run.pk} has not succeeded ({run.status}).")
        return {"reward_model_run": run}
    path = Path(value).expanduser()
    if not (path / "reward_model.json").exists() and not (path / "ensemble.json").exists():
        raise CommandError(f"Not a reward model directory (no reward_model.json): {value}. Give a directory "
                           "written by train_rm, an ensemble directory (ensemble.json) or the id of a "
                           "reward-model run.")
    return {"reward_model": str(path.resolve())}


def prompts_source(value: str) -> dict[str, Any]:
    """`--prompts`: a prompt file, or the name of a project whose prompts the pipeline exports."""
    from annotate.models import Project

    if Path(value).expanduser().is_file():
        return {"prompts": str(Path(value).expanduser().resolve())}
    project = Project.objects.filter(name=value).first()
    if project is None:
        raise CommandError(f"--prompts: {value!r} is neither a file nor the name of a project.")
    return {"prompt_project": project}


def check_inputs(values: dict[str, Any]) -> None:
    """The operator's mistakes, caught before a run is recorded."""
    cli.check_model_reference(values["policy"])
    for name in ("prompts", "eval_prompts", "ptx_dataset"):
        if values.get(name) and not Path(values[name]).is_file():
            raise CommandError(f"--{name.replace('_', '-')}: file not found: {values[name]}")
    resume = values.get("resume") or ""
    if resume not in ("", "last", "latest") and not Path(resume).is_dir():
        raise CommandError(f"--resume: checkpoint directory not found: {resume}")


def wait_for_file(path: Path, *, seconds: float = PROMPT_FILE_WAIT_SECONDS) -> None:
    """A non-main process waits for the prompt file the main process exports."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            raise CommandError(f"Timed out waiting for {path} (written by the main process).")
        time.sleep(0.5)


class Command(cli.TrainCommand):
    help = (
        "Train a policy with PPO against a reward model (InstructGPT recipe, design.md §7) and record it as a "
        "training run: config, metrics every iteration, sample tables, checkpoints, the before/after "
        "evaluation and the traceback on failure. `--run-id N` executes a queued run from its stored config."
    )

    kind = "ppo"
    own_fields = OWN_FIELDS
    source_options = set()

    def add_sources(self, source) -> None:
        source.add_argument("--policy", help="The policy to start from: a local checkpoint directory or a hub id.")
        source.add_argument("--reward-model", dest="reward_model",
                            help="A reward-model directory (train_rm's output) or the id of a reward-model run.")
        source.add_argument("--prompts", help="A prompt file (JSONL with \"prompt\", or one prompt per line) or the "
                                              "name of an annotation project (its prompts are exported first).")

    def new_run(self, options: dict[str, Any], *, values: dict[str, Any], main: bool):
        for flag in ("policy", "reward_model", "prompts"):
            if not options.get(flag):
                raise CommandError(f"--{flag.replace('_', '-')} is required (or --run-id N).")
        values["policy"] = options["policy"]
        sources = {**reward_model_source(options["reward_model"]), **prompts_source(options["prompts"])}
        values.update({k: sources.pop(k) for k in ("reward_model", "prompts") if k in sources})
        check_inputs(values)
        run_dir = sources["reward_model_run"].output("reward_model") if "reward_model_run" in sources else None
        cli.default_prompt_format(values, kind="ppo", reward_model=values.get("reward_model") or run_dir)
        out = options.get("output_dir")
        if not main:
            if "reward_model_run" in sources:
                values["reward_model"] = str(sources["reward_model_run"].output("reward_model") or "")
            if "prompt_project" in sources and out:
                wait_for_file(Path(out).resolve() / PROMPTS_FILE)
                values["prompts"] = str(Path(out).resolve() / PROMPTS_FILE)
            return None, cli.unrecorded(kind="ppo", values=values, out=out)
        run, config = cli.recorded(kind="ppo", values=values, out=out, name=options.get("name") or "", **sources)
        if "prompt_project" in sources:
            self.stdout.write(f"Exported the prompts of project {sources['prompt_project'].name!r} to {config.prompts}")
        linked = f" (reward model: {run.reward_model_run})" if run.reward_model_run else ""
        self.stdout.write(f"Created {run}{linked} → {config.output_dir}")
        return run, config

    def report(self, run: TrainingRun) -> None:
        if run.status == TrainingRun.Status.CANCELLED:
            self.stdout.write(self.style.WARNING(
                f"{run} stopped on request at iteration {run.summary.get('step', '?')}; its checkpoint is in "
                f"{Path(run.output_dir) / 'checkpoints'} (resume with --resume last)."
            ))
            return
        self.stdout.write(self.style.SUCCESS(f"{run} {run.status}. Policy: {run.outputs.get('policy', '—')}"))
        evaluation = run.evaluation or {}
        before, after = evaluation.get("before") or {}, evaluation.get("after") or {}
        for name in ("rm_score", "oracle_score", "kl", "win_rate", "response_length", "eos_rate"):
            if name in before or name in after:
                self.stdout.write(f"  {name:16} before {_fmt(before.get(name))}  after {_fmt(after.get(name))}")


def _fmt(value: Any) -> str:
    return f"{value:9.4f}" if isinstance(value, int | float) else f"{'—':>9}"
