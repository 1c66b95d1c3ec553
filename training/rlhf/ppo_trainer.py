"""PPO for language models from human feedback: `train_ppo(config, reporter=…) -> PPOResult`.

The loop follows the RLHF-PPO checklist of design.md §7 (InstructGPT, Ouyang et al. 2022; "The N
Implementation Details of RLHF with PPO", HF blog 2023; "The N+ Implementation Details of RLHF with PPO",
Huang et al. 2024, arXiv 2403.17031; Ziegler et al. 2019). Every iteration reads top to bottom:

    1  rollout           sample responses to a batch of prompts (left padding, logits ÷ T, cut after the
                         stop token); log-probs of the actor and the reference, values of the critic
    2  score             the frozen reward model scores prompt + response + EOS; normalise, penalise a
                         missing EOS, clip
    3  rewards           r_t = −β·KL_t, plus the score at the last real token
    4  values & GAE      advantages and returns (γ = 1, λ = 0.95)
    5  whitening         advantages whitened over real tokens (rewards optionally)
    6  PPO epochs        `ppo_update`: reshuffled mini-batches → micro-batches with gradient accumulation;
                         clipped surrogate + vf_coef · clipped value loss (+ ptx_coef · LM loss)
    7  optimizer step    gradient clipping, AdamW, warm-up + cosine schedule (per mini-batch, in ppo_update)
    8  KL controller     adapt β towards the target KL (or keep it fixed)
    9  metrics           reward, RM score, KL, β, entropy, approx-KL, clip fractions, losses, explained
                         variance, ratio, response length, EOS rate, tokens/s … through the reporter
    10 samples           a sample table every `sample_every` iterations
    11 checkpoint        every `checkpoint_every` iterations, and on a graceful stop

Around the loop: the prompts (prompts.py), models (policy.py), resume, the evaluation before and after on
held-out prompts (ppo_eval.py: RM score, KL to the reference, win rate against the starting policy, the demo
oracle), and the final policy (Hugging Face format) and value model, reported through `on_outputs`. Batch sizes are per process; under `accelerate launch` each process draws
different prompts with its own seed offset and gradients are averaged by DDP.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.rlhf import demo_task, ppo_eval
from training.rlhf.advantages import compute_gae, explained_variance, masked_mean, masked_whiten
from training.rlhf.configs import ConfigError, config_to_dict, load_config, save_config
from training.rlhf.kl import AdaptiveKLController, FixedKLController, kl_k1, make_kl_controller, per_token_kl
from training.rlhf.optim import (
    build_adamw,
    capture_rng_state,
    restore_rng_state,
    seed_everything,
    warmup_cosine_scheduler,
)
from training.rlhf.policy import ModelSettings, PPOModels, build_ppo_models, is_peft_model, save_policy
from training.rlhf.ppo_config import PPOConfig
from training.rlhf.ppo_loss import clipped_policy_loss, clipped_value_loss, language_model_loss
from training.rlhf.prompts import PromptStream, is_demo_task, load_prompts, load_texts, split_prompts
from training.rlhf.reporter import NullReporter, Reporter
from training.rlhf.reward_model import pad_sequences
from training.rlhf.rollout import (
    RunningMoments,
    Sequences,
    generate_responses,
    join_prompt_response,
    normalise_scores,
    penalise_and_clip_scores,
    per_token_rewards,
    response_lengths,
    response_logprobs,
    response_values,
    reward_model_sequences,
    select_rows,
    truncate_after_stop,
)
from training.rlhf.sampling import encode_prompts, left_pad

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_FILE = "trainer_state.json"
# Options that must not change between a checkpoint and the run resuming it (the trajectory depends on them).
RESUME_INVARIANTS = ("policy", "reward_model", "prompts", "rollout_batch_size", "mini_batch_size",
                     "micro_batch_size", "ppo_epochs", "lora", "critic_lora", "critic_init", "lora_r",
                     "lora_target_modules", "seed", "eval_prompts", "eval_fraction", "ptx_dataset")


# --- results -------------------------------------------------------------------------------------------------


@dataclass
class PPOResult:
    output_dir: Path
    iterations: int  # iterations completed (including those of the runs this one resumed)
    stopped: bool = False  # a graceful stop was requested and honoured (a checkpoint was written)
    policy_dir: Path | None = None  # the final policy, Hugging Face format + tokenizer
    value_model_dir: Path | None = None
    checkpoint: Path | None = None  # the newest checkpoint written
    evaluation: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # the last iteration's


# --- trainer state (checkpointed) ----------------------------------------------------------------------------------


class TrainerState:
    """Everything a resumed run needs beyond models, optimizers and schedulers: the iteration counter, the
    prompt and ptx positions, the mini-batch shuffling generator, the running score moments and every RNG
    (optim.capture_rng_state). Registered with accelerate's checkpointing (state_dict/load_state_dict)."""

    def __init__(self, *, prompts: PromptStream, shuffle: torch.Generator, moments: RunningMoments,
                 ptx: PromptStream | None) -> None:
        self.iteration = 0
        self.episodes = 0
        self.prompts = prompts
        self.shuffle = shuffle
        self.moments = moments
        self.ptx = ptx
        self.elapsed = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "episodes": self.episodes,
            "elapsed": self.elapsed,
            "prompts": self.prompts.state_dict(),
            "shuffle": self.shuffle.get_state(),
            "moments": self.moments.state_dict(),
            "ptx": self.ptx.state_dict() if self.ptx is not None else None,
            "rng": capture_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.episodes = int(state["episodes"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self.prompts.load_state_dict(state["prompts"])
        self.shuffle.set_state(state["shuffle"])
        self.moments.load_state_dict(state["moments"])
        if self.ptx is not None and state.get("ptx") is not None:
            self.ptx.load_state_dict(state["ptx"])
        restore_rng_state(state["rng"])


# --- checkpoints ------------------------------------------------------------------------------------------------


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (trainer_state.json is written last), oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("iter-") and (p / TRAINER_STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def resolve_resume(config: PPOConfig) -> Path | None:
    """The checkpoint to resume from: none, the newest ('last'), or a directory; refuses to start fresh over
    an output directory that already holds checkpoints."""
    existing = checkpoint_dirs(config.output_dir)
    if not config.resume:
        if existing:
            raise ConfigError("resume", f"{config.output_dir} already holds checkpoints ({existing[-1].name}); "
                                        "pass resume='last' to continue, or choose a new output_dir")
        return None
    if config.resume in ("last", "latest"):
        return existing[-1] if existing else None
    path = Path(config.resume)
    if not (path / TRAINER_STATE_FILE).exists():
        raise ConfigError("resume", f"{path} is not a complete PPO checkpoint (no {TRAINER_STATE_FILE})")
    return path


def _trainable_state_hooks(accelerator) -> None:
    """Checkpoint only trainable weights (the LoRA adapters and heads in memory mode; everything otherwise):
    frozen base weights come from the original checkpoints when a run resumes. On load, check that the
    checkpoint holds every trainable weight (accelerate then loads with strict=False)."""
    from safetensors import safe_open

    def save_hook(models, weights, output_dir) -> None:
        for i, model in enumerate(models):
            params = dict(model.named_parameters())  # tied weights appear once, under their first name
            kept: OrderedDict[str, torch.Tensor] = OrderedDict()
            seen: set[tuple[int, int]] = set()
            for name, tensor in weights[i].items():
                if name in params and not params[name].requires_grad:
                    continue
                storage = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
                if storage in seen:  # a tied copy (GPT-2's lm_head = wte): saved once, tied again on load
                    continue
                seen.add(storage)
                kept[name] = tensor
            weights[i] = kept

    def load_hook(models, input_dir) -> None:
        for i, model in enumerate(models):
            file = Path(input_dir) / f"model{'_' + str(i) if i else ''}.safetensors"
            if not file.exists():
                raise FileNotFoundError(f"{file}: missing from the checkpoint")
            with safe_open(str(file), framework="pt") as handle:
                saved = set(handle.keys())
            missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in saved]
            if missing:
                raise ValueError(f"{file} lacks {len(missing)} trainable weights (e.g. {missing[0]}); it was "
                                 "written for a different model setup")

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


# --- evaluation --------------------------------------------------------------------------------------------------


@dataclass
class RolloutBatch:
    """Responses sampled for a batch of prompts, with what the models say about them."""

    prompt_texts: list[str]
    sequences: Sequences
    response_ids: torch.Tensor  # (B, R)
    response_mask: torch.Tensor  # (B, R)
    has_stop: torch.Tensor  # (B,)
    response_texts: list[str]
    rm_scores: torch.Tensor  # (B,) calibrated RM scores


def resolve_stop_ids(tokenizer, stop_token: str) -> list[int]:
    """Token ids that end a response: the EOS for "eos"; otherwise the given token (a vocabulary entry, or a
    string that encodes to exactly one token) and the EOS as well, so a model that emits EOS still stops."""
    if stop_token == "eos":
        if tokenizer.eos_token_id is None:
            raise ConfigError("stop_token", "the tokenizer has no EOS token; name a stop token")
        return [int(tokenizer.eos_token_id)]
    stop_id = tokenizer.convert_tokens_to_ids(stop_token)
    if stop_id is None or stop_id == tokenizer.unk_token_id:
        encoded = tokenizer(stop_token, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise ConfigError("stop_token", f"{stop_token!r} is not a single token of the policy's tokenizer")
        stop_id = encoded[0]
    eos = tokenizer.eos_token_id
    return [int(stop_id)] + ([int(eos)] if eos is not None and eos != stop_id else [])


class PolicyRuntime:
    """The pieces the loop and the evaluation share: models, tokenizer ids, the RM prompt cache."""

    def __init__(self, config: PPOConfig, models: PPOModels, accelerator) -> None:
        self.config = config
        self.models = models
        self.accelerator = accelerator
        tokenizer = models.tokenizer
        self.pad_id = int(tokenizer.pad_token_id)
        self.stop_ids = resolve_stop_ids(tokenizer, config.stop_token)
        self._rm_prompt_cache: dict[str, list[int]] = {}
        self._prompt_cache: dict[str, list[int]] = {}

    def encode_prompts(self, texts: Sequence[str]) -> list[list[int]]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._prompt_cache]
        if missing:
            for text, ids in zip(missing, encode_prompts(self.models.tokenizer, missing)):
                self._prompt_cache[text] = ids[-self.config.max_prompt_length :]
        return [self._prompt_cache[t] for t in texts]

    def rm_prompt_ids(self, text: str) -> list[int]:
        if text not in self._rm_prompt_cache:
            self._rm_prompt_cache[text] = self.models.reward_model.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._rm_prompt_cache[text]

    def decode(self, response_ids: torch.Tensor, response_mask: torch.Tensor, has_stop: torch.Tensor) -> list[str]:
        """Response texts without the stop token and special tokens (the text the oracle and humans read)."""
        lengths = response_lengths(response_mask).tolist()
        texts = []
        for b, length in enumerate(lengths):
            content = length - (1 if bool(has_stop[b]) else 0)
            texts.append(self.models.tokenizer.decode(response_ids[b, :content].tolist(), skip_special_tokens=True))
        return texts

    @torch.no_grad()
    def score(self, prompt_texts: Sequence[str], response_ids: torch.Tensor, response_mask: torch.Tensor,
              has_stop: torch.Tensor, response_texts: Sequence[str], critic) -> torch.Tensor:
        """Calibrated RM scores (B,) of prompt + response + [eos] (the RM's own tokenisation of the prompt; the
        policy's response ids when the tokenizers agree, else the response text re-tokenised)."""
        rm = self.models.reward_model
        if self.models.rm_reads_policy_ids:
            sequences = reward_model_sequences(
                [self.rm_prompt_ids(t) for t in prompt_texts], response_ids.cpu(), response_mask.cpu(),
                has_stop.cpu(), end_token_id=rm.end_token_id, max_length=rm.max_length,
            )
        else:
            sequences = rm.encode(list(prompt_texts), list(response_texts))
        scores = []
        size = self.config.generation_batch_size
        for start in range(0, len(sequences), size):
            ids, mask = pad_sequences(sequences[start : start + size], pad_id=rm.pad_token_id, side="right")
            with self.accelerator.autocast():
                scores.append(self.models.reward_scores(ids.to(rm.device), mask.to(rm.device), critic=critic))
        return torch.cat(scores).float().to(response_ids.device)

    def sample(self, policy, prompt_texts: Sequence[str], critic, *, seed: int | None = None) -> RolloutBatch:
        """Generate, truncate, decode and score responses of `policy` (an unwrapped causal LM)."""
        config = self.config
        device = self.accelerator.device
        prompt_ids, prompt_mask = left_pad(self.encode_prompts(prompt_texts), self.pad_id)
        prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
        with self.accelerator.autocast():
            raw = generate_responses(
                policy, prompt_ids, prompt_mask, max_new_tokens=config.response_length,
                temperature=config.temperature, top_p=config.top_p, stop_token_ids=self.stop_ids,
                pad_token_id=self.pad_id, batch_size=config.generation_batch_size, generator_seed=seed,
            )
        response_ids, response_mask, has_stop = truncate_after_stop(raw, self.stop_ids, self.pad_id)
        sequences = join_prompt_response(prompt_ids, prompt_mask, response_ids, response_mask)
        texts = self.decode(response_ids, response_mask, has_stop)
        scores = self.score(prompt_texts, response_ids, response_mask, has_stop, texts, critic)
        return RolloutBatch(list(prompt_texts), sequences, response_ids, response_mask, has_stop, texts, scores)

    @torch.no_grad()
    def _in_chunks(self, function, sequences: Sequences) -> torch.Tensor:
        """`function(rows)` over row chunks of generation_batch_size (autocast, no grad), concatenated."""
        size = self.config.generation_batch_size
        out = []
        for start in range(0, sequences.input_ids.shape[0], size):
            with self.accelerator.autocast():
                out.append(function(select_rows(sequences, slice(start, start + size))))
        return torch.cat(out)

    def logprobs(self, model, sequences: Sequences) -> torch.Tensor:
        """log π of the response tokens at the sampling temperature: (B, R)."""
        temperature = self.config.temperature
        return self._in_chunks(lambda rows: response_logprobs(model, rows, temperature=temperature)[0], sequences)

    def reference_logprobs(self, actor, sequences: Sequences) -> torch.Tensor:
        """log π_ref of the response tokens (the frozen copy, or the actor with its adapter off): (B, R)."""
        temperature = self.config.temperature
        return self._in_chunks(
            lambda rows: self.models.reference_logprobs(rows, temperature=temperature, actor=actor), sequences)

    def values(self, critic, sequences: Sequences) -> torch.Tensor:
        """V of every response token: (B, R)."""
        return self._in_chunks(lambda rows: response_values(critic, rows), sequences)


# --- the trainer -------------------------------------------------------------------------------------------------


def _bf16_enabled(config: PPOConfig) -> bool:
    if config.bf16 == "true":
        return True
    if config.bf16 == "false" or config.cpu:
        return False
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _model_settings(config: PPOConfig, *, frozen_dtype: torch.dtype) -> ModelSettings:
    return ModelSettings(
        policy=config.policy, reward_model=config.reward_model, lora=config.lora, critic_lora=config.critic_lora,
        lora_r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        lora_target_modules=list(config.lora_target_modules), critic_init=config.critic_init,
        frozen_dtype=frozen_dtype, gradient_checkpointing=config.gradient_checkpointing,
        trust_remote_code=config.trust_remote_code,
    )


def _check_resume_compatible(config: PPOConfig, checkpoint: Path) -> None:
    saved_path = checkpoint / "config.json"
    if not saved_path.exists():
        return
    saved = json.loads(saved_path.read_text(encoding="utf-8"))
    current = config_to_dict(config)
    for name in RESUME_INVARIANTS:
        if name in saved and saved[name] != current[name]:
            raise ConfigError(name, f"differs from the checkpoint's ({saved[name]!r}); a resumed run must keep it")


@contextmanager
def _no_sync_unless(accelerator, sync: bool, models: Sequence[Any]) -> Iterator[None]:
    """Skip DDP's gradient all-reduce on all but the last micro-batch of a mini-batch."""
    with ExitStack() as stack:
        if not sync:
            for model in models:
                stack.enter_context(accelerator.no_sync(model))
        yield


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return sum(finite) / len(finite) if finite else float("nan")


@dataclass
class UpdateBatch:
    """One iteration's rollout, ready for the PPO update; tensors are (B, R) over response tokens."""

    sequences: Sequences
    mask: torch.Tensor  # 1 on real response tokens
    logprobs: torch.Tensor  # log π_old at the sampling temperature
    values: torch.Tensor  # V_old, masked
    advantages: torch.Tensor
    returns: torch.Tensor
    lengths: torch.Tensor  # (B,) response lengths


UPDATE_STATS = ("policy_loss", "value_loss", "ptx_loss", "loss", "clip_fraction", "value_clip_fraction",
                "approx_kl", "ratio_mean", "entropy", "grad_norm_actor", "grad_norm_critic")


def ppo_update(
    batch: UpdateBatch, *, config: PPOConfig, accelerator, actor, critic, optimizers: tuple, schedulers: tuple,
    shuffle: torch.Generator, ptx_ids: Sequence[list[int]] = (), ptx_stream: PromptStream | None = None,
    pad_id: int = 0,
) -> dict[str, float]:
    """The PPO epochs over one rollout; returns the means of the update's statistics (losses, clip
    fractions, approx-KL, ratio, entropy, gradient norms; a statistic never measured is left out).

    Each epoch reshuffles the rows (`shuffle`, checkpointed with the run) into mini-batches; each mini-batch
    is one optimizer step of both models, accumulated over its micro-batches (DDP syncs on the last one):
    clipped surrogate + vf_coef · clipped value loss (+ ptx_coef · LM loss on `ptx_ids` drawn from
    `ptx_stream`), then gradient clipping, AdamW and the schedule.
    """
    opt_actor, opt_critic = optimizers
    sched_actor, sched_critic = schedulers
    actor.train()
    critic.train()
    stats: dict[str, list[float]] = {name: [] for name in UPDATE_STATS}
    rows_total = batch.sequences.input_ids.shape[0]
    for _epoch in range(config.ppo_epochs):
        order = torch.randperm(rows_total, generator=shuffle).to(accelerator.device)
        for mb_start in range(0, rows_total, config.mini_batch_size):
            micro_batches = order[mb_start : mb_start + config.mini_batch_size].split(config.micro_batch_size)
            for k, micro in enumerate(micro_batches):
                # 6a. one micro-batch, trimmed to its longest response: losses, backward (scaled)
                width = int(batch.lengths[micro].max())
                mb_sequences = select_rows(batch.sequences, micro, trim_to=width)
                mb_mask = batch.mask[micro, :width]
                with _no_sync_unless(accelerator, k == len(micro_batches) - 1, (actor, critic)):
                    with accelerator.autocast():
                        new_logprobs, entropy = response_logprobs(actor, mb_sequences,
                                                                  temperature=config.temperature, with_entropy=True)
                        pg = clipped_policy_loss(new_logprobs, batch.logprobs[micro, :width],
                                                 batch.advantages[micro, :width], mb_mask,
                                                 cliprange=config.cliprange)
                        new_values = response_values(critic, mb_sequences)
                        vf = clipped_value_loss(new_values, batch.values[micro, :width], batch.returns[micro, :width],
                                                mb_mask, cliprange_value=config.cliprange_value)
                        loss = pg.loss + config.vf_coef * vf.loss
                        if ptx_ids:
                            ptx_loss = _ptx_loss(actor, ptx_ids, ptx_stream, config=config, pad_id=pad_id,
                                                 device=accelerator.device)
                            loss = loss + config.ptx_coef * ptx_loss
                            stats["ptx_loss"].append(float(ptx_loss.detach()))
                    accelerator.backward(loss / config.gradient_accumulation_steps)
                stats["policy_loss"].append(float(pg.loss.detach()))
                stats["value_loss"].append(float(vf.loss.detach()))
                stats["loss"].append(float(loss.detach()))
                stats["clip_fraction"].append(float(pg.clip_fraction))
                stats["value_clip_fraction"].append(float(vf.clip_fraction))
                stats["approx_kl"].append(float(pg.approx_kl))
                stats["ratio_mean"].append(float(pg.ratio_mean))
                stats["entropy"].append(float(masked_mean(entropy, mb_mask)))

            # 7. gradient clipping, AdamW, warm-up + cosine schedule (once per mini-batch)
            max_norm = config.max_grad_norm if config.max_grad_norm > 0 else math.inf
            stats["grad_norm_actor"].append(float(accelerator.clip_grad_norm_(actor.parameters(), max_norm)))
            stats["grad_norm_critic"].append(float(accelerator.clip_grad_norm_(critic.parameters(), max_norm)))
            opt_actor.step()
            opt_critic.step()
            sched_actor.step()
            sched_critic.step()
            opt_actor.zero_grad(set_to_none=True)
            opt_critic.zero_grad(set_to_none=True)
    return {name: _mean(values) for name, values in stats.items() if values}


def _ptx_loss(actor, ptx_ids: Sequence[list[int]], stream: PromptStream, *, config: PPOConfig, pad_id: int,
              device) -> torch.Tensor:
    """PPO-ptx (InstructGPT §3.5): the language-modelling loss on the next `ptx_batch_size` ptx texts."""
    rows = [ptx_ids[i] for i in stream.next_batch(config.ptx_batch_size)]
    ptx_input, ptx_mask = pad_sequences(rows, pad_id=pad_id, side="right")
    ptx_input, ptx_mask = ptx_input.to(device), ptx_mask.to(device)
    logits = actor(input_ids=ptx_input, attention_mask=ptx_mask, use_cache=False).logits
    return language_model_loss(logits, ptx_input, ptx_mask)


def train_ppo(config: PPOConfig, *, reporter: Reporter | None = None) -> PPOResult:
    """Run PPO as configured; returns a `PPOResult`. Resumable (config.resume), stoppable (reporter.should_stop)."""
    from accelerate import Accelerator

    # 0. setup: devices, seeds (per-rank offset), output directory, models, data, optimizers ------------------
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # per-file loading bars would flood the run's log
    bf16 = _bf16_enabled(config)
    accelerator = Accelerator(cpu=config.cpu, mixed_precision="bf16" if bf16 else "no",
                              step_scheduler_with_optimizer=False)
    main = accelerator.is_main_process
    report: Reporter = (reporter or NullReporter()) if main else NullReporter()
    output_dir = Path(config.output_dir)
    resume_from = resolve_resume(config)
    if resume_from is not None:
        _check_resume_compatible(config, resume_from)
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "config.json")
    seed_everything(config.seed, rank=accelerator.process_index)

    # 0a. prompts: training and held-out (prompts.py)
    records = load_prompts(config.prompts)
    if config.eval_prompts:
        train_records, eval_records = records, load_prompts(config.eval_prompts)[: config.eval_max_prompts]
    else:
        train_records, eval_records = split_prompts(records, eval_fraction=config.eval_fraction,
                                                    max_eval=config.eval_max_prompts, seed=config.seed)
    demo = is_demo_task(train_records + eval_records, config.task)
    report.on_log(f"PPO: {len(train_records)} training prompts, {len(eval_records)} held out"
                  f"{' (demo task: oracle on)' if demo else ''}; {config.num_iterations} iterations of "
                  f"{config.rollout_batch_size} rollouts × {accelerator.num_processes} process(es); "
                  f"derived sizes {config.derived()}")

    # 0b. models (policy.py), the ptx texts, optimizers and schedules
    models = build_ppo_models(_model_settings(config, frozen_dtype=torch.bfloat16 if bf16 else torch.float32),
                              device=accelerator.device)
    limit = getattr(models.actor.config, "max_position_embeddings", None) or getattr(
        models.actor.config, "n_positions", None)
    if limit is not None and config.max_prompt_length + config.response_length > limit:
        raise ConfigError("response_length", f"max_prompt_length + response_length = "
                          f"{config.max_prompt_length + config.response_length} exceeds the policy's {limit} positions")
    runtime = PolicyRuntime(config, models, accelerator)
    ptx_ids: list[list[int]] = []
    if config.ptx_coef > 0:
        max_len = config.max_prompt_length + config.response_length
        ptx_ids = [ids[:max_len] for ids in models.tokenizer(load_texts(config.ptx_dataset),
                                                             add_special_tokens=True)["input_ids"] if ids]

    opt_actor = build_adamw(models.actor, lr=config.lr, weight_decay=config.weight_decay)
    opt_critic = build_adamw(models.critic, lr=config.critic_lr, weight_decay=config.weight_decay)
    sched_actor = warmup_cosine_scheduler(opt_actor, warmup_steps=config.warmup_steps,
                                          total_steps=config.total_optimizer_steps, min_ratio=config.min_lr_ratio)
    sched_critic = warmup_cosine_scheduler(opt_critic, warmup_steps=config.warmup_steps,
                                           total_steps=config.total_optimizer_steps, min_ratio=config.min_lr_ratio)
    actor, critic, opt_actor, opt_critic, sched_actor, sched_critic = accelerator.prepare(
        models.actor, models.critic, opt_actor, opt_critic, sched_actor, sched_critic)
    unwrapped_actor = accelerator.unwrap_model(actor)
    unwrapped_critic = accelerator.unwrap_model(critic)

    # 0c. the KL controller and the trainer state, checkpointed with the models
    kl_ctl = make_kl_controller(config.init_kl_coef, target=config.kl_target if config.adaptive_kl else None,
                                horizon=config.kl_horizon)
    shuffle = torch.Generator().manual_seed(config.seed + 7919 * accelerator.process_index)
    state = TrainerState(
        prompts=PromptStream(len(train_records), seed=config.seed), shuffle=shuffle, moments=RunningMoments(),
        ptx=PromptStream(len(ptx_ids), seed=config.seed + 1 + accelerator.process_index) if ptx_ids else None,
    )
    accelerator.register_for_checkpointing(kl_ctl, state)
    _trainable_state_hooks(accelerator)

    def save_checkpoint() -> Path:
        path = output_dir / CHECKPOINTS_DIR / f"iter-{state.iteration:06d}"
        accelerator.wait_for_everyone()
        accelerator.save_state(str(path), safe_serialization=True)
        if main:
            save_config(config, path / "config.json")
            summary = {"iteration": state.iteration, "episodes": state.episodes, "kl_coef": kl_ctl.value,
                       "elapsed_s": state.elapsed, "num_iterations": config.num_iterations, **config.derived()}
            (path / TRAINER_STATE_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            for old in checkpoint_dirs(output_dir)[: -config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
            report.on_checkpoint(state.iteration, str(path))
        accelerator.wait_for_everyone()
        return path

    def stop_requested() -> bool:
        flag = torch.tensor(1.0 if report.should_stop() else 0.0, device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum") > 0)

    # 0d. resume: models, optimizers, schedules, KL controller, trainer state, the saved "before" evaluation
    result = PPOResult(output_dir=output_dir, iterations=0)
    evaluation: dict[str, Any] = {}
    before_rows: list[dict[str, Any]] = []
    if resume_from is not None:
        accelerator.load_state(str(resume_from), strict=False)
        report.on_log(f"resumed from {resume_from} at iteration {state.iteration} (β = {kl_ctl.value:.4g})")
        saved_before = ppo_eval.load_before(output_dir)
        if saved_before is not None:
            evaluation["before"], before_rows = saved_before
    report.on_start(total_steps=config.num_iterations, start_step=state.iteration)

    # 0e. evaluation before training (the starting policy = the reference), with a fixed seed (ppo_eval.py)
    eval_seed = config.seed + 104729
    if config.evaluate and eval_records and "before" not in evaluation:
        summary, before_rows = ppo_eval.evaluate_policy(runtime, unwrapped_actor, unwrapped_critic, eval_records,
                                                        which="before", demo=demo, seed=eval_seed)
        evaluation["before"] = summary
        if main:
            ppo_eval.save_before(output_dir, summary, before_rows)
            report.on_evaluation({"before": summary})
            report.on_log(f"evaluation before: {ppo_eval.format_summary(summary)}")

    world = accelerator.num_processes
    metrics: dict[str, float] = {}
    while state.iteration < config.num_iterations:
        if stop_requested():
            if result.checkpoint is None or result.checkpoint.name != f"iter-{state.iteration:06d}":
                result.checkpoint = save_checkpoint()
            report.on_log(f"stopped at iteration {state.iteration}; checkpoint {result.checkpoint}")
            result.stopped, result.iterations, result.metrics = True, state.iteration, metrics
            result.evaluation = evaluation
            return result
        started = time.perf_counter()
        kl_coef = kl_ctl.value

        # 1. rollout: sample responses (actor in eval mode, logits ÷ T), cut after the stop token; the
        #    actor's and the reference's log-probs and the critic's values of every response token
        indices = state.prompts.next_batch(config.rollout_batch_size, rank=accelerator.process_index, world=world)
        prompt_texts = [train_records[i].text for i in indices]
        generation_started = time.perf_counter()
        batch = runtime.sample(unwrapped_actor, prompt_texts, unwrapped_critic)
        generation_s = time.perf_counter() - generation_started
        sequences, mask = batch.sequences, batch.response_mask
        logprobs = runtime.logprobs(unwrapped_actor, sequences)
        ref_logprobs = runtime.reference_logprobs(unwrapped_actor, sequences)
        values = runtime.values(unwrapped_critic, sequences) * mask

        # 2. score: the calibrated RM score of prompt + response + EOS (computed in runtime.sample), then
        #    normalisation, the missing-EOS penalty and clipping
        scores = normalise_scores(batch.rm_scores, config.score_norm, state.moments)
        scores = penalise_and_clip_scores(scores, batch.has_stop, missing_eos_penalty=config.missing_eos_penalty,
                                          reward_clip=config.reward_clip or None)

        # 3. rewards = score − β·KL (per token; the score on the last real token)
        kl = per_token_kl(logprobs, ref_logprobs, config.kl_estimator) * mask
        rewards, non_score = per_token_rewards(scores, kl, mask, kl_coef=kl_coef)
        if config.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)

        # 4. values & GAE (γ, λ)
        advantages, returns = compute_gae(rewards, values, mask, gamma=config.gamma, lam=config.lam)

        # 5. whitening of the advantages over real tokens
        if config.whiten_advantages:
            advantages = masked_whiten(advantages, mask)

        # 6–7. PPO epochs over reshuffled mini-batches (micro-batches, gradient accumulation), optimizer steps
        optimise_started = time.perf_counter()
        lengths = response_lengths(mask)
        update = UpdateBatch(sequences, mask, logprobs, values, advantages, returns, lengths)
        update_stats = ppo_update(update, config=config, accelerator=accelerator, actor=actor, critic=critic,
                                  optimizers=(opt_actor, opt_critic), schedulers=(sched_actor, sched_critic),
                                  shuffle=state.shuffle, ptx_ids=ptx_ids, ptx_stream=state.ptx,
                                  pad_id=runtime.pad_id)
        optimise_s = time.perf_counter() - optimise_started

        # 8. KL controller: adapt β to the measured KL (Σ_t k1 per response, averaged over all processes)
        sequence_kl_k1 = (kl_k1(logprobs, ref_logprobs) * mask).sum(dim=1)
        mean_kl_k1 = float(accelerator.reduce(sequence_kl_k1.mean(), reduction="mean"))
        kl_ctl.update(mean_kl_k1, n_steps=config.rollout_batch_size * world)
        state.iteration += 1
        state.episodes += config.rollout_batch_size * world

        # 9. metrics (averaged over processes)
        generated_tokens = float(mask.sum())
        sequence_reward = scores + non_score.sum(dim=1)  # score − β·Σ KL_t (before any reward whitening)
        local = {
            "reward": float(sequence_reward.mean()),
            "rm_score": float(batch.rm_scores.mean()),
            "score": float(scores.mean()),
            "non_score_reward": float(non_score.sum(dim=1).mean()),
            "kl": float(kl.sum(dim=1).mean()),
            "kl_k1": float(sequence_kl_k1.mean()),
            "beta": kl_coef,
            "explained_variance": explained_variance(values, returns, mask),
            "value_mean": float(masked_mean(values, mask)),
            "return_mean": float(masked_mean(returns, mask)),
            "advantage_mean": float(masked_mean(advantages, mask)),
            "response_length": float(lengths.float().mean()),
            "eos_rate": float(batch.has_stop.float().mean()),
            "tokens_per_s": generated_tokens / max(generation_s, 1e-9),
            "rollout_s": generation_s,
            "optimise_s": optimise_s,
            "lr": float(sched_actor.get_last_lr()[0]),
            "critic_lr": float(sched_critic.get_last_lr()[0]),
            **update_stats,
        }
        if demo:
            local["oracle_score"] = _mean([demo_task.oracle_score(p, r)
                                           for p, r in zip(prompt_texts, batch.response_texts)])
        names = sorted(local)
        reduced = accelerator.reduce(torch.tensor([local[n] for n in names], dtype=torch.float64,
                                                  device=accelerator.device), reduction="mean")
        metrics = dict(zip(names, (float(v) for v in reduced)))
        metrics["episodes"] = float(state.episodes)
        metrics["iteration_s"] = time.perf_counter() - started
        state.elapsed += metrics["iteration_s"]
        report.on_metrics(state.iteration, metrics)
        if state.iteration % config.log_every == 0 or state.iteration == config.num_iterations:
            report.on_log(f"iteration {state.iteration}/{config.num_iterations}: reward {metrics['reward']:.3f} "
                          f"rm_score {metrics['rm_score']:.3f} kl {metrics['kl']:.3f} β {kl_coef:.4g} "
                          f"approx_kl {metrics['approx_kl']:.4f} clip {metrics['clip_fraction']:.3f} "
                          f"len {metrics['response_length']:.1f} eos {metrics['eos_rate']:.2f}"
                          + (f" oracle {metrics['oracle_score']:.3f}" if demo else ""))

        # 10. sample table
        if config.sample_every and (state.iteration % config.sample_every == 0 or state.iteration == 1):
            report.on_samples(state.iteration, _sample_rows(batch, sequence_reward, kl, lengths,
                                                            limit=config.samples_per_table, demo=demo))

        # 11. checkpoint
        if config.checkpoint_every and state.iteration % config.checkpoint_every == 0:
            result.checkpoint = save_checkpoint()

    # 12. the final policy (Hugging Face format + tokenizer) and value model
    policy_dir = output_dir / "policy"
    value_dir = output_dir / "value_model"
    adapter_dir = output_dir / "policy_adapter"
    lora_actor = is_peft_model(unwrapped_actor)
    if main:
        if lora_actor:
            unwrapped_actor.save_pretrained(str(adapter_dir))
            models.tokenizer.save_pretrained(str(adapter_dir))
        else:
            save_policy(unwrapped_actor, models.tokenizer, policy_dir)
        unwrapped_critic.save_pretrained(value_dir, tokenizer=models.tokenizer)

    # 13. evaluation after training: the same prompts and seed as before; win rate against the start
    if config.evaluate and eval_records:
        summary, after_rows = ppo_eval.evaluate_policy(runtime, unwrapped_actor, unwrapped_critic, eval_records,
                                                       which="after", demo=demo, seed=eval_seed)
        evaluation = ppo_eval.after_report(summary, after_rows, evaluation, before_rows)
        if main:
            ppo_eval.save_report(output_dir, evaluation, after_rows, before_rows)
            report.on_evaluation(evaluation)
            report.on_log(f"evaluation after: {ppo_eval.format_summary(summary)}")
    if main and lora_actor:  # merge last: the evaluation above still needed the adapter-disabled reference
        save_policy(unwrapped_actor, models.tokenizer, policy_dir)

    # 14. what the run wrote, for the reporter (the run records it)
    if main:
        outputs = {"policy": str(policy_dir), "value_model": str(value_dir)}
        if lora_actor:
            outputs["policy_adapter"] = str(adapter_dir)
        report.on_outputs(outputs)
    accelerator.wait_for_everyone()
    result.iterations = state.iteration
    result.policy_dir, result.value_model_dir = policy_dir, value_dir
    result.evaluation, result.metrics = evaluation, metrics
    return result


def _sample_rows(batch: RolloutBatch, sequence_reward: torch.Tensor, kl: torch.Tensor, lengths: torch.Tensor, *,
                 limit: int, demo: bool) -> list[dict[str, Any]]:
    """The first `limit` rollouts of an iteration as sample-table rows."""
    rows = []
    for b in range(min(limit, len(batch.prompt_texts))):
        row = {"prompt": batch.prompt_texts[b], "response": batch.response_texts[b],
               "reward": float(sequence_reward[b]), "score": float(batch.rm_scores[b]),
               "kl": float(kl[b].sum()), "length": int(lengths[b]), "eos": bool(batch.has_stop[b])}
        if demo:
            row["oracle"] = demo_task.oracle_score(batch.prompt_texts[b], batch.response_texts[b])
        rows.append(row)
    return rows


def load_ppo_config(path: str | Path) -> PPOConfig:
    """A saved config.json (of a run or a checkpoint) as a PPOConfig."""
    return load_config(PPOConfig, path)


__all__ = [
    "AdaptiveKLController", "FixedKLController", "PPOConfig", "PPOResult", "PolicyRuntime", "UpdateBatch",
    "load_ppo_config", "ppo_update", "train_ppo",
]
