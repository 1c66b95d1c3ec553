"""`manage.py make_tiny_model OUT_DIR`: builds, reports, is a no-op the second time, rejects bad input."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command

# A micro spec (about a second): the command's plumbing, not sample quality.
MICRO = ["--vocab-size", "320", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
         "--corpus-size", "120", "--batch-size", "8"]


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("make_tiny_model", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_builds_then_reports_up_to_date(tmp_path):
    target = tmp_path / "tiny"
    first = run(str(target), "--steps", "3", "--seed", "5", *MICRO)
    assert f"{target.resolve()}: built in" in first
    info = json.loads((target / "build.json").read_text())
    assert info["spec"]["steps"] == 3 and info["spec"]["seed"] == 5 and info["spec"]["n_embd"] == 16
    assert info["hash"][:12] in first and "held-out loss" in first
    samples = [line for line in first.splitlines() if line.startswith("  ")]
    assert len(samples) == 3 and all("?" in s or ":" in s for s in samples)  # prompt + continuation

    second = run(str(target), "--steps", "3", "--seed", "5", *MICRO, "--samples", "0")
    assert f"{target.resolve()}: already up to date" in second
    assert not [line for line in second.splitlines() if line.startswith("  ")]
    assert json.loads((target / "build.json").read_text())["created_at"] == info["created_at"]

    # a different seed is a different build: it replaces the old one
    third = run(str(target), "--steps", "3", "--seed", "6", *MICRO, "--samples", "1")
    assert "built in" in third
    assert json.loads((target / "build.json").read_text())["spec"]["seed"] == 6


def test_verbose_output_logs_the_steps(tmp_path):
    text = run(str(tmp_path / "tiny"), "--steps", "2", *MICRO, "--samples", "0", "--verbosity", "2")
    assert "tokenizer:" in text and "model: GPT-2 1×16" in text and "step 2/2 loss" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n-head", "3"], "--n-head: must divide n_embd"),
        (["--steps", "0"], "--steps: must be a positive integer"),
        (["--samples", "-1"], "--samples: must be >= 0"),
    ],
)
def test_bad_options_are_command_errors(tmp_path, args, message):
    target = tmp_path / "tiny"
    with pytest.raises(CommandError, match=message):
        run(str(target), *MICRO, *args)
    assert not target.exists()


def test_refuses_a_directory_that_is_not_a_build(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(CommandError, match="not a tiny-model build"):
        run(str(tmp_path), "--steps", "2", *MICRO)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv"]


def test_help_lists_the_spec_options():
    from training.management.commands.make_tiny_model import Command

    parser = Command().create_parser("manage.py", "make_tiny_model")
    text = parser.format_help()
    for option in ("OUT_DIR", "--seed", "--steps", "--n-layer", "--vocab-size", "--samples"):
        assert option in text
    assert "Pre-training optimiser steps" in text


def test_the_chat_option_puts_the_tiny_template_on_the_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from training.rlhf.tiny_model import TINY_CHAT_TEMPLATE

    target = tmp_path / "chat"
    out = run(str(target), "--steps", "3", *MICRO, "--chat", "true", "--samples", "1")
    assert "built in" in out and json.loads((target / "build.json").read_text())["spec"]["chat"] is True
    assert AutoTokenizer.from_pretrained(target).chat_template == TINY_CHAT_TEMPLATE
    assert "--chat" in io_help()


def io_help() -> str:
    from training.management.commands.make_tiny_model import Command

    return Command().create_parser("manage.py", "make_tiny_model").format_help()
