"""Make the README's screenshots from a real browser run: `make screenshots` (or `python docs/screenshots.py`).

1. Runs the demo loop (`manage.py demo --no-serve`) in its own var directory (default var/screenshots, so your
   own demo database is not touched; a second run reuses the loop and takes seconds).
2. Serves that database with `manage.py runserver` on a free local port.
3. Drives Debian's Chromium through Playwright: an annotator opens the next task of the new round, ties two
   responses and rates one; staff open the runs list, the PPO run page and the project statistics.
4. Writes docs/screenshots/{ranking-page,dashboard-runs,ppo-run,project-stats}.png.

Nothing is downloaded; Chromium must be installed (`apt-get install -y chromium`).
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "docs" / "screenshots"
CHROMIUM = os.environ.get("WORKBENCH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare(*, var_dir: Path, size: str) -> dict:
    """Run the demo into var_dir and give the demo users passwords known to this script."""
    os.environ["WORKBENCH_VAR_DIR"] = str(var_dir)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from training.demo import DEMO_ANNOTATORS, DEMO_STAFF
    from training.models import TrainingRun

    call_command("demo", "--size", size, "--no-serve")
    passwords = {}
    for username in (DEMO_STAFF, DEMO_ANNOTATORS[0]):
        user = get_user_model().objects.get(username=username)
        passwords[username] = secrets.token_urlsafe(12)
        user.set_password(passwords[username])
        user.save(update_fields=["password"])
    ppo = TrainingRun.objects.filter(kind="ppo", status="succeeded").order_by("-pk").first()
    if ppo is None:
        raise SystemExit("The demo left no finished PPO run.")
    return {"passwords": passwords, "ppo": ppo.pk, "project": ppo.project_id,
            "staff": DEMO_STAFF, "annotator": DEMO_ANNOTATORS[0]}


def serve(*, var_dir: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "WORKBENCH_VAR_DIR": str(var_dir), "PYTHONUNBUFFERED": "1"}
    handle = log.open("ab")
    server = subprocess.Popen([sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
                              cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    for _ in range(60):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/login/", timeout=2)
            return server
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"The web server exited; see {log}") from None
            time.sleep(0.5)
    server.terminate()
    raise SystemExit(f"The web server did not answer; see {log}")


def login(page, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")


def shoot(*, base: str, world: dict, out_dir: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            # The annotator: the next task of the new round (PPO policy vs the start, blind), a tie and a rating.
            page = browser.new_page(viewport={"width": 1280, "height": 1500})
            page.set_default_timeout(20_000)
            login(page, base, world["annotator"], world["passwords"][world["annotator"]])
            page.goto(f"{base}/projects/{world['project']}/")
            page.get_by_role("button", name="Start ranking").first.click()
            page.wait_for_url("**/rank/*/")
            page.wait_for_function("() => Boolean(window.rankTask && window.Sortable)")
            cards = page.locator(".resp-card")
            cards.nth(0).focus()  # every response starts "not ranked yet": place two, tie a third with the second
            page.keyboard.press("k")
            page.keyboard.press("k")
            page.keyboard.press("t")
            page.locator("[data-tier-list] .resp-card").first.locator(".likert-option", has_text="6").click()
            page.wait_for_function(
                "() => document.querySelector('[data-draft-status]').textContent.startsWith('Draft saved')")
            written.append(out_dir / "ranking-page.png")
            page.screenshot(path=str(written[-1]))  # the top of the page: prompt, cards still to place, the first ranks
            page.close()

            # Staff: the runs, the PPO run with its curves, the project's agreement statistics.
            page = browser.new_page(viewport={"width": 1280, "height": 1300})
            page.set_default_timeout(20_000)
            login(page, base, world["staff"], world["passwords"][world["staff"]])
            page.set_viewport_size({"width": 1280, "height": 720})
            page.goto(f"{base}/dashboard/")
            written.append(out_dir / "dashboard-runs.png")
            page.screenshot(path=str(written[-1]))
            page.set_viewport_size({"width": 1280, "height": 1300})
            page.goto(f"{base}/dashboard/runs/{world['ppo']}/")
            page.wait_for_function("() => document.querySelectorAll('canvas').length > 0 && window.Chart")
            page.wait_for_timeout(1500)  # the charts animate in
            written.append(out_dir / "ppo-run.png")
            page.screenshot(path=str(written[-1]))  # the header and the curves; samples and config are below
            page.goto(f"{base}/dashboard/projects/{world['project']}/")
            page.wait_for_timeout(1500)
            written.append(out_dir / "project-stats.png")
            page.screenshot(path=str(written[-1]))
        finally:
            browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--var-dir", type=Path, default=REPO / "var" / "screenshots",
                        help="Where the demo's database, models and runs for the screenshots live.")
    parser.add_argument("--size", choices=["small", "full"], default="full", help="Demo size (default full).")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="Where the PNG files go (default docs/screenshots).")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium")
    var_dir = args.var_dir.resolve()
    var_dir.mkdir(parents=True, exist_ok=True)
    world = prepare(var_dir=var_dir, size=args.size)
    port = free_port()
    server = serve(var_dir=var_dir, port=port, log=var_dir / "screenshots-web.log")
    try:
        written = shoot(base=f"http://127.0.0.1:{port}", world=world, out_dir=args.out)
    finally:
        server.terminate()
        server.wait(timeout=20)
    for path in written:
        print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
