"""Fine-tune on demonstrations without Django:

    python -m training.rlhf.sft_cli --dataset var/data/sft-1 --model var/models/tiny --output-dir var/runs/sft-a
    accelerate launch -m training.rlhf.sft_cli --dataset … --model … --output-dir …     (several GPUs)

Every SFTConfig field is an option (`--help` lists them). Progress goes to stdout and to
OUTPUT_DIR/events.jsonl; creating OUTPUT_DIR/STOP asks the run to stop gracefully (it checkpoints; rerun
with `--resume last` to continue). The prompt format is the option's (manage.py train_sft takes the snapshot's).
The fine-tuned model is OUTPUT_DIR/model.

Exit status: 0 trained and saved, 2 bad option or data, 3 stopped on request before the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from training.rlhf.chat_format import PromptFormatError
from training.rlhf.configs import ConfigError
from training.rlhf.data import DatasetError
from training.rlhf.plain_cli import build_parser, run_cli
from training.rlhf.reporter import cli_reporter
from training.rlhf.sft_config import SFTConfig

PARSER = dict(prog="python -m training.rlhf.sft_cli", config_class=SFTConfig,
              description="Supervised fine-tuning of a causal LM on demonstrations (loss on the response tokens "
                          "only); writes OUTPUT_DIR/model, which AutoModelForCausalLM loads.")


def summary(result: Any) -> dict[str, Any]:
    out = {"output_dir": str(result.output_dir), "steps": result.steps, "stopped": result.stopped,
           "model": str(result.model_dir) if result.model_dir else None}
    for stage in ("before", "after"):
        figures = result.evaluation.get(stage, {})
        if "loss" in figures:
            out[f"{stage}_loss"], out[f"{stage}_perplexity"] = figures["loss"], figures["perplexity"]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(argv, parser=build_parser(**PARSER), config_class=SFTConfig,
                   trainer="training.rlhf.sft_trainer:train_sft",
                   errors=(ConfigError, DatasetError, PromptFormatError, OSError), summary=summary,
                   make_reporter=lambda out, *, echo: cli_reporter(out, echo=echo))


if __name__ == "__main__":
    raise SystemExit(main())
