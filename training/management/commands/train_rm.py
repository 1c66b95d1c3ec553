"""`python manage.py train_rm`: train a K-wise reward model as a recorded TrainingRun (kind rm).

    manage.py train_rm --snapshot 12 --model var/models/tiny                  (a recorded DatasetSnapshot)
    manage.py train_rm --dataset var/data/my-rankings.jsonl --model gpt2 --out var/runs/rm-mine --lora true
    manage.py train_rm --run-id 7                                             (a queued run, as the worker does)

Argument parsing only: a new run goes through the run pipeline (`training.launching.record_run`), a queued one
is loaded by `training.services.queued_run`, and `training.cli.train` trains it here with the console reporter
(running → succeeded, failed with the traceback, or cancelled). Under `accelerate launch` only the main process
touches the database. Ctrl+C (or SIGTERM) once stops gracefully with a checkpoint; the run ends as cancelled.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.management.base import CommandError

from training import cli, launching
from training.rlhf.rm_config import CALIBRATION_SETS

# Options this command names itself (the rest come from RewardModelConfig).
OWN_FIELDS = {"dataset", "model", "output_dir", "calibration_set"}


def check_inputs(values: dict) -> None:
    """The operator's mistakes, caught before a run is recorded."""
    if not Path(values["dataset"]).exists():
        raise CommandError(f"Dataset not found: {values['dataset']}")
    cli.check_model_reference(values["model"])
    if values.get("tokenizer"):
        cli.check_model_reference(values["tokenizer"])
    calibration = values.get("calibration_set")
    if calibration and calibration not in CALIBRATION_SETS + launching.LAUNCH_CALIBRATION_SETS \
            and not Path(calibration).is_file():
        raise CommandError(f"Calibration file not found: {calibration}")


class Command(cli.TrainCommand):
    help = (
        "Train a reward model with the InstructGPT K-wise loss on a dataset snapshot (or any ranking dataset) "
        "and record it as a training run: status, config, metrics every step, evaluation, output directory, "
        "and the traceback on failure. `--run-id N` executes a queued run from its stored config."
    )

    kind = "rm"
    own_fields = OWN_FIELDS
    source_options = {"snapshot"}

    def add_sources(self, source) -> None:
        source.add_argument("--snapshot", help="A recorded DatasetSnapshot: its id or a prefix of its content hash.")
        source.add_argument("--dataset", help="Or a dataset path: snapshot directory, kwise/ directory, or one "
                                              "JSONL/Parquet file.")
        source.add_argument("--model", help="Backbone: a local checkpoint directory or a hub id.")
        source.add_argument(
            "--calibration-set", dest="calibration_set",
            help="Rewards of these responses are shifted to mean 0 after training (InstructGPT §3.5). Default "
                 "'auto': the accepted demonstrations of the snapshot's project when it has any (exported into the "
                 "run's directory), else 'heldout' (every response of the eval split); or 'demonstrations' "
                 "(insist on them), 'train', 'none', or a JSONL/Parquet file of prompt + response.")

    def new_run(self, options: dict, *, values: dict, main: bool):
        snapshot = cli.dataset_source(options, values=values)
        if options.get("calibration_set"):
            values["calibration_set"] = options["calibration_set"]
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            # Every process must build the same config, and only the main one may read the database: 'auto'
            # means the held-out split here; the demonstrations need a queued run (--run-id) or a file.
            if values.get("calibration_set") == launching.CALIBRATION_DEMONSTRATIONS:
                raise CommandError("Under accelerate launch, calibrate on demonstrations through a queued run "
                                   "(--run-id) or give their file as --calibration-set.")
            if values.get("calibration_set", launching.CALIBRATION_AUTO) == launching.CALIBRATION_AUTO:
                values["calibration_set"] = "heldout"
        cli.default_prompt_format(values, kind="rm")
        if not main:
            return None, cli.unrecorded(kind="rm", values=values, out=options.get("output_dir"))
        check_inputs(values)
        run, config = cli.recorded(kind="rm", values=values, out=options.get("output_dir"), snapshot=snapshot,
                                   name=options.get("name") or "")
        self.stdout.write(f"Created {run} → {config.output_dir}")
        return run, config

    def report(self, run) -> None:
        if self.report_stopped(run):
            return
        heldout = (run.evaluation or {}).get("heldout", {})
        figures = ""
        if heldout:
            figures = f": held-out accuracy {heldout.get('accuracy', float('nan')):.3f}"
            if "oracle" in heldout:
                figures += f", against the oracle {heldout['oracle']['accuracy']:.3f}"
        self.stdout.write(self.style.SUCCESS(f"{run} {run.status}{figures}. Reward model: {run.output_dir}"))
