"""Shared fixtures. With CI=true, a test that needs Chromium or PostgreSQL and cannot get it FAILS."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("WORKBENCH_CHROMIUM", "/usr/bin/chromium")
# Where screenshots and other CI artifacts go; .ci/run prints this path at the end.
ARTIFACTS_DIR = Path(os.environ.get("WORKBENCH_ARTIFACTS_DIR", REPO_ROOT / "artifacts"))
# Persistent cache for the session-scoped tiny model (build is skipped when the same build is there).
TEST_CACHE_DIR = Path(os.environ.get("WORKBENCH_TEST_CACHE", REPO_ROOT / "var" / "test-cache"))

# live_server tests drive a sync Playwright from the test thread.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def require(condition: bool, reason: str) -> None:
    """Skip locally when a resource is missing; fail in CI, where everything must run."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _fresh_throttles():
    """The API throttles count requests in the cache (per user, per address): every test starts from zero, so
    the suite as a whole never trips the per-minute rates."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps one AcceleratorState per process, and its mixed precision cannot change once set: a
    trainer run in bf16 after one in fp32 in the same process fails ("AcceleratorState has already been
    initialized"). A real run has a process of its own (the CLI, the worker's subprocess, torchrun); here each
    test gets that fresh state."""
    yield
    import sys

    if "accelerate.state" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


# --- PostgreSQL ------------------------------------------------------------------------------------------


@pytest.fixture
def postgres_only(settings) -> None:
    """For tests that need PostgreSQL semantics (row locks, skip_locked). They run in the PostgreSQL pass
    of `.ci/run` (DATABASE_URL set); the SQLite pass has its own SQLite variants of the same checks."""
    from django.db import connection

    if connection.vendor != "postgresql":
        if os.environ.get("DATABASE_URL", "").startswith("postgres"):
            pytest.fail("DATABASE_URL names PostgreSQL but the connection is not PostgreSQL", pytrace=False)
        pytest.skip("PostgreSQL-only: runs in the PostgreSQL pass (DATABASE_URL=postgres://…)")
    try:
        connection.ensure_connection()
    except Exception as exc:  # pragma: no cover - depends on the machine
        require(False, f"PostgreSQL is not reachable: {exc}")


# --- Browser (Debian's Chromium through Playwright) --------------------------------------------------------


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    require(Path(CHROMIUM).exists(), f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ],
    }


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS_DIR


# --- Models ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The demo task's tiny tokenizer + GPT-2-style policy, built once (about a minute) and cached."""
    from training.rlhf.tiny_model import build_tiny_model

    out = TEST_CACHE_DIR / "tiny-model"
    build_tiny_model(out)
    return out


# A small build of the same recipe with the tiny chat template on its tokenizer (`TinyModelSpec(chat=True)`):
# a few seconds, deterministic, cached like the plain one. Every stage must apply its template.
TINY_CHAT_SPEC = {"chat": True, "steps": 30, "corpus_size": 600, "n_layer": 2, "n_head": 2, "n_embd": 64,
                  "vocab_size": 400, "batch_size": 16}


@pytest.fixture(scope="session")
def tiny_chat_model_dir() -> Path:
    """A tiny GPT-2 whose tokenizer carries a chat template of its own ("### User:" / "### Assistant:" turns,
    the assistant's turn ending with EOS), built locally like an instruct model stand-in."""
    from training.rlhf.tiny_model import TinyModelSpec, build_tiny_model

    out = TEST_CACHE_DIR / "tiny-chat-model"
    build_tiny_model(out, spec=TinyModelSpec(**TINY_CHAT_SPEC))
    return out


@pytest.fixture(autouse=True)
def _torch_threads():
    """Two cores here; keep torch from oversubscribing when the suite runs beside other work."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield


def pytest_report_header(config):
    return [f"CI={IN_CI} chromium={'yes' if shutil.which(CHROMIUM) or Path(CHROMIUM).exists() else 'no'} "
            f"database={'postgres' if os.environ.get('DATABASE_URL', '').startswith('postgres') else 'sqlite'}"]
