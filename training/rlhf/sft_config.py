"""The SFT trainer's configuration: one dataclass drives `manage.py train_sft`, the dashboard's launch form and
the config.json of each run."""

from __future__ import annotations

import math
from dataclasses import dataclass

from training.rlhf.chat_format import PROMPT_FORMATS, PromptFormat, PromptFormatError
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


@dataclass
class SFTConfig:
    # --- what to train on, where to write ---
    model: str = option("", "Pre-trained causal LM to fine-tune: a local checkpoint directory or a hub id.")
    dataset: str = option("", "Demonstrations: an SFT snapshot directory (export_demonstrations: train.jsonl, "
                              "test.jsonl, manifest.json) or one JSONL file of {prompt, response[, messages]}.")
    output_dir: str = option("", "Directory for the fine-tuned model (model/), config.json, checkpoints/ and "
                                 "evaluation.json (the manage.py command fills it in from the run when empty).")
    tokenizer: str = option("", "Tokenizer path or hub id; empty uses the model's own.")
    train_split: str = option("train", "Split of the snapshot to train on.")
    eval_split: str = option("test", "Held-out split (loss, perplexity, before/after samples); when the dataset "
                                     "has none, `heldout_fraction` of the prompts are held out instead.")
    heldout_fraction: float = option(0.1, "Share of prompts held out (split by prompt) when the dataset has no "
                                          "eval split; 0 trains on everything and skips evaluation.")
    # --- the prompt format (every later stage must use the same) ---
    prompt_format: str = option("plain", "How a prompt becomes model input: 'plain' (the text as-is, the model "
                                         "continues it) or 'chat' (the tokenizer's chat template). manage.py "
                                         "train_sft and the dashboard take the SFT snapshot's format (its "
                                         "manifest) when this is not given, and refuse one that contradicts it.",
                                choices=PROMPT_FORMATS)
    system_prompt: str = option("", "System message put first under the chat format (empty: none).")
    # --- optimisation (transformers Trainer) ---
    epochs: int = option(2, "Passes over the demonstrations (InstructGPT: 16 with an over-fitting-friendly "
                            "schedule; 1–3 is common for LoRA).")
    max_steps: int = option(0, "Stop after this many optimizer steps (0: run the full epochs).")
    learning_rate: float = option(2e-5, "Peak AdamW learning rate (linear warm-up, then cosine decay).")
    warmup_ratio: float = option(0.03, "Fraction of the optimizer steps spent in linear warm-up.")
    weight_decay: float = option(0.0, "AdamW decoupled weight decay (not on biases and norms).")
    max_grad_norm: float = option(1.0, "Clip the global gradient norm to this value (0 disables clipping).")
    batch_size: int = option(8, "Demonstrations per micro-batch and process.")
    gradient_accumulation_steps: int = option(1, "Micro-batches accumulated into one optimizer step.")
    eval_batch_size: int = option(16, "Sequences per forward pass in evaluation.")
    max_length: int = option(512, "Longest prompt + response + EOS in tokens; longer responses are cut at the end "
                                  "(capped at the model's position limit).")
    packing: bool = option(False, "Pack a micro-batch's demonstrations into one row without padding (position ids "
                                  "restart per demonstration; the attention stays inside each one). Saves the "
                                  "compute spent on padding when lengths vary.")
    # --- model options ---
    lora: bool = option(False, "Train LoRA adapters (peft) instead of the full model; the saved model has them "
                               "merged (the adapter is saved beside it).")
    lora_r: int = option(16, "LoRA rank r.")
    lora_alpha: float = option(32.0, "LoRA scaling numerator (the update is scaled by alpha / r).")
    lora_dropout: float = option(0.05, "Dropout inside the LoRA adapters.")
    lora_target_modules: list[str] = option(["all-linear"], "Module names LoRA adapts (e.g. c_attn c_proj, or "
                                                            "q_proj v_proj); 'all-linear' targets every linear "
                                                            "layer.")
    gradient_checkpointing: bool = option(False, "Recompute activations in the backward pass (less memory, "
                                                 "~30 % slower).")
    bf16: str = option("auto", "bfloat16 mixed precision: auto (on GPUs that support it), true, or false.",
                       choices=BF16_CHOICES)
    trust_remote_code: bool = option(False, "Allow model code from the checkpoint's repository (hub models only).")
    cpu: bool = option(False, "Run on the CPU even when a GPU is available.")
    # --- progress, checkpoints, evaluation ---
    eval_every: int = option(0, "Held-out loss every N optimizer steps (0: only before and after training).")
    checkpoint_every: int = option(200, "Write a resumable checkpoint every N optimizer steps (0: none, except "
                                        "on a graceful stop).")
    keep_checkpoints: int = option(2, "How many of the newest checkpoints to keep.")
    log_every: int = option(10, "Write a progress line every N steps (metrics are reported every step).")
    seed: int = option(42, "Random seed (data order, LoRA init, samples).")
    resume: str = option("", "Resume from a checkpoint: 'last' (newest in output_dir/checkpoints, or start fresh "
                             "when there is none) or a checkpoint directory; empty starts fresh.")
    sample_prompts: int = option(16, "Held-out prompts sampled before and after training (sample table, oracle "
                                     "score on the demo task); 0: none.")
    max_new_tokens: int = option(64, "Longest sampled response in tokens.")
    sample_temperature: float = option(1.0, "Sampling temperature of the before/after samples.")

    def __post_init__(self) -> None:
        check_required(self, "model", "dataset")
        check_strings(self, "output_dir", "tokenizer", "train_split", "eval_split", "resume", "system_prompt")
        if not self.train_split.strip():
            raise ConfigError("train_split", "is required")
        if self.train_split == self.eval_split:
            raise ConfigError("eval_split", "must differ from train_split")
        check_number(self, "heldout_fraction", 0.0, 1.0)
        for name, minimum in (("epochs", 1), ("max_steps", 0), ("batch_size", 1), ("gradient_accumulation_steps", 1),
                              ("eval_batch_size", 1), ("max_length", 8), ("lora_r", 1), ("eval_every", 0),
                              ("checkpoint_every", 0), ("keep_checkpoints", 1), ("log_every", 1), ("seed", 0),
                              ("sample_prompts", 0), ("max_new_tokens", 1)):
            check_integer(self, name, minimum)
        check_number(self, "learning_rate", 0.0, 1.0, low_open=True)
        check_number(self, "warmup_ratio", 0.0, 1.0)
        check_number(self, "weight_decay", 0.0, math.inf)
        check_number(self, "max_grad_norm", 0.0, math.inf)
        check_number(self, "lora_alpha", 0.0, math.inf, low_open=True)
        check_number(self, "lora_dropout", 0.0, 1.0)
        check_number(self, "sample_temperature", 0.0, 10.0, low_open=True)
        check_choice(self, "prompt_format", PROMPT_FORMATS)
        normalise_bf16(self)
        check_booleans(self, "packing", "lora", "gradient_checkpointing", "trust_remote_code", "cpu")
        normalise_lora_target_modules(self)
        try:
            PromptFormat(kind=self.prompt_format, system_prompt=self.system_prompt)  # validates the system prompt
        except PromptFormatError as exc:
            raise ConfigError("system_prompt", str(exc)) from None

    @property
    def format(self) -> PromptFormat:
        return PromptFormat(kind=self.prompt_format, system_prompt=self.system_prompt)
