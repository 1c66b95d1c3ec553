"""Faults with a real process tree: a gunicorn worker SIGKILLed in the middle of a submit, and the PostgreSQL
server restarted while an annotator works.

    python bench/bench_faults.py [--json results.json]

Everything runs against a THROWAWAY PostgreSQL cluster (initdb + pg_ctl on a free port under a temporary
directory, as the `postgres` user when run as root), never a shared server, and a real gunicorn
(`bench/fault_gunicorn.py`: 2 sync workers; with WORKBENCH_FAULT_MARKER the first ranking saved pauses inside
its transaction so it can be killed there). The annotator talks to the REST API with a token, as a script
would, and to the ranking page with a session, as the browser does.

1. SIGKILL mid-submit: the ranking's row is inserted, the transaction is open, the worker is killed. Expected:
   the client sees the connection drop, NO ranking is stored and the task is still leased; the retry succeeds
   (201) and stores exactly one ranking with the submitted tiers; a second retry is idempotent (200, one row).
2. PostgreSQL restarted (`pg_ctl stop -m fast`, then `start`): while it is down, the task API, the draft save,
   the submit and the ranking page answer 503 with Retry-After (JSON for the API, a page for the browser), never
   500; once it is back, the first request works, the draft saved before the outage is there and the submit
   stores one ranking.

Prints a table of what it measured (bench/RESULTS.md quotes it); exits 1 if any expectation failed.
tests/webapp/test_faults.py runs it (skipped where the PostgreSQL server binaries are missing).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from http.client import HTTPException
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def postgres_bindir() -> Path | None:
    """The newest PostgreSQL server binaries on this machine (Debian's layout), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayPostgres:
    """A PostgreSQL cluster of our own: initdb in a temporary directory, started on a free port."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="workbench-faults-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root
            shutil.chown(self.root, user="postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=120)

    def init(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "--auth=trust", "-U", "postgres",
                  "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                  str(self.root / "server.log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def url(self, db: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def cleanup(self) -> None:
        try:
            self.stop("immediate")
        except Exception:  # noqa: BLE001 - already stopped
            pass
        shutil.rmtree(self.root, ignore_errors=True)


class Http:
    """A tiny client: token (API) or session cookie (pages); never raises for an HTTP status."""

    def __init__(self, base: str, *, token: str = "", session: str = ""):
        self.base, self.token, self.session = base, token, session

    def __call__(self, method: str, path: str, body=None, timeout: float = 30):
        headers = {"Accept": "application/json"} if self.token else {"Accept": "text/html"}
        if self.token:
            headers["Authorization"] = f"Token {self.token}"
        if self.session:
            headers["Cookie"] = f"sessionid={self.session}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()
        except (urllib.error.URLError, HTTPException, ConnectionError, TimeoutError) as exc:
            return None, {}, repr(exc).encode()


@contextmanager
def gunicorn(env: dict[str, str], port: int, log: Path):
    command = [sys.executable, "-m", "gunicorn", "-c", str(REPO / "bench" / "fault_gunicorn.py"),
               "-b", f"127.0.0.1:{port}", "webapp.wsgi:application"]
    with open(log, "ab") as out:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        probe = Http(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {server.returncode}; see {log}")
            if probe("GET", "/login/", timeout=5)[0] == 200:
                break
            time.sleep(0.3)
        else:
            raise RuntimeError(f"gunicorn did not answer within 90 s; see {log}")
        yield server
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(server.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def setup_django(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "webapp.settings"
    os.environ.setdefault("DJANGO_DEBUG", "1")
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def make_world():
    """A project with 3 prompts of 4 responses, an annotator with a token and a browser session."""
    from django.contrib.auth import get_user_model
    from django.test import Client
    from rest_framework.authtoken.models import Token

    from annotate.models import Project, Prompt, Response

    user = get_user_model().objects.create_user("fault-annotator", password="fault-pw-1")
    project = Project.objects.create(name="Faults", k_min=4, k_max=4)
    project.annotators.add(user)
    for i in range(3):
        prompt = Prompt.objects.create(project=project, text=f"Prompt {i}: review the café.")
        for j in range(4):
            Response.objects.create(prompt=prompt, text=f"Answer {j} to prompt {i}.")
    token = Token.objects.create(user=user).key
    client = Client()
    client.force_login(user)
    return project, token, client.cookies["sessionid"].value


def lease(api: Http, project_id: int) -> dict:
    status, _, body = api("POST", "/api/tasks/next/", {"project": project_id})
    if status != 200:
        raise RuntimeError(f"could not lease a task: {status} {body[:300]!r}")
    return json.loads(body)


def rankings_of(assignment_id: int) -> list:
    from django.db import connection

    from annotate.models import Ranking

    connection.close()  # a fresh connection: see what is committed now
    return list(Ranking.objects.filter(assignment_id=assignment_id).values_list("tiers", flat=True))


def assignment_state(assignment_id: int) -> str:
    from annotate.models import Assignment

    return Assignment.objects.get(pk=assignment_id).state


def scenario_kill_mid_submit(*, api: Http, project_id: int, marker: Path, checks: list) -> dict:
    task = lease(api, project_id)
    tiers = [[rid] for rid in task["display_order"]]
    Path(str(marker) + ".armed").touch()
    outcome: dict = {}

    def submit():
        outcome["first"] = api("POST", f"/api/tasks/{task['id']}/submit/", {"tiers": tiers}, timeout=120)

    started = time.monotonic()
    thread = threading.Thread(target=submit)
    thread.start()
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not marker.exists():
        raise RuntimeError("the submit never reached the pause inside its transaction")
    paused_after = time.monotonic() - started
    pid = int(marker.read_text())
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=60)
    first_status = outcome["first"][0]
    rows_after_kill = rankings_of(task["id"])
    state_after_kill = assignment_state(task["id"])
    retry_started = time.monotonic()
    retry = api("POST", f"/api/tasks/{task['id']}/submit/", {"tiers": tiers})
    retry_seconds = time.monotonic() - retry_started
    again = api("POST", f"/api/tasks/{task['id']}/submit/", {"tiers": tiers})
    rows_after_retry = rankings_of(task["id"])
    checks += [
        ("kill: the killed request got no answer", first_status is None),
        ("kill: no ranking stored", rows_after_kill == []),
        ("kill: the task is still leased", state_after_kill == "leased"),
        ("kill: the retry is stored (201)", retry[0] == 201),
        ("kill: a second retry is idempotent (200)", again[0] == 200),
        ("kill: exactly one ranking, the submitted tiers", rows_after_retry == [tiers]),
    ]
    return {"paused_inside_transaction_after_s": round(paused_after, 2), "killed_pid": pid,
            "killed_request_status": first_status, "rankings_after_kill": len(rows_after_kill),
            "assignment_after_kill": state_after_kill, "retry_status": retry[0],
            "retry_seconds": round(retry_seconds, 2), "second_retry_status": again[0],
            "rankings_after_retry": len(rows_after_retry)}


def scenario_postgres_restart(*, api: Http, page: Http, pg: ThrowawayPostgres, project_id: int,
                              checks: list) -> dict:
    task = lease(api, project_id)
    tiers = [[rid] for rid in task["display_order"]]
    draft = api("PUT", f"/api/tasks/{task['id']}/draft/",
                {"revision": 0, "state": {"tiers": tiers, "rationale": "saved before the outage"}})
    assert draft[0] == 200, draft
    revision = json.loads(draft[2])["revision"]

    stop_started = time.monotonic()
    pg.stop("fast")
    stop_seconds = time.monotonic() - stop_started
    down: dict[str, tuple] = {
        "task": api("GET", f"/api/tasks/{task['id']}/"),
        "draft": api("PUT", f"/api/tasks/{task['id']}/draft/",
                     {"revision": revision, "state": {"tiers": tiers, "rationale": "typed during the outage"}}),
        "submit": api("POST", f"/api/tasks/{task['id']}/submit/", {"tiers": tiers}),
        "page": page("GET", f"/rank/{task['id']}/"),
    }
    start_started = time.monotonic()
    pg.start()
    start_seconds = time.monotonic() - start_started
    recovered_after = None
    deadline = time.monotonic() + 60
    first_try = None
    while time.monotonic() < deadline:
        status = api("GET", f"/api/tasks/{task['id']}/")[0]
        first_try = first_try or status
        if status == 200:
            recovered_after = time.monotonic() - start_started - start_seconds
            break
        time.sleep(0.2)
    kept = json.loads(api("GET", f"/api/tasks/{task['id']}/draft/")[2])
    submit = api("POST", f"/api/tasks/{task['id']}/submit/", {"tiers": tiers})
    page_after = page("GET", f"/rank/{(lease(api, project_id))['id']}/")
    rows = rankings_of(task["id"])
    statuses = {name: result[0] for name, result in down.items()}
    checks += [
        ("restart: every request while down is a 503", set(statuses.values()) == {503}),
        ("restart: each 503 has Retry-After", all("Retry-After" in r[1] for r in down.values())),
        ("restart: the API answers JSON with code database_unavailable",
         all(json.loads(down[n][2]).get("code") == "database_unavailable" for n in ("task", "draft", "submit"))),
        ("restart: the page answers an HTML page", down["page"][1].get("Content-Type", "").startswith("text/html")
         and b"Temporarily unavailable" in down["page"][2]),
        ("restart: the first request after the restart works", first_try == 200),
        ("restart: the draft saved before the outage is kept", (kept.get("state") or {}).get("rationale")
         == "saved before the outage"),
        ("restart: the submit after the restart is stored once", submit[0] == 201 and rows == [tiers]),
        ("restart: pages work again", page_after[0] == 200),
    ]
    return {"statuses_while_down": statuses, "retry_after": down["task"][1].get("Retry-After"),
            "pg_stop_seconds": round(stop_seconds, 2), "pg_start_seconds": round(start_seconds, 2),
            "first_request_after_start": first_try,
            "recovered_after_start_s": None if recovered_after is None else round(recovered_after, 2),
            "submit_after_restart": submit[0], "rankings": len(rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the measured figures and checks here")
    args = parser.parse_args(argv)
    bindir = postgres_bindir()
    if bindir is None:
        print("No PostgreSQL server binaries (initdb, pg_ctl) on this machine.", file=sys.stderr)
        return 2
    started = time.monotonic()
    pg = ThrowawayPostgres(bindir)
    checks: list[tuple[str, bool]] = []
    results: dict = {}
    try:
        pg.init()
        pg.start()
        import psycopg

        with psycopg.connect(pg.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE workbench")
        setup_django(pg.url("workbench"))
        project, token, session = make_world()
        port = free_port()
        marker = pg.root / "pause.pid"
        env = {**os.environ, "DATABASE_URL": pg.url("workbench"), "DJANGO_DEBUG": "1",
               "WORKBENCH_FAULT_MARKER": str(marker), "WORKBENCH_DB_RETRY_AFTER": "5"}
        base = f"http://127.0.0.1:{port}"
        with gunicorn(env, port, pg.root / "gunicorn.log"):
            api, page = Http(base, token=token), Http(base, session=session)
            results["kill_mid_submit"] = scenario_kill_mid_submit(api=api, project_id=project.pk, marker=marker,
                                                                  checks=checks)
            results["postgres_restart"] = scenario_postgres_restart(api=api, page=page, pg=pg,
                                                                    project_id=project.pk, checks=checks)
    finally:
        from django.db import connections

        try:
            connections.close_all()
        except Exception:  # noqa: BLE001 - Django never set up
            pass
        pg.cleanup()
    results["seconds"] = round(time.monotonic() - started, 1)
    results["checks"] = {name: ok for name, ok in checks}
    print("| check | result |\n| --- | --- |")
    for name, ok in checks:
        print(f"| {name} | {'ok' if ok else 'FAILED'} |")
    print(json.dumps({k: v for k, v in results.items() if k != "checks"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if checks and all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
