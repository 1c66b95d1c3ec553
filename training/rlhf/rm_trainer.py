"""Reward-model training with the InstructGPT K-wise loss (`train_reward_model`). No Django: progress goes
through a `Reporter` (training/rlhf/reporter.py); the plain CLI is rm_cli.py, the Django command train_rm.

Reads top to bottom as the run does: 1 accelerator and seeds → 2 data → 3 model → 4 tokenise → 5 batches
that keep each ranking's K responses together → 6 AdamW + warm-up/cosine → 7 resume → 8 the loop (one
forward pass over all K responses of every ranking, K-wise loss, metrics every step, periodic evaluation and
checkpoints, graceful stop) → 9 held-out evaluation → 10 calibration → 11 save.

Multi-GPU: run under `accelerate launch`; every process trains on its shard of the batches, only the main
process reports and writes the model. Checkpoints use accelerate's save_state (model, optimizer, every
process's RNG state) plus the scheduler and `trainer_state.json` (step, epoch, position in the epoch).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from training.rlhf.calibration import Calibration, calibration_report, fit_calibration
from training.rlhf.chat_format import PLAIN, PromptFormat, PromptFormatError, check_same_format
from training.rlhf.configs import ConfigError, config_to_dict, save_config
from training.rlhf.data import (
    DatasetError,
    RankingRecord,
    available_splits,
    dataset_fingerprint,
    load_calibration_texts,
    load_ranking_records,
    snapshot_prompt_format,
    split_by_prompt,
    unique_responses,
)
from training.rlhf.optim import (
    build_adamw,
    seed_everything,
    use_cpu,
    warmup_cosine_scheduler,
    warmup_steps_for,
)
from training.rlhf.reporter import NullReporter, Reporter
from training.rlhf.reward_model import LoraSettings, RewardModel, encode_pairs, pad_sequences
from training.rlhf.rm_config import RewardModelConfig
from training.rlhf.rm_eval import evaluation_report, unique_sequences
from training.rlhf.rm_loss import kwise_ranking_loss, pairwise_stats

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_FILE = "trainer_state.json"
SCHEDULER_FILE = "scheduler.pt"
EVALUATION_FILE = "evaluation.json"


@dataclass
class RewardModelResult:
    """What a training run produced. `model_dir` loads with `RewardModel.from_pretrained` (None when the run
    stopped early: then `checkpoint` is where `resume` continues from)."""

    output_dir: Path
    model_dir: Path | None
    steps: int
    total_steps: int
    stopped: bool
    evaluation: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    checkpoint: Path | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)


# --- data: encoded rankings, the epoch sampler and the collator --------------------------------------------


@dataclass
class EncodedRanking:
    """One ranking ready for the model: K token-id sequences and the tier position of each (0 = best)."""

    sequences: list[list[int]]
    ranks: list[int]


def encode_rankings(tokenizer: Any, records: Sequence[RankingRecord], *, max_length: int,
                    prompt_format: PromptFormat = PLAIN) -> list[EncodedRanking]:
    """Tokenise every response of every record as `prompt + response + [eos]`, the prompt in `prompt_format`
    (docs/architecture.md, "Model text format")."""
    prompts = [r.prompt for r in records for _ in r.responses]
    responses = [text for r in records for text in r.responses]
    flat = encode_pairs(tokenizer, prompts, responses, max_length=max_length, prompt_format=prompt_format)
    out, offset = [], 0
    for record in records:
        out.append(EncodedRanking(sequences=flat[offset:offset + record.k], ranks=record.ranks))
        offset += record.k
    return out


class EpochShuffleSampler(Sampler[int]):
    """A fresh permutation per epoch, a pure function of (seed, epoch): a resumed run replays the same order.
    The same on every process (accelerate shards the batches), independent of the per-rank seed offset."""

    def __init__(self, size: int, *, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class RankingCollator:
    """A batch of N rankings → all their responses as one padded batch, plus where each ranking's responses
    are in it.

    input_ids, attention_mask: (M, T), M = ΣK_n (right or left padded);
    response_index: (N, K_max) long, row n holds the batch positions of ranking n's responses (−1 beyond K_n);
    ranks: (N, K_max) long tier positions; response_mask: (N, K_max) bool.
    """

    def __init__(self, *, pad_id: int, padding_side: str) -> None:
        self.pad_id, self.padding_side = pad_id, padding_side

    def __call__(self, items: list[EncodedRanking]) -> dict[str, torch.Tensor]:
        flat = [seq for item in items for seq in item.sequences]
        input_ids, attention_mask = pad_sequences(flat, pad_id=self.pad_id, side=self.padding_side)
        k_max = max(len(item.sequences) for item in items)
        response_index = torch.full((len(items), k_max), -1, dtype=torch.long)
        ranks = torch.zeros((len(items), k_max), dtype=torch.long)
        response_mask = torch.zeros((len(items), k_max), dtype=torch.bool)
        offset = 0
        for n, item in enumerate(items):
            k = len(item.sequences)
            response_index[n, :k] = torch.arange(offset, offset + k)
            ranks[n, :k] = torch.as_tensor(item.ranks)
            response_mask[n, :k] = True
            offset += k
        return {"input_ids": input_ids, "attention_mask": attention_mask, "response_index": response_index,
                "ranks": ranks, "response_mask": response_mask}


def rewards_by_ranking(flat_rewards: torch.Tensor, response_index: torch.Tensor) -> torch.Tensor:
    """flat_rewards (M,), response_index (N, K) → (N, K): reward of each ranking's k-th response (entries
    where the index is −1 are filler; mask them with response_mask)."""
    return flat_rewards[response_index.clamp_min(0)]


# --- the pieces of the run ----------------------------------------------------------------------------------


def _mixed_precision(setting: str) -> str:
    if setting == "false":
        return "no"
    if setting == "true":
        return "bf16"
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def load_training_data(
    config: RewardModelConfig,
) -> tuple[list[RankingRecord], list[RankingRecord], dict[str, Any]]:
    """Train and held-out records. The eval split is the dataset's own when it has one, else a split by
    prompt (`heldout_fraction`); records of a prompt never appear on both sides."""
    splits = available_splits(config.dataset)
    if not splits:
        raise DatasetError(f"{config.dataset}: no ranking data found (expected train.jsonl, train.parquet, a "
                           "DatasetDict or a snapshot directory with kwise/)")
    info: dict[str, Any] = {"dataset": config.dataset, "splits": splits}
    if splits == ["all"]:
        records = load_ranking_records(config.dataset, split=config.train_split)
        train, held_out = (records, []) if config.heldout_fraction == 0 else split_by_prompt(
            records, test_fraction=config.heldout_fraction, seed=config.seed)
        info["eval_source"] = f"{config.heldout_fraction:.0%} of the prompts" if held_out else "none"
    else:
        if config.train_split not in splits:
            raise DatasetError(f"{config.dataset}: no {config.train_split!r} split (has {', '.join(splits)})")
        train = load_ranking_records(config.dataset, split=config.train_split)
        held_out = []
        if config.eval_split and config.eval_split in splits:
            held_out = load_ranking_records(config.dataset, split=config.eval_split)
            info["eval_source"] = f"split {config.eval_split!r}"
        if not held_out and config.heldout_fraction > 0:  # no eval split, or an empty one
            train, held_out = split_by_prompt(train, test_fraction=config.heldout_fraction, seed=config.seed)
            info["eval_source"] = f"{config.heldout_fraction:.0%} of the {config.train_split!r} prompts"
        elif not held_out:
            info["eval_source"] = "none"
    if not train:
        raise DatasetError(f"{config.dataset}: the training split is empty")
    overlap = {r.group_key for r in train} & {r.group_key for r in held_out}
    if overlap:
        raise DatasetError(f"{config.dataset}: {len(overlap)} prompt(s) appear in both the training and the "
                           f"held-out split (e.g. {sorted(overlap)[0][:80]!r}); splits must be by prompt")
    if config.calibration_set == "heldout" and not held_out:
        raise ConfigError("calibration_set", "'heldout' needs held-out data, and the dataset has none; use "
                                             "'train', 'none' or a file")
    info.update(train_rankings=len(train), eval_rankings=len(held_out))
    return train, held_out, info


def calibration_pairs(
    config: RewardModelConfig, train: Sequence[RankingRecord], held_out: Sequence[RankingRecord]
) -> list[tuple[str, str]]:
    """The (prompt, response) pairs whose rewards define the calibration (a seeded subset if too many)."""
    if config.calibration_set == "heldout":
        pairs = unique_responses(held_out)
    elif config.calibration_set == "train":
        pairs = unique_responses(train)
    else:
        pairs = load_calibration_texts(config.calibration_set)
    if len(pairs) > config.calibration_max_samples:
        pairs = random.Random(config.seed).sample(pairs, config.calibration_max_samples)
    return pairs


def find_last_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (one with trainer_state.json) under output_dir/checkpoints."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step-*") if (p / TRAINER_STATE_FILE).exists()]
    return max(done, key=lambda p: json.loads((p / TRAINER_STATE_FILE).read_text())["step"], default=None)


def _resolve_resume(config: RewardModelConfig) -> Path | None:
    if not config.resume:
        return None
    if config.resume == "last":
        return find_last_checkpoint(config.output_dir)
    path = Path(config.resume)
    if not (path / TRAINER_STATE_FILE).exists():
        raise ConfigError("resume", f"{path} is not a checkpoint directory (no {TRAINER_STATE_FILE})")
    return path


class _Run:
    """State shared by the loop's helpers (so each stays short)."""

    def __init__(self, config: RewardModelConfig, reporter: Reporter) -> None:
        from accelerate import Accelerator

        self.config = config
        self.accelerator = Accelerator(cpu=use_cpu(config.cpu), mixed_precision=_mixed_precision(config.bf16))
        self.is_main = self.accelerator.is_main_process
        self.reporter: Reporter = reporter if self.is_main else NullReporter()
        self.output_dir = Path(config.output_dir)
        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.loader_length = 1  # micro-batches per epoch on this process (set once the loader is prepared)
        self.max_length = config.max_length  # capped at the model's position limit once it is loaded

    def log(self, message: str) -> None:
        self.reporter.on_log(message)

    def should_stop(self) -> bool:
        """The main process's reporter decides; every process gets the same answer."""
        flag = torch.tensor([1.0 if self.is_main and self.reporter.should_stop() else 0.0],
                            device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        return bool(flag.item() > 0)

    def mean_across_processes(self, values: dict[str, float]) -> dict[str, float]:
        if self.accelerator.num_processes == 1:
            return values
        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], device=self.accelerator.device, dtype=torch.float64)
        tensor = self.accelerator.reduce(tensor, reduction="mean")
        return dict(zip(keys, tensor.tolist()))

    def sum_across_processes(self, value: float) -> float:
        if self.accelerator.num_processes == 1:
            return value
        tensor = torch.tensor([value], device=self.accelerator.device, dtype=torch.float64)
        return float(self.accelerator.reduce(tensor, reduction="sum").item())


@torch.no_grad()
def _score_sequences(run: _Run, model: torch.nn.Module, sequences: Sequence[list[int]]) -> list[float]:
    """Raw rewards of many sequences, sharded over the processes (each scores the same number of batches)
    and gathered; batches hold sequences of similar length."""
    from accelerate.utils import gather_object

    accelerator, config = run.accelerator, run.config
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    mine = order[accelerator.process_index::accelerator.num_processes]
    per_process = math.ceil(len(order) / accelerator.num_processes) if order else 0
    mine = mine + [order[0]] * (per_process - len(mine))  # equal work on every process (FSDP needs it)
    unwrapped: RewardModel = accelerator.unwrap_model(model)
    was_training = model.training
    model.eval()
    results: list[tuple[int, float]] = []
    try:
        for start in range(0, len(mine), config.eval_batch_size):
            chunk = mine[start:start + config.eval_batch_size]
            input_ids, attention_mask = pad_sequences([sequences[i] for i in chunk], pad_id=unwrapped.pad_token_id,
                                                      side=config.padding_side)
            rewards = model(input_ids.to(accelerator.device), attention_mask.to(accelerator.device), calibrated=False)
            results.extend(zip(chunk, rewards.float().cpu().tolist()))
    finally:
        model.train(was_training)
    if accelerator.num_processes > 1:
        results = gather_object(results)
    scores = [math.nan] * len(sequences)
    for index, value in results:
        scores[index] = value
    return scores


def _evaluate(run: _Run, model: torch.nn.Module, records: Sequence[RankingRecord]) -> dict[str, Any]:
    pairs, layout = unique_sequences(records)
    unwrapped = run.accelerator.unwrap_model(model)
    sequences = encode_pairs(unwrapped.tokenizer, [p for p, _ in pairs], [r for _, r in pairs],
                             max_length=run.max_length, prompt_format=unwrapped.prompt_format)
    scores = _score_sequences(run, model, sequences)
    return evaluation_report(records, [[scores[i] for i in row] for row in layout])


def _eval_metrics(report: dict[str, Any]) -> dict[str, float]:
    metrics = {"eval/accuracy": report["accuracy"], "eval/margin": report["mean_margin"], "eval/loss": report["loss"]}
    if "oracle" in report:
        metrics["eval/oracle_accuracy"] = report["oracle"]["accuracy"]
    return {name: value for name, value in metrics.items() if math.isfinite(value)}


def json_safe(value: Any) -> Any:
    """NaN/inf → None, recursively: evaluation records go into JSON columns (PostgreSQL rejects NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def _save_checkpoint(run: _Run, scheduler: Any, total_steps: int) -> Path:
    """checkpoints/step-NNNNNN/: accelerate state (model, optimizer, RNG of every process), scheduler, and
    trainer_state.json written last (its presence marks a complete checkpoint). Older ones are pruned."""
    accelerator = run.accelerator
    root = run.output_dir / CHECKPOINTS_DIR
    final = root / f"step-{run.step:06d}"
    partial = root / f"step-{run.step:06d}.partial"
    if run.is_main and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if run.is_main:
        torch.save(scheduler.state_dict(), partial / SCHEDULER_FILE)
        state = {"step": run.step, "epoch": run.epoch, "batches_in_epoch": run.batches_in_epoch,
                 "total_steps": total_steps, "num_processes": accelerator.num_processes,
                 "prompt_format": run.config.format.as_dict(), "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (partial / TRAINER_STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        complete = sorted((p for p in root.glob("step-*") if (p / TRAINER_STATE_FILE).exists()),
                          key=lambda p: json.loads((p / TRAINER_STATE_FILE).read_text())["step"])
        for old in complete[:-run.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        run.reporter.on_checkpoint(run.step, str(final))
    accelerator.wait_for_everyone()
    return final


def _load_checkpoint(run: _Run, checkpoint: Path, scheduler: Any, total_steps: int) -> None:
    state = json.loads((checkpoint / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
    if state.get("num_processes", 1) != run.accelerator.num_processes:
        raise ConfigError("resume", f"{checkpoint} was written by {state.get('num_processes')} process(es); this "
                                    f"run has {run.accelerator.num_processes}")
    if "prompt_format" in state:  # a resumed run keeps reading prompts as it started (older checkpoints: unchecked)
        try:
            check_same_format(trained=PromptFormat.from_dict(state["prompt_format"]), requested=run.config.format,
                              what=f"the checkpoint {checkpoint}")
        except PromptFormatError as exc:
            raise ConfigError("prompt_format", str(exc)) from None
    run.accelerator.load_state(str(checkpoint))
    scheduler.load_state_dict(torch.load(checkpoint / SCHEDULER_FILE, weights_only=True))
    run.step, run.epoch, run.batches_in_epoch = state["step"], state["epoch"], state["batches_in_epoch"]
    if state.get("total_steps") != total_steps:
        run.log(f"note: the checkpoint planned {state.get('total_steps')} steps, this config {total_steps}; "
                f"continuing with {total_steps}")
    run.log(f"resumed from {checkpoint} at step {run.step} (epoch {run.epoch}, batch {run.batches_in_epoch})")


# --- the run ------------------------------------------------------------------------------------------------


def train_reward_model(config: RewardModelConfig, *, reporter: Reporter | None = None) -> RewardModelResult:
    """Train a reward model on K-wise rankings, evaluate it on held-out prompts, calibrate it, save it.

    Reports metrics every step (loss, accuracy, margin, lr, tokens_per_s, grad_norm, epoch), checkpoints
    every `checkpoint_every` steps, stops gracefully (checkpoint, `stopped=True`) when `reporter.should_stop()`
    turns true. The saved directory is `config.output_dir` (RewardModel.from_pretrained loads it).
    """
    if not config.output_dir:
        raise ConfigError("output_dir", "is required to train")
    if not config.resume:
        existing = Path(config.output_dir)
        if (existing / "reward_model.json").exists() or find_last_checkpoint(existing) is not None:
            raise ConfigError("output_dir", f"{existing} already holds a reward model or checkpoints; choose a new "
                                            "directory, or resume ('last')")
    run = _Run(config, reporter or NullReporter())
    accelerator = run.accelerator

    # 1. Seeds, output directory, the config saved with the run.
    seed_everything(config.seed)  # the same head initialisation on every process
    if run.is_main:
        run.output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run.output_dir / "config.json")
    resume_from = _resolve_resume(config)

    # 2. Data: train and held-out rankings (split by prompt), the snapshot's content hash.
    train_records, eval_records, data_info = load_training_data(config)
    calibration_texts = calibration_pairs(config, train_records, eval_records) if config.use_calibration else []
    snapshot_hash = dataset_fingerprint(config.dataset)
    run.log(f"data: {data_info['train_rankings']} training rankings, {data_info['eval_rankings']} held-out "
            f"({data_info['eval_source']}); snapshot {snapshot_hash[:12]}")
    exported_format = snapshot_prompt_format(config.dataset)
    if exported_format is not None and exported_format != config.format:
        run.log(f"warning: the snapshot's project reads its prompts as {exported_format.describe()}, but this "
                f"reward model reads them as {config.format.describe()} (prompt_format / system_prompt); PPO and "
                "the RM check on that project will refuse it")

    # 3. Model: pretrained backbone (+ LoRA), new scalar head, PAD ≠ EOS, dropout off.
    lora = LoraSettings(r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
                        target_modules=list(config.lora_target_modules)) if config.lora else None
    try:
        model = RewardModel.from_backbone(
            config.model, tokenizer_name_or_path=config.tokenizer or None, lora=lora,
            gradient_checkpointing=config.gradient_checkpointing, max_length=config.max_length,
            trust_remote_code=config.trust_remote_code, prompt_format=config.format,
        )
    except PromptFormatError as exc:  # chat, but the tokenizer has no chat template
        raise ConfigError("prompt_format", str(exc)) from None
    run.max_length = model.max_length
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())
    run.log(f"model: {config.model} ({type(model.backbone).__name__}, d={model.hidden_size}, "
            f"{trainable:,} of {total_params:,} parameters trainable{', LoRA' if config.lora else ''}); "
            f"max length {model.max_length}; mixed precision {accelerator.mixed_precision}; prompts as "
            f"{config.format.describe()}")
    seed_everything(config.seed, rank=accelerator.process_index)

    # 4. Tokenise: prompt_ids + response_ids + [eos] for every response; rankings without a preference go.
    encoded = encode_rankings(model.tokenizer, train_records, max_length=model.max_length,
                              prompt_format=model.prompt_format)
    kept = [item for item, record in zip(encoded, train_records) if record.ordered_pairs()]
    if not kept:
        raise DatasetError(f"{config.dataset}: no training ranking orders any pair (every response tied)")
    if len(kept) < len(encoded):
        run.log(f"skipped {len(encoded) - len(kept)} ranking(s) with every response in one tier")
    truncated = sum(len(s) >= model.max_length for item in kept for s in item.sequences)
    if truncated:
        run.log(f"{truncated} sequence(s) reached max_length={model.max_length} and keep their last tokens")

    # 5. Batches of rankings, each with all of its K responses (one forward pass per batch).
    sampler = EpochShuffleSampler(len(kept), seed=config.seed)
    loader = DataLoader(kept, batch_size=config.batch_size, sampler=sampler,
                        collate_fn=RankingCollator(pad_id=model.pad_token_id, padding_side=config.padding_side))

    # 6. AdamW (no decay on biases/norms), warm-up then cosine decay, stepped once per optimizer step.
    optimizer = build_adamw(model, lr=config.learning_rate, weight_decay=config.weight_decay)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accumulation = config.gradient_accumulation_steps
    run.loader_length = len(loader)
    steps_per_epoch = math.ceil(len(loader) / accumulation)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    scheduler = warmup_cosine_scheduler(
        optimizer, warmup_steps=warmup_steps_for(total_steps, config.warmup_ratio), total_steps=total_steps,
        min_ratio=config.min_lr_ratio,
    )

    # 7. Resume: weights, optimizer, scheduler, RNG, and the position in the data.
    if resume_from is not None:
        _load_checkpoint(run, resume_from, scheduler, total_steps)
    elif config.resume == "last":
        run.log("no checkpoint to resume from; starting fresh")
    run.reporter.on_start(total_steps=total_steps, start_step=run.step)
    run.log(f"training: {total_steps} steps ({steps_per_epoch}/epoch × {config.epochs} epoch(s)), "
            f"{config.batch_size} rankings per batch × {accelerator.num_processes} process(es)"
            + (f" × {accumulation} accumulated" if accumulation > 1 else ""))

    # 8. The loop.
    model.train()
    last_metrics: dict[str, float] = {}
    stopped = False
    checkpoint: Path | None = None
    last_checkpoint_step = run.step if resume_from is not None else -1
    while run.step < total_steps:
        batches = accelerator.skip_first_batches(loader, run.batches_in_epoch) if run.batches_in_epoch else loader
        # accelerate's loaders call sampler.set_epoch(<their own iteration count>) when iterated: set that
        # count (a loader that skips batches after a resume starts its count at 0 otherwise).
        sampler.set_epoch(run.epoch)
        if hasattr(batches, "set_epoch"):
            batches.set_epoch(run.epoch)
        group: list[dict[str, torch.Tensor]] = []
        remaining = len(loader) - run.batches_in_epoch
        for batch in batches:
            group.append(batch)
            run.batches_in_epoch += 1
            remaining -= 1
            if len(group) < accumulation and remaining > 0:
                continue
            last_metrics = _train_step(run, model, optimizer, scheduler, group)
            group = []
            run.reporter.on_metrics(run.step, last_metrics)
            if run.step % config.log_every == 0 or run.step == total_steps:
                run.log(f"step {run.step}/{total_steps} loss {last_metrics['loss']:.4f} "
                        f"acc {last_metrics['accuracy']:.3f} margin {last_metrics['margin']:.3f} "
                        f"lr {last_metrics['lr']:.2e} {last_metrics['tokens_per_s']:.0f} tok/s")
            if config.eval_every and eval_records and run.step % config.eval_every == 0 and run.step < total_steps:
                run.reporter.on_metrics(run.step, _eval_metrics(_evaluate(run, model, eval_records)))
            if config.checkpoint_every and run.step % config.checkpoint_every == 0 and run.step < total_steps:
                checkpoint = _save_checkpoint(run, scheduler, total_steps)
                last_checkpoint_step = run.step
            if run.step >= total_steps:
                break
            if run.should_stop():
                stopped = True
                break
        else:
            run.epoch += 1
            run.batches_in_epoch = 0
        if stopped or run.step >= total_steps:
            break
    if stopped:
        if last_checkpoint_step != run.step:
            checkpoint = _save_checkpoint(run, scheduler, total_steps)
        run.log(f"stopped at step {run.step}/{total_steps} on request; resume with --resume last")
        return RewardModelResult(output_dir=run.output_dir, model_dir=None, steps=run.step, total_steps=total_steps,
                                 stopped=True, checkpoint=checkpoint, last_metrics=last_metrics)

    # 9. Held-out evaluation: pairwise accuracy (overall, per annotator, per K), margin, oracle where known.
    evaluation: dict[str, Any] = {"data": data_info, "steps": run.step}
    if eval_records:
        report = _evaluate(run, model, eval_records)
        evaluation["heldout"] = report
        run.reporter.on_metrics(run.step, _eval_metrics(report))
        oracle = f", oracle accuracy {report['oracle']['accuracy']:.3f}" if "oracle" in report else ""
        run.log(f"held-out: accuracy {report['accuracy']:.3f} on {report['pairs']} pairs, mean margin "
                f"{report['mean_margin']:.3f}{oracle}")

    # 10. Calibration: r' = gain·r + bias with mean 0 (std 1 with the gain) on the calibration set.
    unwrapped: RewardModel = accelerator.unwrap_model(model)
    calibration = None
    if config.use_calibration:
        prompts, responses = [p for p, _ in calibration_texts], [r for _, r in calibration_texts]
        raw = _score_sequences(run, model, encode_pairs(unwrapped.tokenizer, prompts, responses,
                                                        max_length=unwrapped.max_length,
                                                        prompt_format=unwrapped.prompt_format))
        fitted = fit_calibration(raw, gain=config.calibration_gain)
        unwrapped.calibration = fitted
        calibration = {"set": config.calibration_set, **calibration_report(raw, fitted)}
        evaluation["calibration"] = calibration
        if "heldout" in evaluation:
            evaluation["heldout"]["mean_margin_calibrated"] = evaluation["heldout"]["mean_margin"] * fitted.gain
        run.log(f"calibration on {calibration['n']} responses ({config.calibration_set}): bias "
                f"{fitted.bias:+.4f}, gain {fitted.gain:.4f}")
    else:
        unwrapped.calibration = Calibration()

    # 11. Save: one directory that loads with RewardModel.from_pretrained; report the evaluation.
    evaluation = json_safe(evaluation)
    accelerator.wait_for_everyone()
    if run.is_main:
        unwrapped.save_pretrained(run.output_dir, training_config=config_to_dict(config), snapshot_hash=snapshot_hash,
                                  evaluation=evaluation)
        (run.output_dir / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2, default=str) + "\n",
                                                      encoding="utf-8")
        run.reporter.on_evaluation(evaluation)
        run.reporter.on_outputs({"reward_model": str(run.output_dir)})
        run.log(f"saved the reward model to {run.output_dir}")
    accelerator.wait_for_everyone()
    return RewardModelResult(output_dir=run.output_dir, model_dir=run.output_dir, steps=run.step,
                             total_steps=total_steps, stopped=False, evaluation=evaluation, calibration=calibration,
                             checkpoint=checkpoint, last_metrics=last_metrics)


def _train_step(
    run: _Run, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
    group: list[dict[str, torch.Tensor]],
) -> dict[str, float]:
    """One optimizer step over `group` (gradient-accumulated micro-batches); returns the step's metrics."""
    accelerator, config = run.accelerator, run.config
    started = time.perf_counter()
    losses, tokens = [], 0.0
    all_rewards, all_ranks, all_masks = [], [], []
    for position, batch in enumerate(group):
        last = position == len(group) - 1
        context = accelerator.no_sync(model) if not last and accelerator.num_processes > 1 else nullcontext()
        with context:
            # 1. rewards of every response of every ranking, one forward pass: (M,) → (N, K)
            flat = model(batch["input_ids"], batch["attention_mask"], calibrated=False)
            rewards = rewards_by_ranking(flat, batch["response_index"])
            # 2. K-wise loss: −1/|P| Σ log σ(r_w − r_l) per ranking, mean over rankings
            loss, _ = kwise_ranking_loss(rewards, batch["ranks"], batch["response_mask"])
            # 3. backward, scaled for accumulation
            accelerator.backward(loss / len(group))
        losses.append(float(loss.detach()))
        tokens += float(batch["attention_mask"].sum())
        all_rewards.append(rewards.detach().float())
        all_ranks.append(batch["ranks"])
        all_masks.append(batch["response_mask"])
    # 4. clip, step, schedule
    grad_norm = math.nan
    if config.max_grad_norm > 0:
        grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    run.step += 1
    # 5. metrics (averaged over processes; tokens/s summed)
    stats = {"accuracy": 0.0, "margin": 0.0}
    pairs = 0
    for rewards, ranks, mask in zip(all_rewards, all_ranks, all_masks):
        batch_stats = pairwise_stats(rewards, ranks, mask)
        if batch_stats["pairs"]:
            stats["accuracy"] += batch_stats["accuracy"] * batch_stats["pairs"]
            stats["margin"] += batch_stats["margin"] * batch_stats["pairs"]
            pairs += batch_stats["pairs"]
    local = {"loss": sum(losses) / len(losses), "accuracy": stats["accuracy"] / max(pairs, 1),
             "margin": stats["margin"] / max(pairs, 1)}
    metrics = run.mean_across_processes(local)
    elapsed = max(time.perf_counter() - started, 1e-9)
    metrics.update(
        lr=float(scheduler.get_last_lr()[0]),
        tokens_per_s=run.sum_across_processes(tokens) / elapsed,
        epoch=run.epoch + run.batches_in_epoch / max(1, run.loader_length),
    )
    if math.isfinite(grad_norm):
        metrics["grad_norm"] = grad_norm
    return metrics


