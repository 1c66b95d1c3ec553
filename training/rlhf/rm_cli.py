"""Train a reward model without Django:

    python -m training.rlhf.rm_cli --dataset var/data/snap-1 --model var/models/tiny --output-dir var/runs/rm-a
    accelerate launch -m training.rlhf.rm_cli --dataset … --model … --output-dir …     (several GPUs)

Every RewardModelConfig field is an option (`--help` lists them). Progress goes to stdout and to
OUTPUT_DIR/events.jsonl; creating OUTPUT_DIR/STOP asks the run to stop gracefully (it checkpoints; rerun
with `--resume last` to continue).

Exit status: 0 trained and saved, 2 bad option or data, 3 stopped on request before the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from training.rlhf.configs import ConfigError, add_config_arguments, config_from_args
from training.rlhf.data import DatasetError
from training.rlhf.reporter import cli_reporter, is_main_process
from training.rlhf.rm_config import RewardModelConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.rlhf.rm_cli",
        description="Train a K-wise reward model (InstructGPT loss) on ranking data; writes a directory that "
                    "RewardModel.from_pretrained loads.",
    )
    add_config_arguments(parser, RewardModelConfig)
    parser.add_argument("--quiet", action="store_true", help="Do not echo progress lines to stdout.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(RewardModelConfig, args)
    except ConfigError as exc:
        parser.error(str(exc))
    if not config.output_dir:
        parser.error("--output-dir is required")
    from training.rlhf.rm_trainer import train_reward_model

    reporter = cli_reporter(config.output_dir, echo=not args.quiet)
    try:
        result = train_reward_model(config, reporter=reporter)
    except (ConfigError, DatasetError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if is_main_process() and not args.quiet:
        summary = {"output_dir": str(result.output_dir), "steps": result.steps, "stopped": result.stopped}
        heldout = result.evaluation.get("heldout", {})
        if heldout:
            summary["heldout_accuracy"] = heldout.get("accuracy")
            if "oracle" in heldout:
                summary["oracle_accuracy"] = heldout["oracle"].get("accuracy")
        print(json.dumps(summary))
    return 3 if result.stopped else 0


if __name__ == "__main__":
    raise SystemExit(main())
