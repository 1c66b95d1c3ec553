"""The demo: the whole RLHF loop on the demo task, on this machine, then the app to explore it.

Each stage calls the same services the UI and the commands use; nothing here is demo-only logic except the
choice of sizes.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command

Out = Callable[[str], None]

DEMO_STAFF = "admin"
DEMO_ANNOTATORS = ("alice", "bob")


class DemoSize(StrEnum):
    SMALL = "small"
    FULL = "full"


@dataclass(frozen=True)
class DemoOptions:
    size: DemoSize = DemoSize.FULL
    seed: int = 0


@dataclass
class DemoResult:
    model_dir: Path
    credentials: dict[str, str]
    stage_seconds: dict[str, float] = field(default_factory=dict)


def demo_model_dir() -> Path:
    """The tiny policy lives under the first model root so the dashboard can offer it."""
    return Path(settings.WORKBENCH_MODEL_ROOTS[0]) / "tiny-demo"


@contextmanager
def _stage(name: str, out: Out, timings: dict[str, float]) -> Iterator[None]:
    out(f"\n== {name}")
    started = time.monotonic()
    yield
    timings[name] = round(time.monotonic() - started, 1)
    out(f"   done in {timings[name]:.1f} s")


def ensure_demo_users(*, seed_password: str | None = None) -> dict[str, str]:
    """Create (or reset) the demo staff user and annotators; returns username → fresh password."""
    user_model = get_user_model()
    credentials = {}
    for username in (DEMO_STAFF, *DEMO_ANNOTATORS):
        password = seed_password or secrets.token_urlsafe(9)
        user, _ = user_model.objects.get_or_create(username=username)
        user.is_staff = user.is_superuser = username == DEMO_STAFF
        user.set_password(password)
        user.save()
        credentials[username] = password
    return credentials


def run_demo(*, options: DemoOptions, out: Out, style=None) -> DemoResult:
    from training.rlhf.tiny_model import build_tiny_model

    timings: dict[str, float] = {}
    with _stage("1. Database, tiny model and demo users", out, timings):
        call_command("migrate", verbosity=0)
        model_dir = build_tiny_model(demo_model_dir(), progress=True, log=out)
        out(f"   tiny policy + tokenizer: {model_dir}")
        credentials = ensure_demo_users()
    return DemoResult(model_dir=model_dir, credentials=credentials, stage_seconds=timings)


def serve(*, addr: str, result: DemoResult, out: Out) -> None:
    """Serve the app with a job worker beside it until Ctrl+C."""
    out("\nLog in at http://" + addr + "/ with:")
    for username, password in result.credentials.items():
        role = "staff" if username == DEMO_STAFF else "annotator"
        out(f"   {username:<8} {password}   ({role})")
    out("Dashboard: http://" + addr + "/dashboard/   Admin: http://" + addr + "/admin/   Ctrl+C stops.\n")
    worker = subprocess.Popen([sys.executable, "manage.py", "db_worker"], cwd=settings.BASE_DIR)
    try:
        call_command("runserver", addr, use_reloader=False)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
