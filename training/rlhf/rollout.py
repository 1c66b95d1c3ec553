"""Rollouts for PPO: generate responses, truncate them at the stop token, compute log-probs, values, scores and
the per-token rewards.

Shapes: B rollout rows; P prompt columns (left-padded, so every prompt ends at column P − 1 and every response
starts at column P); R response columns (right-padded after the stop token); L = P + R.

Conventions (design.md §7 items 4–7; "The N+ Implementation Details of RLHF with PPO", arXiv 2403.17031; the HF
blog "The N Implementation Details of RLHF with PPO", 2023):
- left padding for generation, PAD ≠ EOS, and position ids counted over real tokens only;
- every log-prob is taken from logits ÷ temperature (`ppo_loss.logprobs_from_logits`);
- a response is cut after its first stop token and everything after is masked (the stop token itself is kept:
  the policy chose it, so it is an action with a log-prob, a KL term and the score);
- the reward model scores `prompt_ids + response_ids + [eos]` (docs/architecture.md, "Model text format"),
  i.e. the response without its stop token followed by the RM's EOS;
- the per-token reward is −β·KL_t, plus the (normalised, penalised, clipped) score at the last real token.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from training.rlhf.ppo_loss import entropy_from_logits, logprobs_from_logits
from training.rlhf.reward_model import position_ids_from_mask

# --- truncation and positions (left padding and position ids: sampling.left_pad, reward_model.position_ids_from_mask)


def truncate_after_stop(
    response_ids: torch.Tensor, stop_token_ids: Sequence[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut each response after its first stop token.

    response_ids: (B, R) → (ids (B, R) with every token after the first stop replaced by `pad_id`,
    mask (B, R) = 1 up to and including the first stop token, has_stop (B,) bool). A response without a stop
    token keeps all R tokens (it ran out of length: the missing-EOS penalty applies).

    Loop form:
        for b in range(B):
            end = next((t for t in range(R) if ids[b, t] in stop), R - 1)
            mask[b, : end + 1] = 1; ids[b, end + 1 :] = pad
    """
    steps = response_ids.shape[1]
    stops = torch.as_tensor(list(stop_token_ids), dtype=response_ids.dtype, device=response_ids.device)
    is_stop = torch.isin(response_ids, stops)
    has_stop = is_stop.any(dim=1)
    positions = torch.arange(steps, device=response_ids.device)
    first_stop = torch.where(is_stop, positions, steps).min(dim=1).values  # R when there is none
    last_real = torch.where(has_stop, first_stop, steps - 1)
    mask = (positions[None, :] <= last_real[:, None]).long()
    ids = torch.where(mask.bool(), response_ids, torch.full_like(response_ids, pad_id))
    return ids, mask, has_stop


def response_lengths(response_mask: torch.Tensor) -> torch.Tensor:
    """(B, R) right-padded mask → (B,) number of real response tokens (≥ 1: generation emits one at least)."""
    return response_mask.long().sum(dim=1)


def last_response_index(response_mask: torch.Tensor) -> torch.Tensor:
    """(B, R) right-padded mask → (B,) column of the last real response token."""
    return (response_lengths(response_mask) - 1).clamp_min(0)


@dataclass
class Sequences:
    """A batch of prompt + response sequences as the models read them."""

    input_ids: torch.Tensor  # (B, L) left-padded prompt ⊕ right-padded response
    attention_mask: torch.Tensor  # (B, L)
    position_ids: torch.Tensor  # (B, L)
    context_length: int  # P: the response starts at this column


def join_prompt_response(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor, response_mask: torch.Tensor
) -> Sequences:
    """(B, P) left-padded prompts ⊕ (B, R) right-padded responses → `Sequences` of width L = P + R."""
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask.long(), response_mask.long()], dim=1)
    return Sequences(input_ids, attention_mask, position_ids_from_mask(attention_mask), prompt_ids.shape[1])


def select_rows(sequences: Sequences, rows: torch.Tensor | slice, *, trim_to: int | None = None) -> Sequences:
    """Rows of a `Sequences` batch; `trim_to` drops response columns beyond that many (all padding)."""
    end = None if trim_to is None else sequences.context_length + trim_to
    return Sequences(
        sequences.input_ids[rows, :end],
        sequences.attention_mask[rows, :end],
        sequences.position_ids[rows, :end],
        sequences.context_length,
    )


# --- generation ------------------------------------------------------------------------------------------


@torch.no_grad()
def generate_responses(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop_token_ids: Sequence[int],
    pad_token_id: int,
    batch_size: int,
    generator_seed: int | None = None,
) -> torch.Tensor:
    """Sample responses for left-padded prompts: (B, P), (B, P) → response ids (B, R), R ≤ max_new_tokens.

    Runs `model.generate` in eval mode (restoring the previous mode) in chunks of `batch_size`, with pure
    temperature / top-p sampling: top-k and the model's own generation defaults (repetition penalties…) are
    switched off so the sampling distribution is softmax(logits ÷ T) truncated to top-p, the one whose log-probs
    the trainer computes. Position ids follow the attention mask (transformers derives them from it during
    generation). Rows that stop early are padded with `pad_token_id`. With `generator_seed` the draws come
    from that seed and the global RNG is left untouched (evaluation); otherwise they use the global RNG.
    """
    from transformers import GenerationConfig

    config = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        max_new_tokens=max_new_tokens,
        min_new_tokens=1,
        eos_token_id=list(stop_token_ids),
        pad_token_id=pad_token_id,
        repetition_penalty=1.0,
        num_beams=1,
        use_cache=True,
    )
    was_training = model.training
    model.eval()
    device = prompt_ids.device
    chunks: list[torch.Tensor] = []
    fork: AbstractContextManager = nullcontext()
    if generator_seed is not None:
        devices = [device] if device.type == "cuda" else []
        fork = torch.random.fork_rng(devices=devices)
    try:
        with fork:
            if generator_seed is not None:
                torch.manual_seed(generator_seed)
            for start in range(0, prompt_ids.shape[0], batch_size):
                ids = prompt_ids[start : start + batch_size]
                mask = prompt_mask[start : start + batch_size]
                output = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
                chunks.append(output[:, ids.shape[1] :])
    finally:
        model.train(was_training)
    width = max(chunk.shape[1] for chunk in chunks)
    padded = [
        torch.nn.functional.pad(chunk, (0, width - chunk.shape[1]), value=pad_token_id) for chunk in chunks
    ]
    return torch.cat(padded, dim=0)


# --- forward passes ----------------------------------------------------------------------------------------


@contextmanager
def eval_mode(*models: Any) -> Iterator[None]:
    """The models in eval mode (no dropout, LoRA's included) for the block; their previous modes restored."""
    modes = [model.training for model in models]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for model, mode in zip(models, modes):
            model.train(mode)


def accepts_logits_to_keep(model: Any) -> bool:
    """Whether the causal LM's forward takes `logits_to_keep` (transformers' LMs do since 4.50; a peft wrapper
    passes it through to its base model)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_takes_logits_to_keep(type(base))


@functools.cache
def _forward_takes_logits_to_keep(model_class: type) -> bool:
    forward = getattr(model_class, "forward", None)
    try:
        return forward is not None and "logits_to_keep" in inspect.signature(forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        return False


def causal_lm_logits(model: Any, sequences: Sequences) -> torch.Tensor:
    """Logits predicting each response token: (B, R, V) = the LM head at columns P − 1 … L − 2.

    Where the model allows it (`logits_to_keep`), the LM head runs on the last R + 1 columns only instead of
    all L: the prompt columns' logits are never used, and the head (V × d) is the largest matrix of a small
    model, so this saves its forward and backward on the prompt columns."""
    width = sequences.input_ids.shape[1]
    keep = width - sequences.context_length + 1
    extra = {"logits_to_keep": keep} if accepts_logits_to_keep(model) else {}
    output = model(
        input_ids=sequences.input_ids,
        attention_mask=sequences.attention_mask,
        position_ids=sequences.position_ids,
        use_cache=False,
        **extra,
    )
    logits = output.logits
    return logits[:, logits.shape[1] - keep : -1]


def response_logprobs(
    model: Any, sequences: Sequences, *, temperature: float, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(y_t | x, y_<t) at temperature T for every response token: (B, R); and the entropy (B, R)."""
    logits = causal_lm_logits(model, sequences)
    labels = sequences.input_ids[:, sequences.context_length :]
    logprobs = logprobs_from_logits(logits, labels, temperature=temperature)
    entropy = None
    if with_entropy:
        with torch.no_grad():  # a diagnostic: no graph through the (B, R, V) softmax
            entropy = entropy_from_logits(logits, temperature=temperature)
    return logprobs, entropy


def response_values(critic: Any, sequences: Sequences) -> torch.Tensor:
    """V(x, y_<t) for every response token: the critic's output at column P − 1 + t. (B, L) → (B, R)."""
    values = critic(sequences.input_ids, sequences.attention_mask, position_ids=sequences.position_ids)
    return values[:, sequences.context_length - 1 : -1].float()


# --- the reward model's view ------------------------------------------------------------------------------


def reward_model_sequences(
    rm_prompt_ids: Sequence[Sequence[int]],
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    has_stop: torch.Tensor,
    *,
    end_token_id: int,
    max_length: int,
) -> list[list[int]]:
    """`prompt_ids + response_ids + [eos]` per row for the reward model (docs/architecture.md, "Model text
    format"): the response without its stop token, then the RM's end token. Longer sequences keep their last
    `max_length` tokens, as in RM training (`reward_model.encode_prompt_response`).

    rm_prompt_ids: B lists (the prompt as the RM tokenises it); response_ids, response_mask: (B, R); has_stop (B,).
    """
    lengths = response_lengths(response_mask).tolist()
    rows = []
    for b, prompt in enumerate(rm_prompt_ids):
        content = lengths[b] - (1 if bool(has_stop[b]) else 0)
        ids = list(prompt) + response_ids[b, :content].tolist() + [end_token_id]
        rows.append(ids[-max_length:] if len(ids) > max_length else ids)
    return rows


# --- scores and rewards ------------------------------------------------------------------------------------

SCORE_NORMS = ("none", "running", "batch")


class RunningMoments:
    """Running mean and standard deviation of all scores seen (Chan et al.'s parallel update of Welford's
    algorithm), for score normalisation across rollouts; `state_dict` makes it resumable."""

    def __init__(self) -> None:
        self.mean = 0.0
        self.var = 1.0  # population variance of the values seen
        self.count = 0

    def update(self, values: torch.Tensor) -> None:
        values = values.detach().double().flatten()
        n = values.numel()
        if n == 0:
            return
        batch_mean = float(values.mean())
        batch_var = float(values.var(unbiased=False))
        total = self.count + n
        delta = batch_mean - self.mean
        if self.count == 0:
            self.mean, self.var = batch_mean, batch_var
        else:
            m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
            self.mean += delta * n / total
            self.var = m2 / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 0.0))

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), int(state["count"])


def normalise_scores(scores: torch.Tensor, mode: str, moments: RunningMoments | None = None, *,
                     population: torch.Tensor | None = None) -> torch.Tensor:
    """Score normalisation (N details, "reward normalisation"): (B,) → (B,).

    none: as is (the RM's calibration already centres scores on reference samples);
    batch: (s − mean) / std over this rollout;
    running: (s − μ) / σ with μ, σ over every rollout so far (this one included; `moments` is updated).
    `population` (N ≥ B,): the scores the statistics come from when they are not `scores` alone — every
    process's rollout under data parallelism, so that all ranks normalise alike (default: `scores`).
    """
    if mode == "none":
        return scores
    population = scores if population is None else population
    if mode == "batch":
        if population.numel() < 2:
            return scores - population.mean()
        return (scores - population.mean()) / (population.std(unbiased=True) + 1e-8)
    if mode == "running":
        if moments is None:
            raise ValueError("running score normalisation needs a RunningMoments")
        moments.update(population)
        return (scores - moments.mean) / (moments.std + 1e-8)
    raise ValueError(f"score normalisation must be one of {SCORE_NORMS}, got {mode!r}")


def whiten_across(values: torch.Tensor, mask: torch.Tensor, *, reduce_sum: Callable[[torch.Tensor], torch.Tensor],
                  shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """`advantages.masked_whiten` with μ and σ² over the real tokens of every process: (B, T), (B, T) → (B, T).

    `reduce_sum` sums a tensor over the processes (all-reduce). μ = Σx·m / Σm, σ² = Σ(x − μ)²·m / (Σm − 1)
    over all ranks, so data-parallel whitening equals whitening the concatenated rollout (OpenRLHF and
    DeepSpeed-Chat all-reduce these moments the same way); on one process it is masked_whiten's formula.
    """
    m = mask.to(values.dtype)
    totals = reduce_sum(torch.stack([(values * m).sum(), m.sum()]))
    count = totals[1]
    mean = totals[0] / count.clamp(min=1.0)
    squared = reduce_sum(((values - mean) ** 2 * m).sum())
    var = squared / (count - 1) if count >= 2 else torch.zeros((), dtype=values.dtype, device=values.device)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * m


def penalise_and_clip_scores(
    scores: torch.Tensor, has_stop: torch.Tensor, *, missing_eos_penalty: float | None, reward_clip: float | None
) -> torch.Tensor:
    """s − penalty for responses that never emitted the stop token (N+ details: a fixed penalty teaches the
    policy to finish), then clipped to [−c, c] when `reward_clip` is set. (B,), (B,) → (B,)."""
    if missing_eos_penalty:
        scores = scores - missing_eos_penalty * (~has_stop.bool()).to(scores.dtype)
    if reward_clip is not None:
        scores = scores.clamp(-reward_clip, reward_clip)
    return scores


def per_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, response_mask: torch.Tensor, *, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """r_t = −β·KL_t on every real response token, plus the sequence's score on its last real token
    (Ziegler et al. 2019; InstructGPT eq. 2). scores (B,), kl (B, R), response_mask (B, R).

    Returns (rewards (B, R), non_score_rewards (B, R) = −β·KL_t).
    """
    mask = response_mask.to(kl.dtype)
    non_score = -kl_coef * kl * mask
    last = last_response_index(response_mask)
    rewards = non_score.clone()
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores.to(rewards.dtype)
    return rewards, non_score
