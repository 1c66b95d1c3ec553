"""The reward-model trainer's configuration: one dataclass drives the plain CLI (`python -m
training.rlhf.rm_cli`), `manage.py train_rm`, the dashboard's launch form and the config.json of each run."""

from __future__ import annotations

import math
from dataclasses import dataclass

from training.rlhf.chat_format import PROMPT_FORMATS, PromptFormat, format_of_config
from training.rlhf.configs import (
    BF16_CHOICES,
    ConfigError,
    check_booleans,
    check_choice,
    check_integer,
    check_number,
    check_required,
    check_strings,
    normalise_bf16,
    normalise_lora_target_modules,
    option,
)

CALIBRATION_SETS = ("heldout", "train", "none")
PADDING_SIDES = ("right", "left")


@dataclass
class RewardModelConfig:
    # --- what to train on, where to write ---
    model: str = option("", "Backbone to start from: a local checkpoint directory or a hub id (any AutoModel, "
                            "causal or encoder).")
    dataset: str = option("", "Ranking data: a snapshot directory (export_rankings), a kwise/ directory, or one "
                              "JSONL/Parquet file of K-wise (or pairwise chosen/rejected) records.")
    output_dir: str = option("", "Directory for the trained reward model, config.json, checkpoints/ and "
                                 "events.jsonl (the manage.py command fills it in from the run when empty).")
    tokenizer: str = option("", "Tokenizer path or hub id; empty uses the model's own.")
    prompt_format: str = option("plain", "How a prompt becomes the text the model reads: 'plain' (the text as-is, "
                                         "the model continues it) or 'chat' (the tokenizer's chat template, the "
                                         "prompt as the user turn); recorded with the reward model, which "
                                         "refuses to score prompts in another format. Left out, train_rm and the "
                                         "dashboard take the snapshot's (its project's) format.",
                                choices=PROMPT_FORMATS)
    system_prompt: str = option("", "System message put first under the chat template (prompt_format chat only; "
                                    "empty: none).")
    train_split: str = option("train", "Split of the dataset to train on.")
    eval_split: str = option("test", "Held-out split for evaluation and calibration; when the dataset has no such "
                                     "split, `heldout_fraction` of the prompts are held out instead.")
    heldout_fraction: float = option(0.1, "Share of prompts held out (split by prompt) when the dataset has no "
                                          "eval split; 0 trains on everything and skips evaluation.")
    # --- optimisation ---
    epochs: int = option(1, "Passes over the training rankings (InstructGPT: 1; more over-fits).")
    max_steps: int = option(0, "Stop after this many optimizer steps (0: run the full epochs).")
    learning_rate: float = option(1e-5, "Peak AdamW learning rate (reached after the warm-up, then cosine decay).")
    min_lr_ratio: float = option(0.0, "Final learning rate as a fraction of the peak (cosine decays to it).")
    warmup_ratio: float = option(0.03, "Fraction of the optimizer steps spent in linear warm-up.")
    weight_decay: float = option(0.0, "AdamW decoupled weight decay (never applied to biases and norms).")
    max_grad_norm: float = option(1.0, "Clip the global gradient norm to this value (0 disables clipping).")
    batch_size: int = option(8, "Rankings (prompts) per micro-batch; each brings all of its K responses, so a "
                                "batch holds up to batch_size·K sequences.")
    gradient_accumulation_steps: int = option(1, "Micro-batches accumulated into one optimizer step.")
    eval_batch_size: int = option(32, "Sequences per forward pass when scoring for evaluation and calibration.")
    max_length: int = option(512, "Longest prompt + response + EOS in tokens; longer ones keep their end "
                                  "(capped at the model's position limit).")
    padding_side: str = option("right", "Pad batches on this side (the score reads the last real token either "
                                        "way).", choices=PADDING_SIDES)
    # --- model options ---
    lora: bool = option(False, "Train LoRA adapters (peft) instead of the full backbone; the score head is "
                               "always fully trained.")
    lora_r: int = option(16, "LoRA rank r (each adapted d_out×d_in weight gets B·A with A: r×d_in, B: d_out×r).")
    lora_alpha: float = option(32.0, "LoRA scaling numerator (the update is scaled by alpha / r).")
    lora_dropout: float = option(0.0, "Dropout inside the LoRA adapters (the backbone's own dropout is always "
                                      "off).")
    lora_target_modules: list[str] = option(["all-linear"], "Module names LoRA adapts (e.g. c_attn c_proj, or "
                                                            "q_proj v_proj); 'all-linear' targets every linear "
                                                            "layer.")
    gradient_checkpointing: bool = option(False, "Recompute activations in the backward pass (less memory, "
                                                 "~30 % slower).")
    bf16: str = option("auto", "bfloat16 mixed precision: auto (on GPUs that support it), true, or false.",
                       choices=BF16_CHOICES)
    trust_remote_code: bool = option(False, "Allow model code from the checkpoint's repository (hub models only).")
    cpu: bool = option(False, "Run on the CPU even when a GPU is available (a host without one always does; "
                              "under torchrun the processes then form one gloo group).")
    # --- progress, checkpoints, evaluation ---
    eval_every: int = option(0, "Evaluate on the held-out split every N optimizer steps (0: only at the end).")
    checkpoint_every: int = option(200, "Write a resumable checkpoint every N optimizer steps (0: none, except "
                                        "on a graceful stop).")
    keep_checkpoints: int = option(2, "How many of the newest checkpoints to keep.")
    log_every: int = option(10, "Write a progress line every N steps (metrics are reported every step).")
    seed: int = option(42, "Random seed (head init, data order); each process adds its rank.")
    resume: str = option("", "Resume from a checkpoint: 'last' (newest in output_dir/checkpoints, or start fresh "
                             "when there is none) or a checkpoint directory; empty starts fresh.")
    # --- calibration ---
    calibration_set: str = option("heldout", "Rewards of these responses are shifted to mean 0 after training: "
                                             "'heldout' (every response of the eval split), 'train', 'none', or a "
                                             "JSONL/Parquet file of prompt + response (demonstrations).")
    calibration_gain: bool = option(False, "Also scale rewards to standard deviation 1 on the calibration set.")
    calibration_max_samples: int = option(4096, "Score at most this many calibration responses (a seeded "
                                                "random subset).")

    def __post_init__(self) -> None:
        check_required(self, "model", "dataset")
        check_strings(self, "output_dir", "tokenizer", "train_split", "eval_split", "resume", "calibration_set",
                      "system_prompt")
        format_of_config(self)
        if not self.train_split.strip():
            raise ConfigError("train_split", "is required")
        if self.train_split == self.eval_split:
            raise ConfigError("eval_split", "must differ from train_split")
        check_number(self, "heldout_fraction", 0.0, 1.0)
        for name, minimum in (("epochs", 1), ("max_steps", 0), ("batch_size", 1), ("gradient_accumulation_steps", 1),
                              ("eval_batch_size", 1), ("max_length", 8), ("lora_r", 1), ("eval_every", 0),
                              ("checkpoint_every", 0), ("keep_checkpoints", 1), ("log_every", 1), ("seed", 0),
                              ("calibration_max_samples", 2)):
            check_integer(self, name, minimum)
        check_number(self, "learning_rate", 0.0, 1.0, low_open=True)
        check_number(self, "min_lr_ratio", 0.0, 1.0, high_open=False)
        check_number(self, "warmup_ratio", 0.0, 1.0)
        check_number(self, "weight_decay", 0.0, math.inf)
        check_number(self, "max_grad_norm", 0.0, math.inf)
        check_number(self, "lora_alpha", 0.0, math.inf, low_open=True)
        check_number(self, "lora_dropout", 0.0, 1.0)
        check_choice(self, "padding_side", PADDING_SIDES)
        normalise_bf16(self)
        check_booleans(self, "lora", "gradient_checkpointing", "trust_remote_code", "calibration_gain", "cpu")
        normalise_lora_target_modules(self)
        if not self.calibration_set.strip():
            raise ConfigError("calibration_set", f"is required: {', '.join(CALIBRATION_SETS)} or a file path")
        if self.calibration_set == "heldout" and self.heldout_fraction == 0 and not self.eval_split:
            raise ConfigError("calibration_set", "'heldout' needs an eval split or a heldout_fraction > 0")

    @property
    def format(self) -> PromptFormat:
        """The prompt format of `prompt_format` + `system_prompt` (validated in __post_init__)."""
        return format_of_config(self)

    @property
    def use_calibration(self) -> bool:
        return self.calibration_set != "none"

    @property
    def calibration_file(self) -> str | None:
        """The calibration file path, when `calibration_set` names one."""
        return None if self.calibration_set in CALIBRATION_SETS else self.calibration_set
