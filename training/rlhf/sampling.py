"""Sample responses from a causal language model: batched, left-padded, K distinct responses per prompt.

Pure torch/transformers (no Django): the `sample_responses` command, the PPO evaluation and the "new round"
code share it. The text format follows docs/architecture.md: the policy sees the prompt under the run's
prompt format (`chat_format.format_prompt`: the text as-is, or the tokenizer's chat template) and continues
it; the response is the continuation up to EOS.

    policy = load_policy("path/or/hub-id", device="auto")          # bf16 on a GPU, fp32 on CPU
    params = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=64, batch_size=16)
    generate = policy_generator(policy, params, prompt_format=PromptFormat("chat"))  # default: plain
    result = sample_distinct(prompts, k=4, generate=generate, seed=0)
    result.responses[i]   # up to 4 distinct texts for prompts[i]
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.rlhf.chat_format import PLAIN, PromptFormat, add_special_tokens_for, format_prompt

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack")


class _FinishedRowPadWarning(logging.Filter):
    """Drop transformers' "We strongly recommend passing in an `attention_mask`" warning. We always pass the
    mask; the check fires inside generate() on cached decoding steps, where a row that already ended is fed
    the pad token (the batched == unbatched greedy test shows the masking is right)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "strongly recommend passing in an `attention_mask`" not in record.getMessage()


logging.getLogger("transformers.modeling_utils").addFilter(_FinishedRowPadWarning())


# --- Parameters, device, dtype ------------------------------------------------------------------------


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off (the model's generation config default, often 50, is overridden)
    max_new_tokens: int = 64
    batch_size: int = 8

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" → cuda when available, else cpu; "cuda" without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available on this machine")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    return torch.device(device)


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU (CPU half-precision matmuls are slow)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


# --- Loading ----------------------------------------------------------------------------------------------


@dataclass
class LoadedPolicy:
    model: Any
    tokenizer: Any
    name: str  # the path (absolute) or hub id it came from
    revision: str  # hub commit, or "sha256:…" of the local weight files
    device: torch.device
    dtype: torch.dtype


def load_policy(
    name_or_path: str | Path, *, device: str = "auto", revision: str | None = None, dtype: torch.dtype | None = None
) -> LoadedPolicy:
    """Load a causal LM and its tokenizer from a local directory or a hub id, ready for sampling.

    A local directory holding a peft adapter (adapter_config.json) is loaded on its base model and merged.
    The tokenizer is set up for generation: left padding, and a pad token (EOS when it has none).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    dtype = dtype or default_dtype(dev)
    path = Path(name_or_path)
    local = path.exists()
    name = str(path.resolve()) if local else str(name_or_path)
    tokenizer_source: str = name
    if local and (path / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(name, dtype=dtype).merge_and_unload()
        if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
            adapter_config = json.loads((path / "adapter_config.json").read_text())
            tokenizer_source = adapter_config["base_model_name_or_path"]
    else:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, revision=revision)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, revision=None if local else revision)
    prepare_tokenizer(tokenizer)
    model.to(dev)
    model.eval()
    if local:
        resolved_revision = weights_content_hash(path)
    else:
        resolved_revision = getattr(model.config, "_commit_hash", None) or revision or "unknown"
    return LoadedPolicy(model, tokenizer, name, resolved_revision, dev, dtype)


def prepare_tokenizer(tokenizer) -> None:
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token; cannot pad a batch")
        tokenizer.pad_token = tokenizer.eos_token


def weights_content_hash(path: str | Path) -> str:
    """"sha256:<hex>" over a local model directory's weight files and config.json (relative names, sizes and
    contents, in sorted order), so the same weights give the same revision wherever they are copied."""
    root = Path(path)
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in ("config.json", "adapter_config.json"))
    )
    if not files:
        raise ValueError(f"{root}: no weight files found (expected *.safetensors, *.bin, …)")
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(root)).encode() + b"\0" + str(file.stat().st_size).encode() + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(8 * 1024 * 1024):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


# --- Generation -------------------------------------------------------------------------------------------


@dataclass
class Generation:
    text: str
    tokens: int  # generated tokens up to (not counting) EOS
    finished: bool  # ended with EOS (False: cut at max_new_tokens)


def encode_prompts(tokenizer, prompts: Sequence[str], *, prompt_format: PromptFormat = PLAIN) -> list[list[int]]:
    """Token ids of each prompt as the policy sees it under `prompt_format` (`chat_format.format_prompt`): the
    tokenizer's own special tokens at the start (e.g. BOS; under chat the template writes its own) but never a
    trailing EOS, which would tell the model the text is over."""
    special = add_special_tokens_for(prompt_format)
    encoded = []
    for prompt in prompts:
        text = format_prompt(tokenizer, prompt, prompt_format=prompt_format)
        ids = list(tokenizer(text, add_special_tokens=special)["input_ids"])
        while ids and tokenizer.eos_token_id is not None and ids[-1] == tokenizer.eos_token_id:
            ids.pop()
        if not ids:
            if tokenizer.bos_token_id is None:
                raise ValueError(f"prompt {prompt!r} encodes to no tokens")
            ids = [tokenizer.bos_token_id]
        encoded.append(ids)
    return encoded


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) input ids padded on the left with pad_id, and the (B, T) attention mask (1 = real token)."""
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            input_ids[row, length - len(seq):] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, length - len(seq):] = 1
    return input_ids, attention_mask


def decode_continuations(tokenizer, continuation_ids: torch.Tensor) -> list[Generation]:
    """(B, T_new) generated ids → texts up to the first EOS (special tokens skipped, trailing whitespace
    stripped). Leading whitespace is kept: it is part of the continuation the policy produced."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    out = []
    for row in continuation_ids.tolist():
        finished = False
        end = len(row)
        for index, token in enumerate(row):
            if token == eos:
                end, finished = index, True
                break
            if token == pad and pad != eos:  # generate pads finished rows; a pad before EOS cannot happen
                end = index
                break
        # NUL cannot be stored in PostgreSQL text; a model that emits it (untrained byte-level) loses it.
        text = tokenizer.decode(row[:end], skip_special_tokens=True).replace("\x00", "").rstrip()
        out.append(Generation(text=text, tokens=end, finished=finished))
    return out


@torch.no_grad()
def generate_texts(model, tokenizer, prompts: Sequence[str], *, params: SamplingParams, seed: int,
                   prompt_format: PromptFormat = PLAIN) -> list[Generation]:
    """One sampled continuation per entry of `prompts` (repeat a prompt K times for K samples), each prompt
    under `prompt_format`, generated in left-padded batches of params.batch_size with an attention mask.
    Seeded: the same call gives the same texts on the same hardware."""
    if not prompts:
        return []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    encoded = encode_prompts(tokenizer, prompts, prompt_format=prompt_format)
    results: list[Generation] = []
    for start in range(0, len(encoded), params.batch_size):
        input_ids, attention_mask = left_pad(encoded[start:start + params.batch_size], pad_id)
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            do_sample=True,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            max_new_tokens=params.max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        # Left padding: every prompt ends at column T, so the continuation starts there for every row.
        results.extend(decode_continuations(tokenizer, output[:, input_ids.shape[1]:].cpu()))
    return results


def policy_generator(policy: LoadedPolicy, params: SamplingParams, *,
                     prompt_format: PromptFormat = PLAIN) -> Callable[[list[str], int], list[Generation]]:
    """The `generate` callable for `sample_distinct`, bound to a loaded policy, sampling parameters and the
    prompt format (checked here: chat without a chat template is a PromptFormatError before any sampling)."""
    format_prompt(policy.tokenizer, "", prompt_format=prompt_format)

    def generate(prompts: list[str], seed: int) -> list[Generation]:
        return generate_texts(policy.model, policy.tokenizer, prompts, params=params, seed=seed,
                              prompt_format=prompt_format)

    return generate


# --- Distinct responses -------------------------------------------------------------------------------------


def normalise(text: str) -> str:
    """Lower-cased, whitespace-collapsed text: two responses equal after this are exact duplicates."""
    return " ".join(text.lower().split())


def is_near_duplicate(a: str, b: str, threshold: float = 0.9) -> bool:
    """Equal after `normalise`, or difflib.SequenceMatcher ratio ≥ threshold on the normalised texts
    (ratio = 2·matches / (len a + len b); the cheap upper bounds are checked first)."""
    na, nb = normalise(a), normalise(b)
    if na == nb:
        return True
    matcher = difflib.SequenceMatcher(None, na, nb, autojunk=False)
    return (
        matcher.real_quick_ratio() >= threshold
        and matcher.quick_ratio() >= threshold
        and matcher.ratio() >= threshold
    )


@dataclass
class DistinctSamples:
    responses: list[list[str]]  # new responses per prompt (existing ones not repeated)
    discarded_duplicates: int = 0
    discarded_empty: int = 0
    truncated: int = 0  # accepted responses cut at max_new_tokens (no EOS)
    attempts: int = 0  # generation rounds used
    generated: int = 0
    details: dict[str, Any] = field(default_factory=dict)


def sample_distinct(
    prompts: Sequence[str],
    k: int | Sequence[int],
    *,
    generate: Callable[[list[str], int], Sequence[Generation | str]],
    existing: Sequence[Sequence[str]] | None = None,
    seed: int = 0,
    max_tries: int = 4,
    similarity: float = 0.9,
) -> DistinctSamples:
    """Sample until every prompt has k responses (counting `existing` ones) that are pairwise distinct.

    Each round asks `generate` for exactly the missing number of samples per prompt (rows of a flat batch)
    with seed + round; an empty response, or one that is an exact or near duplicate (`is_near_duplicate`)
    of an existing or already accepted response of the same prompt, is dropped and asked for again in the
    next round. After max_tries rounds a prompt may still be short: the caller decides (the Django
    service then writes nothing for it, so a later run retries).
    """
    targets = [k] * len(prompts) if isinstance(k, int) else list(k)
    if len(targets) != len(prompts):
        raise ValueError("k must be an int or one value per prompt")
    known = [list(e) for e in existing] if existing is not None else [[] for _ in prompts]
    result = DistinctSamples(responses=[[] for _ in prompts])
    for attempt in range(max_tries):
        rows = [
            i for i, target in enumerate(targets) for _ in range(max(0, target - len(known[i]) - len(result.responses[i])))
        ]
        if not rows:
            break
        result.attempts += 1
        outputs = generate([prompts[i] for i in rows], seed + attempt)
        if len(outputs) != len(rows):
            raise RuntimeError(f"generate returned {len(outputs)} texts for {len(rows)} prompts")
        result.generated += len(rows)
        for i, output in zip(rows, outputs):
            text = output if isinstance(output, str) else output.text
            if not text.strip():
                result.discarded_empty += 1
                continue
            if any(is_near_duplicate(text, other, similarity) for other in known[i] + result.responses[i]):
                result.discarded_duplicates += 1
                continue
            result.responses[i].append(text)
            if not isinstance(output, str) and not output.finished:
                result.truncated += 1
    return result
