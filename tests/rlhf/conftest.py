"""Fixtures for the RLHF core tests: a random tiny GPT-2 (seconds to build) for unit tests, and a reward
model trained on the demo task (`demo_reward_model_dir`, cached under var/test-cache) for PPO's tests."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import pytest

# Same location as tests/conftest.py's cache (that conftest is not importable as a module).
TEST_CACHE_DIR = Path(os.environ.get("WORKBENCH_TEST_CACHE", Path(__file__).resolve().parents[2] / "var" / "test-cache"))

TINY_CORPUS = [
    "Write a short review of the harbour cafe: The coffee was warm and the staff were friendly.",
    "Write a short review of the night train: The seats were dirty but the conductor was kind.",
    "Describe the jazz club: The band was loud, the drinks were cheap and we will come back.",
    "Review the village bakery: The bread was fresh. I would recommend it!",
    "Tell me about the mountain hotel: The rooms were cold and the breakfast was bland.",
] * 4


def build_random_lm(out_dir: Path, *, with_pad: bool = True, seed: int = 0) -> Path:
    """A randomly initialised 2-layer GPT-2 (d = 64) and a byte-level BPE tokenizer (EOS "<|endoftext|>",
    PAD "<|pad|>" unless `with_pad` is False), saved like a real checkpoint (GPT2LMHeadModel)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    specials = ["<|endoftext|>"] + (["<|pad|>"] if with_pad else [])
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        TINY_CORPUS,
        trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
        unk_token="<|endoftext|>", pad_token="<|pad|>" if with_pad else None, model_max_length=128,
    )
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_layer=2, n_embd=64, n_head=2,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def random_lm_dir(tmp_path_factory) -> Path:
    """A random tiny GPT-2 + tokenizer with PAD ≠ EOS (unit tests of the reward model and its trainer)."""
    return build_random_lm(tmp_path_factory.mktemp("random-lm"))


@pytest.fixture(scope="session")
def random_lm_no_pad_dir(tmp_path_factory) -> Path:
    """The same kind of model whose tokenizer has no pad token (the reward model must add one ≠ EOS)."""
    return build_random_lm(tmp_path_factory.mktemp("random-lm-no-pad"), with_pad=False)


def make_ranking_rows(n_prompts: int, *, k: int = 4, seed: int = 0, annotators: int = 1) -> list[dict]:
    """Synthetic ranking rows with a learnable signal: responses with more "good" words rank higher."""
    rng = random.Random(seed)
    good = ["fresh", "friendly", "lovely", "great", "warm"]
    bad = ["dirty", "rude", "cold", "awful", "bland"]
    rows = []
    for p in range(n_prompts):
        prompt = f"Review place {p}:"
        responses, quality = [], []
        for i in range(k):
            n_good = rng.randint(0, 3)
            words = rng.sample(good, n_good) + rng.sample(bad, 3 - n_good)
            rng.shuffle(words)
            responses.append(f" It was {' and '.join(words)} number {i}.")
            quality.append(n_good)
        for a in range(annotators):
            tiers: dict[int, list[int]] = {}
            for i, q in enumerate(quality):
                tiers.setdefault(q, []).append(i)
            ranking = [tiers[q] for q in sorted(tiers, reverse=True)]
            rows.append({"prompt_id": str(p), "prompt": prompt, "responses": responses, "ranking": ranking,
                         "annotator": f"ann-{a}", "source": "simulated", "metadata": {"task": "synthetic"}})
    return rows


def write_rows(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def make_rankings():
    """`make_ranking_rows(n_prompts, k=4, seed=0, annotators=1) -> list[dict]` for tests that build datasets."""
    return make_ranking_rows


@pytest.fixture(scope="session")
def write_jsonl_rows():
    """`write_rows(rows, path) -> path`: rows as JSON lines."""
    return write_rows


@pytest.fixture
def ranking_dataset(tmp_path) -> Path:
    """A kwise/ directory (train.jsonl, test.jsonl) of synthetic K=4 rankings, split by prompt."""
    rows = make_ranking_rows(24, k=4, seed=1)
    directory = tmp_path / "kwise"
    write_rows([r for r in rows if int(r["prompt_id"]) < 18], directory / "train.jsonl")
    write_rows([r for r in rows if int(r["prompt_id"]) >= 18], directory / "test.jsonl")
    return directory


# --- a reward model trained on the demo task (PPO's tests use it) -----------------------------------------

DEMO_RM_SPEC = {
    "version": 2,  # bump when the recipe below changes
    "train_groups": 4,  # K-response groups sampled per training prompt (96 prompts)
    "test_groups": 3,  # … per held-out prompt (24 prompts)
    "k": 4,
    "agreement": 0.73,
    "seed": 0,
    "max_new_tokens": 48,
    "rm": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "warmup_ratio": 0.05, "weight_decay": 0.0,
           "max_length": 128, "seed": 0, "calibration_set": "heldout"},
}


def _demo_rankings(model_dir: Path, spec: dict) -> tuple[list[dict], list[dict]]:
    """Sample groups of K responses per demo prompt from the tiny model; a simulated annotator ranks each
    group. Train and test prompts are the demo task's own disjoint pools (96 and 24 prompts)."""
    import torch

    from training.rlhf.demo_task import DEMO_TASK, SimulatedAnnotator, demo_prompts
    from training.rlhf.sampling import SamplingParams, load_policy, policy_generator, sample_distinct

    train_prompts = demo_prompts(n=96, seed=spec["seed"], split="train")
    test_prompts = demo_prompts(n=24, seed=spec["seed"], split="test")
    prompts = train_prompts * spec["train_groups"] + test_prompts * spec["test_groups"]
    policy = load_policy(model_dir, device="cpu", dtype=torch.float32)
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=spec["max_new_tokens"], batch_size=128)
    sampled = sample_distinct(prompts, k=spec["k"], generate=policy_generator(policy, params), seed=spec["seed"])
    annotator = SimulatedAnnotator(agreement=spec["agreement"], seed=spec["seed"], name="sim-1")
    test_set = set(test_prompts)
    train_rows, test_rows = [], []
    for prompt, texts in zip(prompts, sampled.responses):
        if len(texts) < 2:
            continue
        row = {"prompt_id": "demo-" + hashlib.sha256(prompt.encode()).hexdigest()[:12], "prompt": prompt,
               "responses": list(texts), "ranking": annotator.rank(prompt, texts), "annotator": annotator.name,
               "source": "simulated", "metadata": {"task": DEMO_TASK}}
        (test_rows if prompt in test_set else train_rows).append(row)
    return train_rows, test_rows


def _file_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for name in ("build.json", "model.safetensors"):
        path = directory / name
        if path.exists():
            digest.update(name.encode())
            digest.update(path.read_bytes() if name == "build.json" else str(path.stat().st_size).encode())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def demo_reward_model_dir(tiny_model_dir: Path) -> Path:
    """A reward model trained on simulated rankings of the tiny model's demo-task samples.

    Recipe: 4 groups of K=4 samples for each of the 96 train demo prompts and 3 groups for each of the 24
    held-out ones, ranked by SimulatedAnnotator (agreement 0.73), written as kwise/{train,test}.jsonl;
    1 epoch of `train_reward_model` (48 steps, lr 1e-3) with held-out calibration. About a minute. Cached under var/test-cache/demo-rm-<hash of the recipe and the tiny model build>, so a rerun
    is instant. Loads with `RewardModel.from_pretrained(dir)`; its evaluation (accuracy against the oracle)
    is in reward_model.json and evaluation.json.
    """
    from training.rlhf.reporter import NullReporter
    from training.rlhf.rm_config import RewardModelConfig
    from training.rlhf.rm_trainer import train_reward_model

    key = hashlib.sha256(json.dumps(DEMO_RM_SPEC, sort_keys=True).encode() + _file_digest(tiny_model_dir).encode())
    out = TEST_CACHE_DIR / f"demo-rm-{key.hexdigest()[:16]}"
    if (out / "model" / "reward_model.json").exists():
        return out / "model"
    import torch

    work = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is as fast, and far faster on a busy machine
    try:
        train_rows, test_rows = _demo_rankings(tiny_model_dir, DEMO_RM_SPEC)
        write_rows(train_rows, work / "data" / "kwise" / "train.jsonl")
        write_rows(test_rows, work / "data" / "kwise" / "test.jsonl")
        config = RewardModelConfig(
            model=str(tiny_model_dir), dataset=str(work / "data"), output_dir=str(work / "model"),
            checkpoint_every=0, **DEMO_RM_SPEC["rm"],
        )
        train_reward_model(config, reporter=NullReporter())
    finally:
        torch.set_num_threads(threads)
    shutil.rmtree(work / "model" / "checkpoints", ignore_errors=True)
    try:
        work.rename(out)
    except OSError:  # another process finished first: use its copy
        shutil.rmtree(work, ignore_errors=True)
    # The reward model records absolute paths of its own directory nowhere, so the move is safe.
    return out / "model"
