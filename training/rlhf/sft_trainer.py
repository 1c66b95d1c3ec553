"""Supervised fine-tuning on demonstrations (`train_sft`), the first of the three stages. No Django: progress goes
through a `Reporter`; the Django command is train_sft.

Built on transformers' `Trainer` (not TRL's `SFTTrainer`: trl is not installed here, and what SFTTrainer adds
over Trainer — the completion-only loss, chat templates, packing — is a few small functions below, each with a
known-answer test, that use the workbench's one prompt format, `chat_format.format_prompt`, exactly as the RM and
PPO stages do). Trainer brings the loop, accelerate/torchrun multi-process, bf16, gradient checkpointing,
checkpoints with optimizer, scheduler and RNG state, and resume.

Reads top to bottom as the run does: 1 seeds and the output directory → 2 demonstrations (train and held-out
prompts) → 3 model and tokenizer (PAD ≠ EOS, LoRA) → 4 tokenise: prompt (formatted) + response + EOS, labels −100
on the prompt → 5 held-out loss and samples before training → 6 Trainer with the reporter callback (metrics every
step, checkpoints, graceful stop) → 7 resume → 8 train → 9 held-out loss, perplexity and samples after → 10 save
the model (LoRA merged) with its prompt format, report the outputs.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.rlhf.chat_format import (
    PromptFormat,
    PromptFormatError,
    add_special_tokens_for,
    format_messages,
    format_prompt,
)
from training.rlhf.configs import ConfigError, config_to_dict, save_config
from training.rlhf.data import DatasetError, read_manifest
from training.rlhf.reporter import NullReporter, Reporter
from training.rlhf.sft_config import SFTConfig
from training.rlhf.sft_data import SftRecord, has_sft_split, read_sft_records

CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
ADAPTER_DIR = "adapter"
SFT_INFO_FILE = "sft.json"  # in the saved model's directory: its prompt format, data and evaluation
EVALUATION_FILE = "evaluation.json"
BEFORE_FILE = "evaluation_before.json"  # the start model's figures and samples, read back on a resume
IGNORE_INDEX = -100


@dataclass
class SFTResult:
    """What a run produced. `model_dir` loads with AutoModelForCausalLM (None when the run stopped early: then
    `checkpoint` is where `resume` continues from)."""

    output_dir: Path
    model_dir: Path | None
    steps: int
    total_steps: int
    stopped: bool
    evaluation: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)


# --- 2. demonstrations (read by sft_data.read_sft_records, the one SFT record reader) ---------------------------


def split_demonstrations(records: list[SftRecord], *, fraction: float, seed: int
                         ) -> tuple[list[SftRecord], list[SftRecord]]:
    """Hold out a fraction of the prompts (all of a prompt's demonstrations on one side), deterministically."""
    keys = sorted({r.group_key for r in records})
    random.Random(seed).shuffle(keys)
    n_test = round(len(keys) * fraction)
    if len(keys) >= 2:
        n_test = min(max(1, n_test), len(keys) - 1)
    held = set(keys[:n_test])
    return [r for r in records if r.group_key not in held], [r for r in records if r.group_key in held]


def load_sft_data(config: SFTConfig) -> tuple[list[SftRecord], list[SftRecord], dict[str, Any]]:
    """(train records, held-out records, counts). The held-out records are the snapshot's eval split when it has
    one, else `heldout_fraction` of the prompts (split by prompt, seeded); a single file has no splits."""
    dataset = Path(config.dataset)
    train = read_sft_records(dataset, split=config.train_split)
    held: list[SftRecord] = []
    source = "none"
    if dataset.is_dir() and has_sft_split(dataset, config.eval_split):
        held, source = read_sft_records(dataset, split=config.eval_split), config.eval_split
    if not held and config.heldout_fraction > 0 and len({r.group_key for r in train}) >= 2:
        train, held = split_demonstrations(train, fraction=config.heldout_fraction, seed=config.seed)
        source = f"{config.heldout_fraction:g} of the prompts"
    if not train:
        raise DatasetError(f"{config.dataset}: no training demonstrations")
    info = {"train_demonstrations": len(train), "eval_demonstrations": len(held), "eval_source": source,
            "train_prompts": len({r.group_key for r in train}), "eval_prompts": len({r.group_key for r in held})}
    return train, held, info


def dataset_hash(path: str | Path) -> str:
    """The snapshot's content hash from its manifest; else a sha256 of the file(s)."""
    import hashlib

    manifest = read_manifest(path)
    if manifest and manifest.get("content_hash"):
        return str(manifest["content_hash"])
    source = Path(path)
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


# --- 4. tokenisation: the loss on response tokens only ----------------------------------------------------------


def build_sft_example(prompt_ids: Sequence[int], response_ids: Sequence[int], *, eos_id: int,
                      max_length: int) -> dict[str, list[int]]:
    """input_ids = prompt_ids + response_ids + [eos]; labels = −100 on every prompt token, the token itself on
    the response and EOS (the model learns to answer and to stop; InstructGPT's SFT, TRL's completion-only loss).

    Too long: the response keeps its first tokens (EOS goes with the cut: that response did not end there),
    but never fewer than min(len(response)+1, max_length // 2); the prompt keeps its last tokens."""
    answer = list(response_ids) + [eos_id]
    response_budget = max(max_length - len(prompt_ids), min(len(answer), max_length // 2))
    answer = answer[:response_budget]
    prompt = list(prompt_ids)[-(max_length - len(answer)):] if max_length > len(answer) else []
    return {"input_ids": prompt + answer, "labels": [IGNORE_INDEX] * len(prompt) + answer}


def prompt_text(tokenizer: Any, record: SftRecord, *, prompt_format: PromptFormat) -> str:
    """The text the model sees before the response: the chat turns of a conversation record under the chat
    format, else the prompt under `format_prompt` (the one function every stage calls)."""
    turns = (record.messages or [])[:-1]  # sft_data: `messages` ends with the assistant's answer
    if prompt_format.is_chat and any(turn["role"] == "user" for turn in turns):
        return format_messages(tokenizer, turns, prompt_format=prompt_format)
    return format_prompt(tokenizer, record.prompt, prompt_format=prompt_format)


def encode_demonstrations(tokenizer: Any, records: Sequence[SftRecord], *, prompt_format: PromptFormat,
                          max_length: int) -> list[dict[str, list[int]]]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; a response must end with one")
    special = add_special_tokens_for(prompt_format)
    prompts = [prompt_text(tokenizer, r, prompt_format=prompt_format) for r in records]
    responses = [r.response for r in records]  # sft_data: equal to the final assistant turn
    prompt_ids = tokenizer(prompts, add_special_tokens=special)["input_ids"]
    response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    out = []
    for p, r in zip(prompt_ids, response_ids):
        p = list(p)
        while p and p[-1] == eos:  # never a trailing EOS after the prompt (sampling strips it too)
            p.pop()
        out.append(build_sft_example(p, r, eos_id=eos, max_length=max_length))
    return out


class SFTCollator:
    """Examples → a batch. Padded (default): input_ids, attention_mask, labels (B, T) right-padded, labels −100
    on padding. Packed: one row (1, ΣT_i) with position ids restarting per example and a 4-D boolean attention
    mask (1, 1, ΣT, ΣT) that is causal inside each example and False across them (SDPA), so every example sees exactly
    what it would see alone (checked against the padded batch in tests/rlhf/test_sft_trainer.py)."""

    def __init__(self, *, pad_id: int, packing: bool = False) -> None:
        self.pad_id, self.packing = pad_id, packing

    def __call__(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return self.pack(examples) if self.packing else self.pad(examples)

    def pad(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            input_ids[row, :n] = torch.tensor(example["input_ids"])
            labels[row, :n] = torch.tensor(example["labels"])
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    @staticmethod
    def pack(examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        ids, labels, positions, segments = [], [], [], []
        for index, example in enumerate(examples):
            n = len(example["input_ids"])
            ids += example["input_ids"]
            # the first token of an example is never predicted from the previous example's last one
            labels += [IGNORE_INDEX] + list(example["labels"][1:])
            positions += list(range(n))
            segments += [index] * n
        segment = torch.tensor(segments)
        total = len(ids)
        allowed = torch.tril(torch.ones(total, total, dtype=torch.bool)) & (segment[:, None] == segment[None, :])
        # A boolean mask (True: may attend) suits SDPA in any precision (a float one must match bf16 queries).
        return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                "position_ids": torch.tensor([positions]), "attention_mask": allowed[None, None]}


# --- 5./9. evaluation -----------------------------------------------------------------------------------------


def is_demo_prompt(record: SftRecord) -> bool:
    from training.rlhf.demo_task import DEMO_TASK, prompt_topic

    return record.metadata.get("task") == DEMO_TASK or prompt_topic(record.prompt) is not None


@torch.no_grad()
def sample_responses(model: Any, tokenizer: Any, records: Sequence[SftRecord], *, prompt_format: PromptFormat,
                     max_new_tokens: int, temperature: float, seed: int) -> list[str]:
    """One sampled response per held-out record, from the formatted prompt (the same text the model trains on)."""
    from training.rlhf.sampling import SamplingParams, generate_texts

    if not records:
        return []
    was_training = model.training
    model.eval()
    try:
        params = SamplingParams(temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens, batch_size=32)
        texts = [prompt_text(tokenizer, r, prompt_format=prompt_format) for r in records]
        return [g.text for g in generate_texts(model, tokenizer, texts, params=params, seed=seed)]
    finally:
        model.train(was_training)


def sample_report(records: Sequence[SftRecord], responses: Sequence[str]) -> dict[str, Any]:
    """Mean oracle score of the samples where every prompt is a demo-task prompt (None otherwise)."""
    from training.rlhf.demo_task import oracle_score

    report: dict[str, Any] = {"n": len(responses),
                              "mean_length_chars": sum(map(len, responses)) / max(1, len(responses))}
    if records and all(is_demo_prompt(r) for r in records):
        scores = [oracle_score(r.prompt, text) for r, text in zip(records, responses)]
        report["oracle"] = sum(scores) / len(scores)
        demo_scores = [oracle_score(r.prompt, r.response) for r in records]
        report["oracle_demonstrations"] = sum(demo_scores) / len(demo_scores)
    return report


def response_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token negative log-likelihood of the labelled tokens, and how many there are.

    logits (B, T, V), labels (B, T) with −100 where no loss is taken (prompt, padding). Position t predicts
    token t+1 (the causal-LM shift, as in transformers' ForCausalLMLoss): Σ_{t: y_{t+1} ≠ −100} −log p(y_{t+1} | x_≤t)."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    nll = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                            shift_labels.clamp(min=0).reshape(-1), reduction="none")
    return (nll.view_as(shift_labels) * mask).sum(), mask.sum()


@torch.no_grad()
def heldout_loss(model: Any, examples: Sequence[dict[str, list[int]]], *, pad_id: int, batch_size: int
                 ) -> float | None:
    """Mean NLL per response token over all held-out examples (token-weighted across batches, so the figure
    does not depend on the batch size); None without examples. Padded batches, dropout off."""
    if not examples:
        return None
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate = SFTCollator(pad_id=pad_id)
    total, count = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.long)
    try:
        for start in range(0, len(examples), batch_size):
            batch = collate(list(examples[start:start + batch_size]))
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
            nll, n = response_token_nll(logits, batch["labels"].to(device))
            total += nll.double().cpu()
            count += n.cpu()
    finally:
        model.train(was_training)
    return float(total / count) if count > 0 else None


def perplexity(loss: float | None) -> float | None:
    """exp(mean next-token cross-entropy in nats) — the held-out perplexity of the response tokens."""
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(min(loss, 700.0))


# --- 6. the reporter as a Trainer callback ----------------------------------------------------------------------


METRIC_NAMES = {"loss": "loss", "learning_rate": "lr", "grad_norm": "grad_norm", "epoch": "epoch"}


def _any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on any (a stop seen by rank 0 stops them all together)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    from accelerate.utils import broadcast_object_list

    box = [flag]
    broadcast_object_list(box, from_process=0)
    return bool(box[0])


def reporter_callback(reporter: Reporter, *, log_every: int, say, evaluate=None, eval_every: int = 0):
    """A TrainerCallback that forwards Trainer's events to the reporter: on_start (the resumed step included),
    metrics every logged step (loss, lr, grad_norm, epoch, tokens_per_s), eval/loss and eval/perplexity every
    `eval_every` steps (`evaluate()` → the held-out loss), checkpoints, and `should_stop()` → a graceful stop
    that saves a checkpoint first."""
    from transformers import TrainerCallback

    class ReporterCallback(TrainerCallback):
        def __init__(self) -> None:
            self.stopped = False
            self.last_metrics: dict[str, float] = {}
            self._tick = time.perf_counter()
            self._tokens = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                reporter.on_start(total_steps=state.max_steps, start_step=state.global_step)
            self._tick = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if evaluate is not None and eval_every and state.global_step % eval_every == 0 \
                    and state.global_step < state.max_steps:  # the last step is evaluated after training
                loss = evaluate()
                if loss is not None and state.is_world_process_zero:
                    reporter.on_metrics(state.global_step, {"eval/loss": loss,
                                                            "eval/perplexity": perplexity(loss) or math.inf})
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                self._report(state, logs)
            # After the step's metrics are reported (this runs before the step's checkpoint is considered): a
            # stop asked for now stops after this step, with a checkpoint. Every process takes part.
            if logs and "loss" in logs and state.global_step < state.max_steps \
                    and _any_process(reporter.should_stop()):
                self.stopped = True
                control.should_training_stop = True
                control.should_save = True
            return control

        def _report(self, state, logs):
            metrics = {METRIC_NAMES[k]: float(v) for k, v in logs.items()
                       if k in METRIC_NAMES and isinstance(v, int | float) and math.isfinite(v)}
            if "loss" in metrics:
                seen = float(getattr(state, "num_input_tokens_seen", 0) or 0)
                now = time.perf_counter()
                if seen > self._tokens:
                    metrics["tokens_per_s"] = (seen - self._tokens) / max(now - self._tick, 1e-9)
                self._tick, self._tokens = now, seen
                self.last_metrics = metrics
                step = state.global_step
                if step % log_every == 0 or step == state.max_steps:
                    say(f"step {step}/{state.max_steps} loss {metrics['loss']:.4f} lr {metrics.get('lr', 0):.2e}")
            if metrics:
                reporter.on_metrics(state.global_step, metrics)

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                reporter.on_checkpoint(state.global_step, str(Path(args.output_dir) / f"checkpoint-{state.global_step}"))

    return ReporterCallback()


# --- 7. resume --------------------------------------------------------------------------------------------------


def find_last_checkpoint(output_dir: str | Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    found = get_last_checkpoint(str(root))
    return Path(found) if found else None


def _resolve_resume(config: SFTConfig) -> Path | None:
    if not config.resume:
        return None
    if config.resume == "last":
        return find_last_checkpoint(config.output_dir)
    path = Path(config.resume)
    if not (path / "trainer_state.json").is_file():
        raise ConfigError("resume", f"{path} is not a Trainer checkpoint (no trainer_state.json)")
    return path


# --- 3. model and tokenizer --------------------------------------------------------------------------------------


def load_model_and_tokenizer(config: SFTConfig) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.rlhf.reward_model import ensure_pad_token

    def source(name: str) -> str:
        path = Path(name).expanduser()
        return str(path) if path.exists() else name

    try:
        tokenizer = AutoTokenizer.from_pretrained(source(config.tokenizer or config.model),
                                                  trust_remote_code=config.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source(config.model), dtype=torch.float32,
                                                     trust_remote_code=config.trust_remote_code,
                                                     attn_implementation="sdpa" if config.packing else None)
    except OSError as exc:
        raise OSError(f"could not load a causal language model from {config.model!r}: {exc}") from exc
    tokenizer.padding_side = "right"
    if ensure_pad_token(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    for name in ("pad_token_id", "eos_token_id"):
        setattr(model.config, name, getattr(tokenizer, name))
        if model.generation_config is not None:
            setattr(model.generation_config, name, getattr(tokenizer, name))
    if config.format.is_chat:
        try:  # no chat template → a clear error now, not after the first evaluation
            format_prompt(tokenizer, "x", prompt_format=config.format)
        except PromptFormatError as exc:
            raise ConfigError("prompt_format", str(exc)) from None
    if config.lora:
        from peft import get_peft_model

        from training.rlhf.policy import lora_config

        model = get_peft_model(model, lora_config(model, r=config.lora_r, alpha=config.lora_alpha,
                                                  dropout=config.lora_dropout,
                                                  target_modules=config.lora_target_modules, task_type="CAUSAL_LM"))
    if config.gradient_checkpointing:
        from training.rlhf.policy import enable_activation_checkpointing

        if config.lora:
            model.enable_input_require_grads()
        enable_activation_checkpointing(model)
        model.config.use_cache = False
    return model, tokenizer


def _use_bf16(config: SFTConfig) -> bool:
    if config.bf16 == "true":
        return True
    if config.bf16 == "false" or config.cpu:
        return False
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _effective_max_length(model: Any, config: SFTConfig) -> int:
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    return min(config.max_length, int(limit)) if limit else config.max_length


# --- the run ------------------------------------------------------------------------------------------------------


def train_sft(config: SFTConfig, *, reporter: Reporter | None = None) -> SFTResult:
    """Fine-tune a causal LM on demonstrations (loss on response tokens only), evaluate it on held-out prompts
    before and after (loss, perplexity, samples, the oracle on the demo task), save it with its prompt format.

    Reports through `reporter` (metrics every step, checkpoints, evaluation, outputs {"model": dir, "adapter":
    dir under LoRA}); stops gracefully with a checkpoint when `reporter.should_stop()` turns true."""
    from transformers import PrinterCallback, Trainer, TrainingArguments, set_seed

    from training.rlhf.reporter import is_main_process

    reporter = reporter or NullReporter()
    main = is_main_process()
    if not config.output_dir:
        raise ConfigError("output_dir", "is required to train")
    out = Path(config.output_dir)
    if not config.resume and ((out / MODEL_DIR).exists() or find_last_checkpoint(out) is not None):
        raise ConfigError("output_dir", f"{out} already holds a model or checkpoints; choose a new directory, or "
                                        "resume ('last')")
    say = reporter.on_log

    # 1. Seeds, the output directory, the config saved with the run.
    set_seed(config.seed)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.json")
    resume_from = _resolve_resume(config)
    fmt = config.format

    # 2. Demonstrations: train and held-out prompts.
    train_records, eval_records, data_info = load_sft_data(config)
    snapshot_hash = dataset_hash(config.dataset)
    say(f"data: {data_info['train_demonstrations']} demonstrations for training, "
        f"{data_info['eval_demonstrations']} held out ({data_info['eval_source']}); snapshot {snapshot_hash[:12]}; "
        f"prompt format: {fmt.describe()}")

    # 3. Model and tokenizer: PAD ≠ EOS, LoRA, gradient checkpointing.
    model, tokenizer = load_model_and_tokenizer(config)
    max_length = _effective_max_length(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    say(f"model: {config.model} ({trainable:,} of {total:,} parameters trainable{', LoRA' if config.lora else ''}); "
        f"max length {max_length}")

    # 4. Tokenise: formatted prompt + response + EOS; the loss only on the response and EOS.
    train_examples = encode_demonstrations(tokenizer, train_records, prompt_format=fmt, max_length=max_length)
    eval_examples = encode_demonstrations(tokenizer, eval_records, prompt_format=fmt, max_length=max_length)
    cut = sum(ex["input_ids"][-1] != tokenizer.eos_token_id for ex in train_examples)
    if cut:
        say(f"{cut} demonstration(s) longer than max_length={max_length} lost the end of their response")

    # 5./6. The Trainer: AdamW, warm-up + cosine, clipping, bf16, accelerate, checkpoints; the reporter callback.
    pad_id = tokenizer.pad_token_id

    def evaluate() -> float | None:  # the held-out loss of the model being trained (all processes)
        return heldout_loss(trainer.accelerator.unwrap_model(trainer.model), eval_examples, pad_id=pad_id,
                            batch_size=config.eval_batch_size)

    callback = reporter_callback(reporter, log_every=config.log_every, say=say, evaluate=evaluate,
                                 eval_every=config.eval_every)
    args = TrainingArguments(
        output_dir=str(out / CHECKPOINTS_DIR), num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps else -1,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, learning_rate=config.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=config.warmup_ratio, weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm, bf16=_use_bf16(config), use_cpu=config.cpu,
        logging_strategy="steps", logging_steps=1, report_to="none", disable_tqdm=True,
        save_strategy="steps" if config.checkpoint_every else "no", save_steps=config.checkpoint_every or 500,
        save_total_limit=config.keep_checkpoints,
        seed=config.seed, data_seed=config.seed,  # held-out loss: `evaluate` above (token-weighted)
        remove_unused_columns=False, dataloader_num_workers=0, include_num_input_tokens_seen=True,
        dataloader_pin_memory=torch.cuda.is_available() and not config.cpu,
        # gradient checkpointing is set on the model above (non-reentrant, LoRA-safe)
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_examples,
                      data_collator=SFTCollator(pad_id=pad_id, packing=config.packing),
                      callbacks=[callback])
    trainer.remove_callback(PrinterCallback)  # progress goes through the reporter, not print()
    world = trainer.args.world_size
    say(f"batch: {config.batch_size} × {config.gradient_accumulation_steps} accumulation × {world} process(es) = "
        f"{config.batch_size * config.gradient_accumulation_steps * world} demonstrations per optimizer step"
        + (", packed" if config.packing else ""))

    evaluation: dict[str, Any] = {"data": data_info, "prompt_format": fmt.as_dict()}
    sample_records = eval_records[:config.sample_prompts]
    before_samples: list[str] = []
    if resume_from is None:
        # 5. Before training: held-out loss and samples of the model we start from.
        before_loss = evaluate()
        if before_loss is not None:
            evaluation["before"] = {"loss": before_loss, "perplexity": perplexity(before_loss)}
        if sample_records:
            before_samples = sample_responses(trainer.model, tokenizer, sample_records, prompt_format=fmt,
                                              max_new_tokens=config.max_new_tokens,
                                              temperature=config.sample_temperature, seed=config.seed)
            evaluation.setdefault("before", {})["samples"] = sample_report(sample_records, before_samples)
        if main and evaluation.get("before"):
            # kept for a resumed run, whose model is no longer the one it started from
            before = {**evaluation, "samples_before": before_samples}
            (out / BEFORE_FILE).write_text(json.dumps(before, indent=2) + "\n", encoding="utf-8")
    elif (out / BEFORE_FILE).exists():
        evaluation = json.loads((out / BEFORE_FILE).read_text(encoding="utf-8"))
        before_samples = evaluation.pop("samples_before", [])
    elif config.resume == "last":
        say("no checkpoint to resume from; starting fresh")

    # 7./8. Train (resumed from the checkpoint's weights, optimizer, scheduler, RNG and data position).
    if resume_from is not None:
        say(f"resuming from {resume_from}")
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from is not None else None)
    steps, total_steps = trainer.state.global_step, trainer.state.max_steps
    if callback.stopped:
        checkpoint = find_last_checkpoint(out)
        say(f"stopped at step {steps}/{total_steps} on request; resume with --resume last")
        return SFTResult(output_dir=out, model_dir=None, steps=steps, total_steps=total_steps, stopped=True,
                         checkpoint=checkpoint, last_metrics=callback.last_metrics)

    # 9. After training: held-out loss, perplexity, samples (and the oracle on the demo task).
    evaluation["steps"] = steps
    after_loss = evaluate()
    if after_loss is not None:
        evaluation["after"] = {"loss": after_loss, "perplexity": perplexity(after_loss)}
        reporter.on_metrics(steps, {"eval/loss": after_loss, "eval/perplexity": perplexity(after_loss) or math.inf})
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    if sample_records:
        after = sample_responses(unwrapped, tokenizer, sample_records, prompt_format=fmt,
                                 max_new_tokens=config.max_new_tokens, temperature=config.sample_temperature,
                                 seed=config.seed)
        evaluation.setdefault("after", {})["samples"] = sample_report(sample_records, after)
        if main:
            before_rows = before_samples or [""] * len(after)
            rows = [{"prompt": r.prompt, "response": text, "before": old, "demonstration": r.response}
                    for r, text, old in zip(sample_records, after, before_rows)]
            if "oracle" in evaluation["after"]["samples"]:  # the demo task: each sample's true score
                from training.rlhf.demo_task import oracle_score

                for row in rows:
                    row["oracle"] = oracle_score(row["prompt"], row["response"])
            reporter.on_samples(steps, rows)
    for stage in ("before", "after"):
        figures = evaluation.get(stage, {})
        if figures:
            oracle = figures.get("samples", {}).get("oracle")
            say(f"{stage}: held-out loss {figures.get('loss', float('nan')):.4f}, perplexity "
                f"{figures.get('perplexity') or float('nan'):.2f}" + (f", oracle {oracle:+.3f}" if oracle is not None
                                                                      else ""))

    # 10. Save: the model (LoRA merged; the adapter beside it) and tokenizer with their prompt format.
    outputs: dict[str, str] = {}
    trainer.accelerator.wait_for_everyone()
    if main:
        model_dir = out / MODEL_DIR
        if model_dir.exists():
            shutil.rmtree(model_dir)
        if config.lora:
            unwrapped.save_pretrained(out / ADAPTER_DIR)
            tokenizer.save_pretrained(out / ADAPTER_DIR)
            outputs["adapter"] = str(out / ADAPTER_DIR)
            unwrapped = unwrapped.merge_and_unload()
        unwrapped.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        info = {"prompt_format": fmt.as_dict(), "base_model": config.model, "dataset": config.dataset,
                "snapshot_hash": snapshot_hash, "steps": steps, "training_config": config_to_dict(config),
                "evaluation": evaluation}
        (model_dir / SFT_INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
        (out / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2, default=str) + "\n", encoding="utf-8")
        outputs["model"] = str(model_dir)
        reporter.on_evaluation(evaluation)
        reporter.on_outputs(outputs)
        say(f"saved the fine-tuned model to {model_dir}")
    trainer.accelerator.wait_for_everyone()
    return SFTResult(output_dir=out, model_dir=out / MODEL_DIR, steps=steps, total_steps=total_steps, stopped=False,
                     evaluation=evaluation, checkpoint=find_last_checkpoint(out), last_metrics=callback.last_metrics)


def read_prompt_format(model_dir: str | Path) -> PromptFormat | None:
    """The prompt format an SFT model was trained with (its sft.json), None for a model from elsewhere."""
    try:
        info = json.loads((Path(model_dir) / SFT_INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return PromptFormat.from_dict(info.get("prompt_format"))
