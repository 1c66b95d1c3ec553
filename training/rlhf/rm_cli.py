"""Train a reward model without Django:

    python -m training.rlhf.rm_cli --dataset var/data/snap-1 --model var/models/tiny --output-dir var/runs/rm-a
    accelerate launch -m training.rlhf.rm_cli --dataset … --model … --output-dir …     (several GPUs)

Every RewardModelConfig field is an option (`--help` lists them). Progress goes to stdout and to
OUTPUT_DIR/events.jsonl; creating OUTPUT_DIR/STOP asks the run to stop gracefully (it checkpoints; rerun
with `--resume last` to continue).

Exit status: 0 trained and saved, 2 bad option or data, 3 stopped on request before the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from training.rlhf.configs import ConfigError
from training.rlhf.data import DatasetError
from training.rlhf.plain_cli import build_parser, run_cli
from training.rlhf.reporter import cli_reporter
from training.rlhf.rm_config import RewardModelConfig

PARSER = dict(prog="python -m training.rlhf.rm_cli", config_class=RewardModelConfig,
              description="Train a K-wise reward model (InstructGPT loss) on ranking data; writes a directory that "
                          "RewardModel.from_pretrained loads.")


def summary(result: Any) -> dict[str, Any]:
    out = {"output_dir": str(result.output_dir), "steps": result.steps, "stopped": result.stopped}
    heldout = result.evaluation.get("heldout", {})
    if heldout:
        out["heldout_accuracy"] = heldout.get("accuracy")
        if "oracle" in heldout:
            out["oracle_accuracy"] = heldout["oracle"].get("accuracy")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(argv, parser=build_parser(**PARSER), config_class=RewardModelConfig,
                   trainer="training.rlhf.rm_trainer:train_reward_model", errors=(ConfigError, DatasetError, OSError),
                   summary=summary,
                   make_reporter=lambda out, *, echo: cli_reporter(out, echo=echo))


if __name__ == "__main__":
    raise SystemExit(main())
