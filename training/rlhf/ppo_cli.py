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

from collections.abc import Sequence
from typing import Any

from training.rlhf.configs import ConfigError
from training.rlhf.plain_cli import build_parser, run_cli
from training.rlhf.ppo_config import PPOConfig
from training.rlhf.reporter import cli_reporter

PARSER = dict(prog="python -m training.rlhf.ppo_cli", config_class=PPOConfig,
              description="RLHF with PPO (InstructGPT recipe; design.md §7): actor and critic trained against a "
                          "frozen reward model with a KL penalty to the starting policy; resumable; evaluated before "
                          "and after on held-out prompts.")


def summary(result: Any) -> dict[str, Any]:
    return {"output_dir": str(result.output_dir), "iterations": result.iterations, "stopped": result.stopped,
            "policy": str(result.policy_dir) if result.policy_dir else None,
            "before": result.evaluation.get("before"), "after": result.evaluation.get("after")}


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(argv, parser=build_parser(**PARSER), config_class=PPOConfig,
                   trainer="training.rlhf.ppo_trainer:train_ppo", errors=(ConfigError, OSError, ValueError),
                   summary=summary,
                   make_reporter=lambda out, *, echo: cli_reporter(out, echo=echo), needs_output_dir=False)


if __name__ == "__main__":
    raise SystemExit(main())
