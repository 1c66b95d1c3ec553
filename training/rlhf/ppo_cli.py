"""Train a policy with PPO without Django:

    python -m training.rlhf.ppo_cli --policy var/models/tiny --reward-model var/runs/rm-3 \
        --prompts var/data/prompts.jsonl --output-dir var/runs/ppo-a
    accelerate launch -m training.rlhf.ppo_cli --policy … --reward-model … --prompts … --output-dir …

Every PPOConfig field is an option (`--help` lists them with their help text and defaults). Progress goes to
stdout and to OUTPUT_DIR/events.jsonl; creating OUTPUT_DIR/STOP asks the run to stop gracefully (it writes a
checkpoint; rerun with `--resume last` to continue). The final policy is OUTPUT_DIR/policy (Hugging Face
format), the value model OUTPUT_DIR/value_model, the before/after evaluation OUTPUT_DIR/evaluation.json.

Exit status: 0 trained and saved, 2 bad option or input, 3 stopped on request before the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from training.rlhf.configs import ConfigError, add_config_arguments, config_from_args
from training.rlhf.ppo_config import PPOConfig
from training.rlhf.reporter import cli_reporter, is_main_process


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.rlhf.ppo_cli",
        description="RLHF with PPO (InstructGPT recipe; design.md §7): actor and critic trained against a frozen "
                    "reward model with a KL penalty to the starting policy; resumable; evaluated before and "
                    "after on held-out prompts.",
    )
    add_config_arguments(parser, PPOConfig)
    parser.add_argument("--quiet", action="store_true", help="Do not echo progress lines to stdout.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(PPOConfig, args)
    except ConfigError as exc:
        parser.error(str(exc))
    from training.rlhf.ppo_trainer import train_ppo

    reporter = cli_reporter(config.output_dir, echo=not args.quiet)
    try:
        result = train_ppo(config, reporter=reporter)
    except (ConfigError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if is_main_process() and not args.quiet:
        summary = {"output_dir": str(result.output_dir), "iterations": result.iterations, "stopped": result.stopped,
                   "policy": str(result.policy_dir) if result.policy_dir else None,
                   "before": result.evaluation.get("before"), "after": result.evaluation.get("after")}
        print(json.dumps(summary))
    return 3 if result.stopped else 0


if __name__ == "__main__":
    raise SystemExit(main())
