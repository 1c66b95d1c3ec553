"""The tiny offline model: loads with the Auto classes, PAD ≠ EOS, samples varied word-like text; the build is
idempotent, atomic, locked and deterministic."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.rlhf import tiny_model
from training.rlhf.configs import ConfigError
from training.rlhf.demo_task import LEXICON, demo_corpus, demo_prompts, oracle_breakdown
from training.rlhf.tiny_model import (
    TinyModelSpec,
    build_hash,
    build_tiny_model,
    generate_samples,
    read_build_info,
    tiny_model_is_current,
)

# A spec that builds in about a second: for the build mechanics, not for sample quality.
MICRO = TinyModelSpec(vocab_size=320, n_layer=1, n_head=2, n_embd=16, corpus_size=120, steps=2, batch_size=8)
REPO_ROOT = Path(__file__).resolve().parents[2]


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


# --- the shared build -----------------------------------------------------------------------------------------


def test_loads_with_auto_classes_and_pad_is_not_eos(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.bos_token_id == tokenizer.eos_token_id
    assert tokenizer.padding_side == "right"
    assert model.config.model_type == "gpt2"
    for config in (model.config, model.generation_config):
        assert config.pad_token_id == tokenizer.pad_token_id
        assert config.eos_token_id == tokenizer.eos_token_id
        assert config.bos_token_id == tokenizer.eos_token_id
    assert model.config.vocab_size == len(tokenizer)
    assert 500 <= len(tokenizer) <= 2000
    assert sum(p.numel() for p in model.parameters()) < 2_000_000  # small enough for PPO on CPU
    info = read_build_info(tiny_model_dir)
    assert info["hash"] == build_hash(TinyModelSpec())
    # it learned the grammar: held-out loss far below uniform guessing (ln 1024 ≈ 6.9 nats per token)
    assert info["eval_loss"] < 2.0


def test_prompt_and_response_tokenise_to_the_same_boundary(tiny_model_dir):
    """docs/architecture.md: prompt and response are tokenised separately; that must equal the joint text."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = demo_prompts(n=120)
    for text in demo_corpus(n=200, seed=4):
        prompt = next(p for p in prompts if text.startswith(p))
        joint = tokenizer(text)["input_ids"]
        split = tokenizer(prompt)["input_ids"] + tokenizer(text[len(prompt) :])["input_ids"]
        assert joint == split
        assert tokenizer.eos_token_id not in joint and tokenizer.pad_token_id not in joint


def test_generate_with_left_padding(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    batch = tokenizer(["How was the jazz club?", "Write a short review of the harbour cafe:"],
                      return_tensors="pt", padding=True)
    assert (batch["input_ids"][0] == tokenizer.pad_token_id).any()  # the shorter prompt is padded on the left
    with torch.no_grad():
        out = model.generate(**batch, do_sample=False, max_new_tokens=30)
    assert out.shape[0] == 2 and out.shape[1] > batch["input_ids"].shape[1]


def test_samples_are_varied_word_like_reviews(tiny_model_dir):
    prompts = demo_prompts(n=48, seed=2, split="test")
    samples = generate_samples(tiny_model_dir, prompts, max_new_tokens=48, seed=3)
    assert len(samples) == 48
    parts = [oracle_breakdown(p, s) for p, s in zip(prompts, samples)]
    words = [w for s in samples for w in s.lower().replace(",", " ").replace(".", " ").split()]
    # varied: not one repeated phrase
    assert len(set(samples)) / len(samples) >= 0.8
    assert len({s.split()[1] if len(s.split()) > 1 else "" for s in samples}) >= 5
    # word-like: mostly demo words, responses mostly end (EOS) with a proper sentence ending
    known = sum(p["words"] - p["unknown"] for p in parts) / max(1, sum(p["words"] for p in parts))
    assert known >= 0.95
    assert len(words) >= 48 * 3
    assert statistics.fmean(p["ending"] > 0 for p in parts) >= 0.6
    assert all(s.startswith(" ") for s in samples if s)
    # mixed quality: the reward model has signal, PPO has room to improve
    totals = [p["total"] for p in parts]
    assert statistics.pstdev(totals) > 0.7
    assert min(totals) < 0.5 < max(totals)
    assert "coffee" in LEXICON  # the lexicon is the demo grammar's, not the tokenizer's


def test_second_build_is_a_fast_noop(tiny_model_dir):
    weights = tiny_model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    started = time.monotonic()
    assert build_tiny_model(tiny_model_dir) == tiny_model_dir.resolve()
    assert time.monotonic() - started < 5
    assert weights.stat().st_mtime_ns == before
    assert tiny_model_is_current(tiny_model_dir)


# --- build mechanics (micro spec) --------------------------------------------------------------------------


def test_build_records_spec_and_a_hash_that_changes_with_the_seed(tmp_path):
    a = build_tiny_model(tmp_path / "a", spec=MICRO)
    info = json.loads((a / "build.json").read_text())
    assert info["spec"]["seed"] == 0 and info["spec"]["steps"] == 2
    assert set(info["versions"]) == {"torch", "transformers", "tokenizers"}
    assert info["hash"] == build_hash(MICRO) != build_hash(TinyModelSpec())
    other = TinyModelSpec(**{**info["spec"], "seed": 1})
    b = build_tiny_model(tmp_path / "b", spec=other)
    assert read_build_info(b)["hash"] == build_hash(other) != info["hash"]
    assert read_build_info(b)["corpus_sha256"] != info["corpus_sha256"]
    assert not tiny_model_is_current(a, spec=other)


def test_build_is_deterministic_for_a_seed(tmp_path):
    import torch

    first = _weights(build_tiny_model(tmp_path / "one", spec=MICRO))
    second = _weights(build_tiny_model(tmp_path / "two", spec=MICRO))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (tmp_path / "one" / "tokenizer.json").read_bytes() == (tmp_path / "two" / "tokenizer.json").read_bytes()


def test_a_changed_spec_replaces_an_old_build(tmp_path):
    out = tmp_path / "model"
    build_tiny_model(out, spec=MICRO)
    changed = TinyModelSpec(**{**read_build_info(out)["spec"], "steps": 3})
    messages: list[str] = []
    build_tiny_model(out, spec=changed, log=messages.append)
    assert read_build_info(out)["hash"] == build_hash(changed)
    assert any(m.startswith("built ") for m in messages)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.lock", "model"]  # no temporaries left
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~umask  # not mkdtemp's 0700: others can read the model


def test_refuses_to_replace_a_directory_that_is_not_a_build(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a tiny-model build"):
        build_tiny_model(out, spec=MICRO)
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    # an existing empty directory is fine
    (tmp_path / "empty").mkdir()
    assert tiny_model_is_current(build_tiny_model(tmp_path / "empty", spec=MICRO), spec=MICRO)


def test_a_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("simulated crash during pre-training")

    monkeypatch.setattr(tiny_model, "pretrain", explode)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_tiny_model(tmp_path / "model", spec=MICRO)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.lock"]


def test_a_half_written_build_is_rebuilt_and_stale_temporaries_are_removed(tmp_path):
    out = build_tiny_model(tmp_path / "model", spec=MICRO)
    (out / "model.safetensors").unlink()  # e.g. copied half-way
    assert not tiny_model_is_current(out, spec=MICRO)
    stale = tmp_path / ".model.building-killed"
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    build_tiny_model(out, spec=MICRO)
    assert tiny_model_is_current(out, spec=MICRO)
    assert not stale.exists()


def test_spec_validation():
    with pytest.raises(ConfigError, match="n_head"):
        TinyModelSpec(n_embd=128, n_head=3)
    with pytest.raises(ConfigError, match="steps"):
        TinyModelSpec(steps=0)
    with pytest.raises(ConfigError, match="vocab_size"):
        TinyModelSpec(vocab_size=100)
    with pytest.raises(ConfigError, match="n_positions"):
        TinyModelSpec(n_positions=16)
    with pytest.raises(ConfigError, match="dropout"):
        TinyModelSpec(dropout=1.0)
    with pytest.raises(ConfigError, match="lr"):
        TinyModelSpec(lr=0.0)


@pytest.mark.slow  # two fresh interpreters importing torch + transformers: 10–30 s on a busy 2-core machine
def test_concurrent_builders_of_one_directory_do_not_clash(tmp_path):
    """Two processes build the same directory at once: the lock makes one build and the other reuse it."""
    out = tmp_path / "shared"
    code = (
        "import sys; from training.rlhf.tiny_model import TinyModelSpec, build_tiny_model\n"
        "spec = TinyModelSpec(vocab_size=320, n_layer=1, n_head=2, n_embd=16, corpus_size=120, steps=30, batch_size=8)\n"
        "build_tiny_model(sys.argv[1], spec=spec, log=print)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(out)], cwd=REPO_ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    logs = [stdout for stdout, _ in outputs]
    assert sum("built " in log and "built by another" not in log for log in logs) == 1, logs
    assert sum("built by another process" in log or "up to date" in log for log in logs) == 1, logs
    assert tiny_model_is_current(out, spec=TinyModelSpec(vocab_size=320, n_layer=1, n_head=2, n_embd=16,
                                                         corpus_size=120, steps=30, batch_size=8))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shared.lock", "shared"]
