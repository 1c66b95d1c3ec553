"""`python manage.py train_sft`: supervised fine-tuning on demonstrations as a recorded TrainingRun (kind sft),
the first of the three stages; its model then starts the loop (the PPO policy and reference, the model that
samples responses for ranking, the reward model's backbone).

    manage.py train_sft --snapshot 12 --model var/models/tiny          (a recorded demonstrations snapshot)
    manage.py train_sft --dataset var/data/demos.jsonl --model gpt2 --out var/runs/sft-mine --lora true
    manage.py train_sft --run-id 7                                      (a queued run, as the worker does)

Argument parsing only, like train_rm: a new run goes through the run pipeline (`training.launching.record_run`,
which refuses a rankings snapshot and takes the prompt format from the snapshot's manifest unless
--prompt-format names one), a queued one is loaded by `training.services.queued_run`, and `training.cli.train`
trains it here with the console reporter. Ctrl+C (or SIGTERM) once stops gracefully with a checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import CommandError

from training import cli, launching

# Options this command names itself (the rest come from SFTConfig).
OWN_FIELDS = {"dataset", "model", "output_dir"}


class Command(cli.TrainCommand):
    help = (
        "Fine-tune a causal language model on demonstrations (loss on the response tokens only) from an SFT "
        "snapshot (export_demonstrations) or a JSONL/Parquet file of prompt + response records, and record it as "
        "a training run: status, config, metrics every step, held-out loss and perplexity, before/after samples, "
        "the saved model. `--run-id N` executes a queued run from its stored config."
    )

    kind = "sft"
    own_fields = OWN_FIELDS
    source_options = {"snapshot"}

    def add_sources(self, source) -> None:
        source.add_argument("--snapshot", help="A recorded demonstrations (SFT) snapshot: its id or a prefix of its "
                                               "content hash.")
        source.add_argument("--dataset", help="Or a dataset path: an SFT snapshot directory or one JSONL/Parquet "
                                              "file of {prompt, response[, messages]} records.")
        source.add_argument("--model", help="The pre-trained causal LM to fine-tune: a local checkpoint directory "
                                            "or a hub id.")

    def new_run(self, options: dict, *, values: dict, main: bool):
        snapshot = cli.dataset_source(options, values=values)
        if not Path(values["dataset"]).exists():
            raise CommandError(f"Dataset not found: {values['dataset']}")
        cli.check_model_reference(values["model"])
        if values.get("tokenizer"):
            cli.check_model_reference(values["tokenizer"])
        if not main:  # the prompt format the main process takes from the manifest (files only, no database)
            try:
                values.update(launching.INPUTS["sft"](options=values, written=[])["config"])
            except launching.LaunchError as exc:
                raise cli.launch_error(exc) from exc
            return None, cli.unrecorded(kind="sft", values=values, out=options.get("output_dir"))
        run, config = cli.recorded(kind="sft", values=values, out=options.get("output_dir"), snapshot=snapshot,
                                   name=options.get("name") or "")
        self.stdout.write(f"Created {run} → {config.output_dir}")
        return run, config

    def report(self, run) -> None:
        if self.report_stopped(run):
            return
        evaluation = run.evaluation or {}
        figures = []
        for stage in ("before", "after"):
            loss = (evaluation.get(stage) or {}).get("loss")
            if loss is not None:
                figures.append(f"held-out loss {stage} {loss:.3f} (perplexity "
                               f"{evaluation[stage].get('perplexity') or float('nan'):.2f})")
            oracle = ((evaluation.get(stage) or {}).get("samples") or {}).get("oracle")
            if oracle is not None:
                figures.append(f"oracle {stage} {oracle:+.3f}")
        text = (": " + ", ".join(figures)) if figures else ""
        self.stdout.write(self.style.SUCCESS(f"{run} {run.status}{text}. Model: {run.output('model') or '-'}"))
