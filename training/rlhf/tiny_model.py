"""The demo task's tiny policy: a byte-level BPE tokenizer and a small GPT-2, built and pre-trained locally.

No network: the tokenizer is trained on the demo corpus (`demo_task.demo_corpus`) and the model is
initialised from scratch and pre-trained on that corpus for a fixed number of steps, so its samples are
varied, word-like reviews of mixed quality — the starting point (the "SFT model") of the demo RLHF loop.
With `TinyModelSpec(chat=True)` (`make_tiny_model --chat true`) the tokenizer also carries a chat template of
its own (`TINY_CHAT_TEMPLATE`), so every stage can be tested with prompt_format chat as with an instruct model.

`build_tiny_model(out_dir)` is idempotent and safe to call from several processes: it skips all work when
`out_dir` already holds a complete build of the same spec (same hash in `build.json`), builds in a temporary
directory beside `out_dir` and renames it into place, and serialises builders of the same directory with
a file lock. The output loads with `AutoTokenizer.from_pretrained(out_dir)` and
`AutoModelForCausalLM.from_pretrained(out_dir)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.rlhf.configs import ConfigError, option
from training.rlhf.demo_task import demo_corpus

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# A template of its own (plain-text role markers, no new tokens, so the pre-trained weights fit unchanged): the
# assistant's turn ends with EOS, as the workbench's text format expects (docs/architecture.md).
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}### System: {{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}### User: {{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}### Assistant:{{ message['content'] }}{{ eos_token }}\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:{% endif %}"
)

BUILD_FILE = "build.json"
# Bump when the build procedure changes in a way the spec does not capture (forces a rebuild everywhere).
BUILD_FORMAT = 2
# Files that must all be present for a build to count as complete.
REQUIRED_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                  "tokenizer_config.json", BUILD_FILE)


@dataclass
class TinyModelSpec:
    """What to build; every field is part of the build hash."""

    seed: int = option(0, "Random seed for the corpus, the initial weights and the data order.")
    vocab_size: int = option(1024, "Byte-level BPE vocabulary size, including the 256 bytes and 2 special tokens.")
    n_layer: int = option(4, "Transformer blocks.")
    n_head: int = option(4, "Attention heads per block (must divide n_embd).")
    n_embd: int = option(128, "Hidden size.")
    n_positions: int = option(128, "Maximum sequence length (prompt + response) in tokens.")
    dropout: float = option(0.1, "Dropout in the saved config (GPT-2's default; trainers turn it off for PPO).")
    corpus_size: int = option(12000, "Demo corpus texts (prompt + response) to train the tokenizer and model on.")
    steps: int = option(400, "Pre-training optimiser steps.")
    batch_size: int = option(32, "Texts per pre-training step.")
    lr: float = option(3e-3, "Peak AdamW learning rate (linear warm-up over the first 1/20 of the steps, cosine decay to 1/10).")
    weight_decay: float = option(0.01, "AdamW weight decay.")
    chat: bool = option(False, "Give the tokenizer the tiny chat template (TINY_CHAT_TEMPLATE: '### User:' / "
                               "'### Assistant:' turns, the assistant's turn ending with EOS), so the model is "
                               "used with prompt_format chat like an instruct model.")

    def __post_init__(self) -> None:
        positive = ("vocab_size", "n_layer", "n_head", "n_embd", "n_positions", "corpus_size", "steps", "batch_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(name, f"must be a positive integer, got {value!r}")
        if self.vocab_size < 300:
            raise ConfigError("vocab_size", f"must be at least 300 (256 bytes + specials + merges), got {self.vocab_size}")
        if self.n_embd % self.n_head:
            raise ConfigError("n_head", f"must divide n_embd ({self.n_embd}), got {self.n_head}")
        if self.n_positions < 64:
            raise ConfigError("n_positions", f"must be at least 64 to hold a demo prompt and response, got {self.n_positions}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout}")
        if not self.lr > 0:
            raise ConfigError("lr", f"must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if not isinstance(self.chat, bool):
            raise ConfigError("chat", f"must be true or false, got {self.chat!r}")


def _library_versions() -> dict[str, str]:
    import tokenizers
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def build_hash(spec: TinyModelSpec) -> str:
    """sha256 over the spec, the library versions and the build format: equal hashes ⇒ the same build.
    `chat` enters only when true, so every plain build made before the option existed stays current."""
    fields = dataclasses.asdict(spec)
    if not fields["chat"]:
        del fields["chat"]
    payload = {"spec": fields, "versions": _library_versions(), "format": BUILD_FORMAT}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def read_build_info(out_dir: str | Path) -> dict[str, Any] | None:
    """The parsed build.json of a tiny-model directory, or None when there is none or it is unreadable."""
    try:
        return json.loads((Path(out_dir) / BUILD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def tiny_model_is_current(out_dir: str | Path, *, spec: TinyModelSpec | None = None) -> bool:
    """True when `out_dir` holds a complete build of `spec` (default spec when None)."""
    out = Path(out_dir)
    info = read_build_info(out)
    if info is None or info.get("hash") != build_hash(spec or TinyModelSpec()):
        return False
    return all((out / name).is_file() for name in REQUIRED_FILES)


def build_tiny_model(
    out_dir: str | Path,
    *,
    spec: TinyModelSpec | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Build the demo tokenizer and pre-trained tiny GPT-2 into `out_dir` (skipped when already current).

    Steps: 1. generate the demo corpus; 2. train a byte-level BPE tokenizer on it (EOS "<|endoftext|>",
    also BOS/UNK as in GPT-2, and a distinct PAD "<|pad|>"; with `spec.chat`, the tiny chat template); 3. initialise a GPT2LMHeadModel from the spec;
    4. pre-train it on every text + EOS with AdamW; 5. save model, tokenizer and build.json into a temporary
    directory beside `out_dir` and rename it into place.

    Refuses (FileExistsError) to replace an existing `out_dir` that is neither empty nor a tiny-model build.
    `progress` shows a tqdm bar during pre-training; `log` receives progress lines. Returns `out_dir`.
    """
    from filelock import FileLock

    spec = spec or TinyModelSpec()
    out = Path(out_dir).expanduser().resolve()
    say = log or (lambda message: None)
    if tiny_model_is_current(out, spec=spec):
        say(f"{out} is up to date (hash {build_hash(spec)[:12]})")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f".{out.name}.lock")):
        if tiny_model_is_current(out, spec=spec):  # another process finished it while we waited
            say(f"{out} was built by another process")
            return out
        _check_replaceable(out)
        _remove_stale_temporaries(out)
        tmp = _sibling_dir(out, "building")
        try:
            with one_torch_thread():
                _build_into(tmp, spec, progress=progress, say=say)
            _move_into_place(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    say(f"built {out}")
    return out


def _check_replaceable(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory; choose another output directory")
    if any(out.iterdir()) and read_build_info(out) is None:
        raise FileExistsError(
            f"{out} is not empty and holds no {BUILD_FILE}: it is not a tiny-model build, so it is not replaced; "
            "choose an empty or new directory"
        )


def _sibling_dir(out: Path, kind: str) -> Path:
    """A new hidden directory beside `out` (mode from the umask, unlike mkdtemp's 0700: the finished build
    must be readable by the web server and workers)."""
    path = out.parent / f".{out.name}.{kind}-{uuid.uuid4().hex[:12]}"
    path.mkdir()
    return path


def _remove_stale_temporaries(out: Path) -> None:
    """Delete temporary directories left beside `out` by builds that were killed (we hold the lock)."""
    for stale in (*out.parent.glob(f".{out.name}.building-*"), *out.parent.glob(f".{out.name}.old-*")):
        shutil.rmtree(stale, ignore_errors=True)


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished build to `out`; an older build there is moved aside first, then deleted."""
    old = None
    if out.exists():
        old = _sibling_dir(out, "old")
        os.replace(out, old / "previous")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def train_demo_tokenizer(corpus: Sequence[str], *, vocab_size: int, model_max_length: int):
    """A byte-level BPE tokenizer trained on `corpus`, as a transformers fast tokenizer (padding side right).

    Special tokens: EOS "<|endoftext|>" (id 0, also BOS and UNK as in GPT-2) and PAD "<|pad|>" (id 1).
    No post-processor: like GPT-2 it adds no special tokens; callers append EOS where the format needs it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=model_max_length,
    )


def _lr_factor(step: int, total: int) -> float:
    """Linear warm-up over 5 % of the steps, then cosine decay from 1 to 0.1."""
    warmup = max(1, total // 20)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _build_into(target: Path, spec: TinyModelSpec, *, progress: bool, say: Callable[[str], None]) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    started = time.monotonic()
    # 1. corpus
    corpus = demo_corpus(n=spec.corpus_size, seed=spec.seed)
    corpus_sha = hashlib.sha256("\n".join(corpus).encode("utf-8")).hexdigest()

    # 2. tokenizer
    tokenizer = train_demo_tokenizer(corpus, vocab_size=spec.vocab_size, model_max_length=spec.n_positions)
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert eos_id != pad_id
    if spec.chat:  # markers in plain text, no new tokens: the same pre-training, a template on top
        tokenizer.chat_template = TINY_CHAT_TEMPLATE
    # every text + EOS, truncated to fit n_positions (demo texts are ≈ 25 tokens, at most ≈ 60 at 1024 tokens)
    encoded = [ids + [eos_id] for ids in tokenizer(corpus, truncation=True, max_length=spec.n_positions - 1)["input_ids"]]
    say(f"tokenizer: {len(tokenizer)} tokens; corpus: {len(corpus)} texts, {sum(map(len, encoded))} tokens")

    # 3. model
    torch.manual_seed(spec.seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=spec.n_positions,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        resid_pdrop=spec.dropout,
        embd_pdrop=spec.dropout,
        attn_pdrop=spec.dropout,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    model = GPT2LMHeadModel(config)
    for key, value in (("bos_token_id", eos_id), ("eos_token_id", eos_id), ("pad_token_id", pad_id)):
        setattr(model.generation_config, key, value)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"model: GPT-2 {spec.n_layer}×{spec.n_embd}, {n_params / 1e6:.2f} M parameters")

    # 4. pre-training, then the loss on held-out grammar samples (another corpus seed)
    losses = pretrain(model, encoded, spec, pad_id=pad_id, progress=progress, say=say)
    held_out = demo_corpus(n=256, seed=spec.seed + 1_000_003)
    held_out_ids = tokenizer(held_out, truncation=True, max_length=spec.n_positions - 1)["input_ids"]
    eval_loss = corpus_loss(model, [ids + [eos_id] for ids in held_out_ids], pad_id=pad_id)
    say(f"held-out loss {eval_loss:.3f} nats/token (uniform guessing: {math.log(len(tokenizer)):.2f})")
    model.eval()

    # 5. save
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    tail = losses[-min(20, len(losses)) :]
    info = {
        "hash": build_hash(spec),
        "spec": dataclasses.asdict(spec),
        "versions": _library_versions(),
        "format": BUILD_FORMAT,
        "corpus_sha256": corpus_sha,
        "vocab_size": len(tokenizer),
        "parameters": n_params,
        "final_loss": sum(tail) / len(tail),
        "eval_loss": eval_loss,
        "build_seconds": round(time.monotonic() - started, 1),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # build.json last: its presence (with the other required files) marks a complete build
    (target / BUILD_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _padded_batch(batch: Sequence[list[int]], pad_id: int):
    """(input_ids, attention_mask, labels), each (B, T): right-padded; labels −100 on padding."""
    import torch

    width = max(map(len, batch))
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask, input_ids.masked_fill(attention_mask == 0, -100)


def corpus_loss(model, encoded: Sequence[list[int]], *, pad_id: int, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats per predicted token) of `model` over `encoded` texts, in eval mode."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            input_ids, attention_mask, labels = _padded_batch(encoded[start : start + batch_size], pad_id)
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
            targets = labels[:, 1:]
            total += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
            ).item()
            count += int((targets != -100).sum())
    return total / max(1, count)


def length_bucketed_batches(lengths: Sequence[int], *, batch_size: int, generator, bucket: int = 16):
    """Endless batches of indices: shuffled epochs, where each run of `bucket` batches is sorted by length.

    Texts of similar length share a batch, so right padding wastes little compute; the order is fixed by
    the seeded torch `generator`.
    """
    import torch

    while True:
        order = torch.randperm(len(lengths), generator=generator).tolist()
        chunk = batch_size * bucket
        for start in range(0, len(order) - batch_size + 1, chunk):
            group = sorted(order[start : start + chunk], key=lengths.__getitem__)
            batches = [group[i : i + batch_size] for i in range(0, len(group) - batch_size + 1, batch_size)]
            for b in torch.randperm(len(batches), generator=generator).tolist():
                yield batches[b]


@contextlib.contextmanager
def one_torch_thread():
    """Run torch on one intra-op thread inside the block (restored afterwards).

    A sub-million-parameter model gains little from more threads, and on a busy machine two spinning
    threads make each step several times slower; one thread also makes results bit-for-bit reproducible.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def pretrain(model, encoded: Sequence[list[int]], spec: TinyModelSpec, *, pad_id: int, progress: bool = False,
             say: Callable[[str], None] = lambda message: None) -> list[float]:
    """Next-token pre-training of `model` on `encoded` texts (each ending in EOS); returns the step losses.

    AdamW with warm-up and cosine decay, gradient clipping at 1, right-padded length-bucketed batches, loss on
    real tokens only. Runs on one thread (`one_torch_thread`): bit-for-bit reproducible for a seed on a given
    platform, and not slowed to a crawl when the machine is busy, as two threads are.
    """
    import torch
    from tqdm.auto import tqdm

    with one_torch_thread():
        torch.manual_seed(spec.seed)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.98)
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, spec.steps))
        batches = length_bucketed_batches(
            [len(ids) for ids in encoded],
            batch_size=min(spec.batch_size, len(encoded)),
            generator=torch.Generator().manual_seed(spec.seed),
        )
        model.train()
        losses: list[float] = []
        bar = tqdm(total=spec.steps, desc="pre-training", unit="step", disable=not progress, dynamic_ncols=True)
        for step in range(spec.steps):
            input_ids, attention_mask, labels = _padded_batch([encoded[i] for i in next(batches)], pad_id)
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.update(1)
            if step % 10 == 0 or step == spec.steps - 1:
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if step % 100 == 0 or step == spec.steps - 1:
                say(f"step {step + 1}/{spec.steps} loss {losses[-1]:.3f}")
        bar.close()
        model.eval()
        return losses


def generate_samples(
    model_dir: str | Path,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[str]:
    """Sample one response per prompt from a causal LM directory (left-padded batch, stop at EOS).

    Returns the decoded continuations without special tokens (each starts with the space the demo
    format puts after the prompt).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True)
    torch.manual_seed(seed)
    with torch.no_grad():
        output = model.generate(
            **batch,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    continuations = output[:, batch["input_ids"].shape[1] :]
    return tokenizer.batch_decode(continuations, skip_special_tokens=True)


# --- a tiny chat model: the same weights, a tokenizer that carries a chat template --------------------------


def add_chat_template(model_dir: str | Path, out_dir: str | Path, *, template: str = TINY_CHAT_TEMPLATE) -> Path:
    """Copy the model in `model_dir` to `out_dir` with `template` as its tokenizer's chat template (the tests'
    and the demo's chat model: every stage must then apply it). Returns `out_dir`."""
    from transformers import AutoTokenizer

    source, out = Path(model_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and not path.name.startswith("tokenizer") and path.name != "special_tokens_map.json":
            shutil.copy2(path, out / path.name)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(out)
    return out
