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
    8  KL controller     adapt β towards the target KL (or keep it fixed); stop early when the KL exceeds
                         kl_stop_factor × kl_target
    9  metrics           reward, RM score, KL, β, entropy, approx-KL, clip fractions, losses, explained
                         variance, ratio, response length, EOS rate, tokens/s … through the reporter
    10 samples           a sample table every `sample_every` iterations
    11 checkpoint        every `checkpoint_every` iterations, and on a graceful stop
    (9b) selection       every `select_every` iterations: the policy on held-out selection prompts (the demo
                         oracle, a reward model not optimised, or the score − β·KL); the best one is kept
                         (`BestPolicy`) and becomes the final policy

Against reward over-optimisation (Gao et al. 2023, "Scaling Laws for Reward Model Overoptimization"), by
default: the adaptive KL controller with a target and a horizon relative to the run's length, early stopping
on KL, and the best policy by a held-out signal; optionally an ensemble of reward models whose conservative
combination is optimised (rm_ensemble.py, Coste et al. 2024).

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

from training.rlhf import demo_task, ppo_eval, rm_ensemble
from training.rlhf.advantages import compute_gae, explained_variance, masked_mean, masked_whiten
from training.rlhf.chat_format import PromptFormatError, format_prompt
from training.rlhf.configs import ConfigError, config_to_dict, load_config, save_config
from training.rlhf.kl import AdaptiveKLController, FixedKLController, kl_k1, make_kl_controller, per_token_kl
from training.rlhf.optim import (
    build_adamw,
    capture_rng_state,
    restore_rng_state,
    seed_everything,
    use_cpu,
    warmup_cosine_scheduler,
)
from training.rlhf.policy import (
    ModelSettings,
    PPOModels,
    build_ppo_models,
    freeze,
    fuse_activations,
    is_peft_model,
    save_policy,
    tokenizers_compatible,
)
from training.rlhf.ppo_config import PPOConfig
from training.rlhf.ppo_loss import clipped_policy_loss, clipped_value_loss, language_model_loss
from training.rlhf.prompts import PromptStream, is_demo_task, load_prompts, load_texts, split_prompts
from training.rlhf.reporter import NullReporter, Reporter
from training.rlhf.reward_model import RewardModel, check_saved_format, pad_sequences
from training.rlhf.rollout import (
    RunningMoments,
    Sequences,
    eval_mode,
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
    whiten_across,
)
from training.rlhf.sampling import encode_prompts, left_pad

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_FILE = "trainer_state.json"
RANK_STATE_FILE = "rank_state_{rank}.pt"  # per process: RNG, shuffle generator, ptx position, score moments
# Options that must not change between a checkpoint and the run resuming it (the trajectory depends on them).
RESUME_INVARIANTS = ("policy", "reward_model", "prompts", "rollout_batch_size", "mini_batch_size",
                     "micro_batch_size", "ppo_epochs", "lora", "critic_lora", "critic_init", "lora_r",
                     "lora_target_modules", "seed", "eval_prompts", "eval_fraction", "ptx_dataset",
                     "reward_ensemble", "select_fraction", "select_max_prompts", "prompt_format", "system_prompt")


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
    """Everything a resumed run needs beyond models, optimizers and schedulers.

    Shared by all processes (`state_dict`, registered with accelerate's checkpointing, saved by rank 0): the
    iteration counter, the episodes, the prompt position. Per process (`rank_state_dict`, saved by every rank
    as rank_state_<r>.pt and restored AFTER accelerate's own restore): the mini-batch shuffling generator, the
    ptx position, the running score moments and every RNG (optim.capture_rng_state) — restoring rank 0's copy
    on every rank would replay rank 0's draws everywhere."""

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
        }

    def rank_state_dict(self) -> dict[str, Any]:
        return {
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
        if "shuffle" in state:  # a checkpoint from before the per-rank files (one process)
            self.load_rank_state_dict(state)

    def load_rank_state_dict(self, state: dict[str, Any]) -> None:
        self.shuffle.set_state(state["shuffle"])
        self.moments.load_state_dict(state["moments"])
        if self.ptx is not None and state.get("ptx") is not None:
            self.ptx.load_state_dict(state["ptx"])
        restore_rng_state(state["rng"])


class BestPolicy:
    """The best policy so far by the held-out selection signal: its iteration, its score and a CPU copy of the
    actor's trainable weights (the LoRA adapters in memory mode, else every weight). Registered with
    accelerate's checkpointing, so a resumed run keeps it. Keeping the best checkpoint by a held-out signal
    instead of the last one is early stopping against over-optimisation (Gao et al. 2023, §4)."""

    def __init__(self) -> None:
        self.iteration: int | None = None
        self.score = -math.inf
        self.weights: dict[str, torch.Tensor] | None = None
        self.history: list[tuple[int, float]] = []  # (iteration, selection score) of every selection evaluation

    def offer(self, iteration: int, score: float, actor) -> bool:
        """Record `score` at `iteration`; keep the actor's weights when it beats the best. True when kept."""
        self.history.append((iteration, score))
        if not math.isfinite(score) or score <= self.score:
            return False
        self.iteration, self.score = iteration, score
        trainable = {name for name, p in actor.named_parameters() if p.requires_grad}
        self.weights = {name: t.detach().to("cpu", copy=True) for name, t in actor.state_dict().items()
                        if name in trainable}
        return True

    def restore(self, actor) -> None:
        """Load the kept weights into `actor` (nothing when none was kept)."""
        if self.weights is None:
            return
        missing = set(self.weights) - set(actor.state_dict())
        if missing:
            raise ValueError(f"the kept best policy has weights the actor lacks (e.g. {sorted(missing)[0]})")
        actor.load_state_dict(self.weights, strict=False)

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "score": self.score, "weights": self.weights,
                "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = state["iteration"]
        self.score = float(state["score"])
        self.weights = state["weights"]
        self.history = [tuple(h) for h in state.get("history", [])]


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
    rm_scores: torch.Tensor  # (B,) calibrated RM scores (an ensemble's combination when there is one)
    member_spread: torch.Tensor | None = None  # (B,) std of an ensemble's member scores, None for one RM


def check_reward_model_formats(config: PPOConfig, reward_models: Sequence[str]) -> None:
    """Every reward model the run scores with (the primary, the ensemble, the selection model) was trained on
    prompts in the run's format; a mismatch is a ConfigError on prompt_format that names both formats."""
    paths = [*reward_models, *([config.selection_reward_model] if config.selection_reward_model else [])]
    for path in paths:
        try:
            check_saved_format(path, config.format)
        except PromptFormatError as exc:
            raise ConfigError("prompt_format", str(exc)) from None


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

    def __init__(self, config: PPOConfig, models: PPOModels, accelerator,
                 ensemble: Sequence[RewardModel] = ()) -> None:
        self.config = config
        self.models = models
        self.accelerator = accelerator
        self.ensemble = list(ensemble)  # reward models scored besides models.reward_model (frozen)
        self._ensemble_reads_ids = [tokenizers_compatible(models.tokenizer, rm.tokenizer) for rm in self.ensemble]
        tokenizer = models.tokenizer
        self.pad_id = int(tokenizer.pad_token_id)
        self.stop_ids = resolve_stop_ids(tokenizer, config.stop_token)
        self._rm_prompt_cache: dict[str, list[int]] = {}
        self._prompt_cache: dict[str, list[int]] = {}

    def encode_prompts(self, texts: Sequence[str]) -> list[list[int]]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._prompt_cache]
        if missing:
            # the policy reads each prompt in the run's prompt format (chat_format.format_prompt)
            for text, ids in zip(missing, encode_prompts(self.models.tokenizer, missing,
                                                         prompt_format=self.config.format)):
                self._prompt_cache[text] = ids[-self.config.max_prompt_length :]
        return [self._prompt_cache[t] for t in texts]

    def rm_prompt_ids(self, text: str, rm: RewardModel | None = None) -> list[int]:
        rm = rm or self.models.reward_model
        key = f"{id(rm)}/{text}"
        if key not in self._rm_prompt_cache:
            self._rm_prompt_cache[key] = rm.tokenizer(rm.format_prompt(text), add_special_tokens=False)["input_ids"]
        return self._rm_prompt_cache[key]

    def decode(self, response_ids: torch.Tensor, response_mask: torch.Tensor, has_stop: torch.Tensor) -> list[str]:
        """Response texts without the stop token and special tokens (the text the oracle and humans read)."""
        lengths = response_lengths(response_mask).tolist()
        texts = []
        for b, length in enumerate(lengths):
            content = length - (1 if bool(has_stop[b]) else 0)
            texts.append(self.models.tokenizer.decode(response_ids[b, :content].tolist(), skip_special_tokens=True))
        return texts

    def _rm_sequences(self, rm: RewardModel, reads_ids: bool, prompt_texts: Sequence[str],
                      response_ids: torch.Tensor, response_mask: torch.Tensor, has_stop: torch.Tensor,
                      response_texts: Sequence[str]) -> list[list[int]]:
        """prompt + response + [eos] in `rm`'s tokens: its own tokenisation of the prompt and the policy's
        response ids when the tokenizers agree, else the response text re-tokenised."""
        if reads_ids:
            return reward_model_sequences(
                [self.rm_prompt_ids(t, rm) for t in prompt_texts], response_ids.cpu(), response_mask.cpu(),
                has_stop.cpu(), end_token_id=rm.end_token_id, max_length=rm.max_length,
            )
        return rm.encode(list(prompt_texts), list(response_texts))

    def _score_chunks(self, rm: RewardModel, sequences: list[list[int]], forward) -> torch.Tensor:
        scores = []
        size = self.config.generation_batch_size
        for start in range(0, len(sequences), size):
            ids, mask = pad_sequences(sequences[start : start + size], pad_id=rm.pad_token_id, side="right")
            with self.accelerator.autocast():
                scores.append(forward(ids.to(rm.device), mask.to(rm.device)))
        return torch.cat(scores).float()

    @torch.no_grad()
    def score_members(self, prompt_texts: Sequence[str], response_ids: torch.Tensor, response_mask: torch.Tensor,
                      has_stop: torch.Tensor, response_texts: Sequence[str], critic) -> torch.Tensor:
        """Calibrated scores (M, B) of prompt + response + [eos] under every reward model: the primary one
        (row 0) and the ensemble's other members."""
        rm = self.models.reward_model
        sequences = self._rm_sequences(rm, self.models.rm_reads_policy_ids, prompt_texts, response_ids,
                                       response_mask, has_stop, response_texts)
        rows = [self._score_chunks(rm, sequences, lambda i, m: self.models.reward_scores(i, m, critic=critic))]
        for member, reads_ids in zip(self.ensemble, self._ensemble_reads_ids):
            member_sequences = self._rm_sequences(member, reads_ids, prompt_texts, response_ids, response_mask,
                                                  has_stop, response_texts)
            rows.append(self._score_chunks(member, member_sequences, lambda i, m, rm=member: rm(i, m)))
        return torch.stack([row.to(response_ids.device) for row in rows])

    @torch.no_grad()
    def score(self, prompt_texts: Sequence[str], response_ids: torch.Tensor, response_mask: torch.Tensor,
              has_stop: torch.Tensor, response_texts: Sequence[str], critic) -> torch.Tensor:
        """The reward model score PPO optimises (B,): the calibrated RM score, or an ensemble's
        `ensemble_combination` of its members' calibrated scores (rm_ensemble.combine_scores)."""
        members = self.score_members(prompt_texts, response_ids, response_mask, has_stop, response_texts, critic)
        return rm_ensemble.combine_scores(members, method=self.config.ensemble_combination,
                                          coef=self.config.ensemble_coef)

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
        members = self.score_members(prompt_texts, response_ids, response_mask, has_stop, texts, critic)
        scores = rm_ensemble.combine_scores(members, method=config.ensemble_combination, coef=config.ensemble_coef)
        spread = rm_ensemble.member_spread(members) if members.shape[0] > 1 else None
        return RolloutBatch(list(prompt_texts), sequences, response_ids, response_mask, has_stop, texts, scores,
                            spread)

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
        """V of every response token: (B, R), in eval mode (no LoRA dropout in the rollout's values)."""
        with eval_mode(critic):
            return self._in_chunks(lambda rows: response_values(critic, rows), sequences)


# --- the trainer -------------------------------------------------------------------------------------------------


def _bf16_enabled(config: PPOConfig) -> bool:
    if config.bf16 == "true":
        return True
    if config.bf16 == "false" or config.cpu:
        return False
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _model_settings(config: PPOConfig, *, frozen_dtype: torch.dtype, reward_model: str | None = None
                    ) -> ModelSettings:
    return ModelSettings(
        policy=config.policy, reward_model=reward_model or config.reward_model, lora=config.lora,
        critic_lora=config.critic_lora,
        lora_r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        lora_target_modules=list(config.lora_target_modules), critic_init=config.critic_init,
        frozen_dtype=frozen_dtype, gradient_checkpointing=config.gradient_checkpointing,
        trust_remote_code=config.trust_remote_code, fused_activations=config.fused_activations,
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
    accelerator = Accelerator(cpu=use_cpu(config.cpu), mixed_precision="bf16" if bf16 else "no",
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
    select_records: list = []
    if config.select_every and config.select_fraction > 0:  # held out of training for the best-policy choice
        train_records, select_records = split_prompts(train_records, eval_fraction=config.select_fraction,
                                                      max_eval=config.select_max_prompts, seed=config.seed + 1)
    demo = is_demo_task(train_records + eval_records + select_records, config.task)
    select_signal = config.select_signal
    if select_signal == "auto":
        select_signal = ("oracle" if demo else "held_out_rm" if config.selection_reward_model
                         else "penalised_score")
    if select_signal == "oracle" and not demo:
        raise ConfigError("select_signal", "oracle needs the demo task (set task = demo or choose another signal)")
    report.on_log(f"PPO: {len(train_records)} training prompts, {len(eval_records)} held out"
                  + (f", {len(select_records)} for choosing the best policy by {select_signal}"
                     if select_records else "")
                  + f"{' (demo task: oracle on)' if demo else ''}; {config.num_iterations} iterations of "
                  f"{config.rollout_batch_size} rollouts × {accelerator.num_processes} process(es); "
                  f"derived sizes {config.derived()}")

    # 0b. models (policy.py), the ptx texts, optimizers and schedules; every reward model must have been
    #     trained on prompts in this run's format (checked before any weights load)
    frozen_dtype = torch.bfloat16 if bf16 else torch.float32
    reward_models = rm_ensemble.resolve_reward_models(config.reward_model, config.reward_ensemble)
    check_reward_model_formats(config, reward_models)
    models = build_ppo_models(_model_settings(config, frozen_dtype=frozen_dtype, reward_model=reward_models[0]),
                              device=accelerator.device)
    fused = fuse_activations if config.fused_activations else (lambda model: model)
    ensemble = [fused(freeze(RewardModel.from_pretrained(path, dtype=frozen_dtype, device=accelerator.device,
                                                         trust_remote_code=config.trust_remote_code)))
                for path in reward_models[1:]]
    if ensemble:
        report.on_log(f"reward model ensemble of {len(reward_models)}: {config.ensemble_combination} of the "
                      f"members' calibrated scores")
    selection_rm = (fused(freeze(RewardModel.from_pretrained(config.selection_reward_model, dtype=frozen_dtype,
                                                             device=accelerator.device,
                                                             trust_remote_code=config.trust_remote_code)))
                    if select_signal == "held_out_rm" else None)
    try:
        format_prompt(models.tokenizer, "", prompt_format=config.format)  # chat needs the policy's template
    except PromptFormatError as exc:
        raise ConfigError("prompt_format", str(exc)) from None
    report.on_log(f"prompts as {config.format.describe()}")
    limit = getattr(models.actor.config, "max_position_embeddings", None) or getattr(
        models.actor.config, "n_positions", None)
    if limit is not None and config.max_prompt_length + config.response_length > limit:
        raise ConfigError("response_length", f"max_prompt_length + response_length = "
                          f"{config.max_prompt_length + config.response_length} exceeds the policy's {limit} positions")
    runtime = PolicyRuntime(config, models, accelerator, ensemble)
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
                                horizon=config.kl_horizon_episodes)
    shuffle = torch.Generator().manual_seed(config.seed + 7919 * accelerator.process_index)
    state = TrainerState(
        prompts=PromptStream(len(train_records), seed=config.seed), shuffle=shuffle, moments=RunningMoments(),
        ptx=PromptStream(len(ptx_ids), seed=config.seed + 1 + accelerator.process_index) if ptx_ids else None,
    )
    best = BestPolicy()
    accelerator.register_for_checkpointing(kl_ctl, state, best)
    _trainable_state_hooks(accelerator)

    def save_checkpoint() -> Path:
        path = output_dir / CHECKPOINTS_DIR / f"iter-{state.iteration:06d}"
        accelerator.wait_for_everyone()
        accelerator.save_state(str(path), safe_serialization=True)
        accelerator.wait_for_everyone()
        torch.save(state.rank_state_dict(), path / RANK_STATE_FILE.format(rank=accelerator.process_index))
        accelerator.wait_for_everyone()
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
        accelerator.load_state(str(resume_from), strict=False)  # restores every rank's RNG, then ours:
        rank_file = resume_from / RANK_STATE_FILE.format(rank=accelerator.process_index)
        if rank_file.exists():  # (checkpoints written before per-rank state carry it in the shared state)
            state.load_rank_state_dict(torch.load(rank_file, weights_only=True))
        report.on_log(f"resumed from {resume_from} at iteration {state.iteration} (β = {kl_ctl.value:.4g})")
        saved_before = ppo_eval.load_before(output_dir)
        if saved_before is not None:
            evaluation["before"], before_rows = saved_before
    report.on_start(total_steps=config.num_iterations, start_step=state.iteration)

    # 0e. evaluation before training (the starting policy = the reference), with a fixed seed (ppo_eval.py)
    eval_seed = config.seed + 104729
    if config.evaluate and eval_records and "before" not in evaluation:
        summary, before_rows = ppo_eval.evaluate_policy(runtime, unwrapped_actor, unwrapped_critic, eval_records,
                                                        which="before", demo=demo, seed=eval_seed,
                                                        samples=config.eval_samples)
        evaluation["before"] = summary
        if main:
            ppo_eval.save_before(output_dir, summary, before_rows)
            report.on_evaluation({"before": summary})
            report.on_log(f"evaluation before: {ppo_eval.format_summary(summary)}")

    # 0f. the best-policy selection: the starting policy is the first candidate (ppo_eval.py on the selection
    #     prompts, `select_samples` responses each, a fixed seed; every process gets the same summary)
    select_seed = config.seed + 15485863
    scorer = None
    if selection_rm is not None:
        def scorer(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
            return selection_rm.score_texts(list(prompts), list(responses), batch_size=config.generation_batch_size)

    def select(iteration: int) -> dict[str, float]:
        summary, _ = ppo_eval.evaluate_policy(runtime, unwrapped_actor, unwrapped_critic, select_records,
                                              which="before" if iteration == 0 else "after", demo=demo,
                                              seed=select_seed, samples=config.select_samples, scorer=scorer)
        value = {"oracle": summary.get("oracle_score"), "held_out_rm": summary.get("held_out_score"),
                 "penalised_score": summary["rm_score"] - kl_ctl.value * summary["kl"]}[select_signal]
        kept = best.offer(iteration, float(value), unwrapped_actor)
        found = {f"eval/{k}": float(summary[k]) for k in ("rm_score", "kl", "oracle_score", "held_out_score",
                                                          "rm_member_spread") if k in summary}
        found["eval/selection_score"] = float(value)
        found["eval/best_iteration"] = float(best.iteration if best.iteration is not None else -1)
        if kept:
            report.on_log(f"selection at iteration {iteration}: {select_signal} {value:.4g} (best so far, kept)")
        return found

    selecting = bool(select_records)
    if selecting and not best.history:
        start_metrics = select(0)
        report.on_log("selection at the start: " + ", ".join(f"{k} {v:.4g}" for k, v in start_metrics.items()))

    world = accelerator.num_processes
    metrics: dict[str, float] = {}

    def whiten(values: torch.Tensor, values_mask: torch.Tensor, *, shift_mean: bool = True) -> torch.Tensor:
        """Whitening over the real tokens of every process's rollout (one process: masked_whiten)."""
        if world == 1:
            return masked_whiten(values, values_mask, shift_mean=shift_mean)
        return whiten_across(values, values_mask, shift_mean=shift_mean,
                             reduce_sum=lambda t: accelerator.reduce(t, reduction="sum"))
    stopped_early = False
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
        #    normalisation (statistics over every process's rollout), the missing-EOS penalty and clipping
        population = accelerator.gather(batch.rm_scores) if world > 1 and config.score_norm != "none" else None
        scores = normalise_scores(batch.rm_scores, config.score_norm, state.moments, population=population)
        scores = penalise_and_clip_scores(scores, batch.has_stop, missing_eos_penalty=config.missing_eos_penalty,
                                          reward_clip=config.reward_clip or None)

        # 3. rewards = score − β·KL (per token; the score on the last real token)
        kl = per_token_kl(logprobs, ref_logprobs, config.kl_estimator) * mask
        rewards, non_score = per_token_rewards(scores, kl, mask, kl_coef=kl_coef)
        if config.whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False)

        # 4. values & GAE (γ, λ)
        advantages, returns = compute_gae(rewards, values, mask, gamma=config.gamma, lam=config.lam)

        # 5. whitening of the advantages over real tokens
        if config.whiten_advantages:
            advantages = whiten(advantages, mask)

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
        stopped_early = bool(config.kl_stop) and mean_kl_k1 > config.kl_stop

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
        if batch.member_spread is not None:
            local["rm_member_spread"] = float(batch.member_spread.mean())
        names = sorted(local)
        reduced = accelerator.reduce(torch.tensor([local[n] for n in names], dtype=torch.float64,
                                                  device=accelerator.device), reduction="mean")
        metrics = dict(zip(names, (float(v) for v in reduced)))
        metrics["episodes"] = float(state.episodes)
        # 9b. selection: every select_every iterations, at the last one and at an early stop
        if selecting and (state.iteration % config.select_every == 0 or state.iteration == config.num_iterations
                          or stopped_early):
            metrics.update(select(state.iteration))
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

        # 11b. early stop on KL (the policy has moved further from the start than the controller allows)
        if stopped_early:
            report.on_log(f"stopping early at iteration {state.iteration}: KL {mean_kl_k1:.3f} > "
                          f"{config.kl_stop_factor:g} × kl_target = {config.kl_stop:.3f}")
            break

    # 12a. the final policy is the best one by the held-out selection signal (the last one without selection)
    selection: dict[str, Any] = {"signal": select_signal if selecting else "last", "last_iteration": state.iteration,
                                 "stopped_early": stopped_early}
    if selecting and best.iteration is not None:
        if best.iteration != state.iteration:
            best.restore(unwrapped_actor)
        selection.update(best_iteration=best.iteration, best_score=best.score, history=best.history)
        report.on_log(f"final policy: iteration {best.iteration} of {state.iteration} ({select_signal} "
                      f"{best.score:.4g} on {len(select_records)} selection prompts × {config.select_samples})")
    else:
        selection["best_iteration"] = state.iteration
    evaluation["selection"] = selection

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
                                                       which="after", demo=demo, seed=eval_seed,
                                                       samples=config.eval_samples)
        evaluation = ppo_eval.after_report(summary, after_rows, evaluation, before_rows)
        if main:
            ppo_eval.save_report(output_dir, evaluation, after_rows, before_rows)
            report.on_evaluation(evaluation)
            report.on_log(f"evaluation after: {ppo_eval.format_summary(summary)}")
            for name, gain in evaluation.get("delta_ci", {}).items():
                report.on_log(f"gain of {name} after − before: {ppo_eval.format_gain(gain)}")
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
