"""Annotation load benchmark: N concurrent annotators against the app under gunicorn, then the database checked.

For each database (SQLite file, or a fresh PostgreSQL database created on the server you name), project size P
and annotator count N: a project of P prompts × K responses (3 rankings per prompt), N annotator users with API
tokens and browser sessions, the app under gunicorn on 127.0.0.1 with production settings (`webapp/gunicorn.conf.py`,
the config `make serve` uses), and N asyncio annotators (aiohttp) that loop for a fixed time through

    POST /api/tasks/next/  →  GET /rank/<id>/ (the ranking page)  →  PUT /api/tasks/<id>/draft/ (autosave)
    →  POST /api/tasks/<id>/submit/   (or, sometimes, …/skip/, or walk away: an abandoned lease)

either at *saturation* (the next request as soon as the last one answered) or *paced* (a think time drawn uniformly
from 1–5 s before each step). An abandoned lease is aged past its expiry in the database by the benchmark (time
travel: the shortest lease is a minute, longer than a run); the annotator comes back later and gets their draft
back if its slot is still free. Afterwards the database is checked: no prompt over-assigned, no duplicate
ranking, every 2xx submit stored, no 2xx-saved draft lost, the queue's stored counts exact.

Prints p50/p95/p99 per endpoint, submits/s and errors (5xx, connection failures, unexpected 4xx);
``--write-results`` replaces this benchmark's section of bench/RESULTS.md.

    python bench/bench_annotation_load.py --db sqlite --prompts 3000 --annotators 1 10 50 --mode both
    python bench/bench_annotation_load.py --db postgres --pg-url postgres://postgres@127.0.0.1:5432/ ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_FILE = REPO / "bench" / "RESULTS.md"
SECTION = "## Annotation service under load"
ENDPOINTS = ("next", "page", "draft", "submit", "skip")
SECRET = "bench-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJ"

CLIENT_KEEPALIVE_S = 2.0  # below the server's keep-alive (see drive)


@dataclass
class RunResult:
    db: str
    mode: str
    prompts: int
    annotators: int
    seconds: float
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    submits: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    server_5xx_in_log: int = 0
    import_records: int = 0  # an import of this many records ran during the whole run
    import_seconds: float | None = None

    def pct(self, endpoint: str, q: float) -> float | None:
        values = sorted(self.latencies_ms.get(endpoint, []))
        if not values:
            return None
        return values[min(len(values) - 1, int(q * len(values)))]


# --- the worker side: one database, one project size, several (N, mode) runs ------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(*, tmp: Path, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL", "WORKBENCH_"))}
    env.update({
        "DJANGO_DEBUG": "0", "DJANGO_SECRET_KEY": SECRET, "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "DJANGO_SECURE_SSL_REDIRECT": "0", "DJANGO_STATIC_ROOT": str(tmp / "static"),
        "WORKBENCH_VAR_DIR": str(tmp / "var"), "WORKBENCH_SQLITE_PATH": str(tmp / "bench.sqlite3"),
        "WORKBENCH_THROTTLE_USER": "100000000/minute", "WORKBENCH_ACCESS_LOG": "",
        "DJANGO_LOG_LEVEL": "WARNING",
    })
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


def setup_world(*, prompts: int, k: int, annotators: int, per_prompt: int) -> dict:
    """The project, its prompts and responses, and the users; bulk inserts with the queue fields set directly."""
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.backends.db import SessionStore
    from django.db import transaction
    from django.db.models import QuerySet
    from rest_framework.authtoken.models import Token

    from annotate.models import ALWAYS_OPEN, Project, Prompt, Response

    User = get_user_model()
    with transaction.atomic():
        project = Project.objects.create(name="Load", annotators_per_prompt=per_prompt, k_min=4, k_max=9,
                                         lease_minutes=30)
        batch = 5000
        for start in range(0, prompts, batch):
            made = QuerySet(Prompt).bulk_create([
                Prompt(project=project, text=f"Prompt {i}: write a short note about topic {i}.", text_hash=f"h{i}",
                       num_responses=k, open_from=ALWAYS_OPEN)
                for i in range(start, min(prompts, start + batch))
            ])
            QuerySet(Response).bulk_create([
                Response(prompt=p, text=f"Response {j} to prompt {p.pk}: " + "words " * 40, text_hash=f"{p.pk}-{j}")
                for p in made for j in range(k)
            ])
        users = User.objects.bulk_create([User(username=f"annotator{i}", password="!") for i in range(annotators)])
        project.annotators.add(*users)
    tokens, sessions = {}, {}
    for user in users:
        tokens[user.pk] = Token.objects.create(user=user).key
        session = SessionStore()
        session["_auth_user_id"] = str(user.pk)
        session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
        session["_auth_user_hash"] = user.get_session_auth_hash()
        session.save()
        sessions[user.pk] = session.session_key
    return {"project": project.pk, "users": [u.pk for u in users], "tokens": tokens, "sessions": sessions}


def reset_work(*, project_id: int) -> None:
    """Back to an untouched project between runs (leases, drafts and rankings removed, queue fields reset)."""
    from django.db import transaction

    from annotate.models import ALWAYS_OPEN, Assignment, Draft, Prompt, Ranking

    with transaction.atomic():
        Draft.objects.filter(assignment__prompt__project_id=project_id)._raw_delete("default")
        Ranking.objects.filter(prompt__project_id=project_id)._raw_delete("default")
        Assignment.objects.filter(prompt__project_id=project_id)._raw_delete("default")
        Prompt.objects.filter(project_id=project_id).update(num_rankings=0, open_from=ALWAYS_OPEN)


def age_lease(assignment_id: int) -> None:
    """Time travel for an abandoned lease: make it run out now (and recount its prompt, as time would)."""
    from datetime import timedelta

    from django.utils import timezone

    from annotate.models import Assignment, refresh_queue_fields

    past = timezone.now() - timedelta(seconds=1)
    updated = Assignment.objects.filter(pk=assignment_id, state="leased").update(lease_expires_at=past)
    if updated:
        prompt_id = Assignment.objects.values_list("prompt_id", flat=True).get(pk=assignment_id)
        refresh_queue_fields(prompt_ids=[prompt_id])


class Tally:
    def __init__(self):
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self.submitted: set[int] = set()  # ranking ids answered 2xx
        self.drafts: dict[int, int] = {}  # assignment → last 2xx draft revision (cleared by submit/skip)
        self.finished: set[int] = set()
        self.import_seconds: float | None = None


async def annotator(*, http, base: str, user_id: int, world: dict, mode: str, rng: random.Random,
                    tally: Tally, skip_rate: float, abandon_rate: float, deadline_of) -> None:
    """One annotator's loop until ``deadline_of()`` (a monotonic time; it can move while the run goes on)."""
    import aiohttp

    api = {"Authorization": f"Token {world['tokens'][user_id]}"}
    page = {"Cookie": f"sessionid={world['sessions'][user_id]}"}

    async def think():
        if mode == "paced":
            await asyncio.sleep(rng.uniform(1.0, 5.0))

    async def call(endpoint: str, method: str, path: str, *, headers: dict, body=None, ok=(200, 201, 204)):
        started = time.perf_counter()
        try:
            async with http.request(method, base + path, headers=headers, json=body) as resp:
                data = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            tally.errors.append(f"{endpoint}: {type(exc).__name__} {exc}")
            return None, None
        tally.latencies[endpoint].append((time.perf_counter() - started) * 1000)
        if status not in ok:
            tally.errors.append(f"{endpoint}: HTTP {status} {data[:200]!r}")
            return status, None
        return status, (json.loads(data) if data and data[:1] in (b"{", b"[") else data)

    while time.monotonic() < deadline_of():
        await think()
        status, task = await call("next", "POST", "/api/tasks/next/", headers=api, body={"project": world["project"]})
        if status == 204:
            await asyncio.sleep(1.0 if mode == "paced" else 0.2)
            continue
        if task is None:
            continue
        tid = task["id"]
        await call("page", "GET", f"/rank/{tid}/", headers=page)
        await think()
        revision = (task.get("draft") or {}).get("revision") or 0
        state = {"tiers": [[r] for r in task["display_order"]], "rationale": "first impressions"}
        status, saved = await call("draft", "PUT", f"/api/tasks/{tid}/draft/", headers=api,
                                   body={"revision": revision, "state": state})
        if saved is not None and tid not in tally.finished:
            tally.drafts[tid] = saved["revision"]
        await think()
        roll = rng.random()
        if roll < abandon_rate:
            await asyncio.to_thread(age_lease, tid)  # walked away; the lease runs out
            continue
        if roll < abandon_rate + skip_rate:
            status, _ = await call("skip", "POST", f"/api/tasks/{tid}/skip/", headers=api,
                                   body={"reason": "I cannot judge this one."})
            if status == 200:
                tally.finished.add(tid)
                tally.drafts.pop(tid, None)
            continue
        tiers = [[r] for r in rng.sample(task["display_order"], len(task["display_order"]))]
        # 409 lease_lost is a correct answer (an abandoned lease whose slot was taken), not an error
        status, ranking = await call("submit", "POST", f"/api/tasks/{tid}/submit/", headers=api,
                                     body={"tiers": tiers}, ok=(200, 201, 409))
        if status in (200, 201) and ranking is not None:
            tally.submitted.add(ranking["id"])
            tally.finished.add(tid)
            tally.drafts.pop(tid, None)


async def warm_up(*, http, base: str, world: dict, seconds: float = 30.0) -> None:
    """Until every worker answers quickly: the first requests of a fresh worker import views and open the
    database connection; not what an annotator of a running service waits for."""
    headers = {"Authorization": f"Token {world['tokens'][world['users'][0]]}"}
    deadline = time.monotonic() + seconds

    async def one() -> float:
        started = time.perf_counter()
        async with http.get(base + "/api/projects/", headers=headers) as resp:
            await resp.read()
        return time.perf_counter() - started

    while time.monotonic() < deadline:
        if max(await asyncio.gather(*[one() for _ in range(40)])) < 0.5:
            return


def import_in_background(path: Path) -> float:
    """Import a file into the load project (the annotators' project) as `import_prompts` would; seconds taken."""
    from django.db import connection

    from annotate.services.importing import import_file

    started = time.monotonic()
    try:
        import_file(path=path, project_name="Load", round=2)
    finally:
        connection.close()
    return time.monotonic() - started


async def drive(*, base: str, world: dict, annotators: int, mode: str, seconds: float, seed: int,
                skip_rate: float, abandon_rate: float, import_path: Path | None = None) -> tuple[Tally, float]:
    import aiohttp

    tally = Tally()
    # An idle connection is dropped by the client before gunicorn drops it (keepalive = 5 s in
    # webapp/gunicorn.conf.py): reusing one the server is just closing is a reset nobody could have avoided
    # (the rule a TLS proxy's upstream keep-alive follows too: shorter than the server's).
    connector = aiohttp.TCPConnector(limit=annotators + 50, keepalive_timeout=CLIENT_KEEPALIVE_S)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await warm_up(http=http, base=base, world=world)
        started = time.monotonic()
        deadline = started + seconds
        if import_path is not None:  # the run lasts exactly as long as the import
            deadline = started + 24 * 3600
            importing = asyncio.create_task(asyncio.to_thread(import_in_background, import_path))

            async def end_with_import():
                nonlocal deadline
                tally.import_seconds = await importing
                deadline = time.monotonic()

            watcher = asyncio.create_task(end_with_import())
        work = [
            annotator(http=http, base=base, user_id=uid, world=world, mode=mode, deadline_of=lambda: deadline,
                      rng=random.Random(f"{seed}:{uid}"), tally=tally, skip_rate=skip_rate,
                      abandon_rate=abandon_rate)
            for uid in world["users"][:annotators]
        ]
        if import_path is not None:
            work.append(watcher)
        await asyncio.gather(*work)
        elapsed = time.monotonic() - started
    return tally, elapsed


def check_database(*, project_id: int, tally: Tally) -> dict[str, bool]:
    from django.db.models import Count
    from django.utils import timezone

    from annotate.models import Draft, Project, Prompt, Ranking
    from annotate.services.queue import annotate_prompt_counts

    project = Project.objects.get(pk=project_id)
    now = timezone.now()
    counts = annotate_prompt_counts(Prompt.objects.filter(project=project).filter(assignments__isnull=False)
                                    .distinct(), now=now)
    over = [p.pk for p in counts if p.n_rankings + p.n_live_others > project.annotators_per_prompt]
    stale = [p.pk for p in counts if p.num_rankings != p.n_rankings]
    dupes = (Ranking.objects.filter(prompt__project=project).values("prompt", "annotator")
             .annotate(n=Count("pk")).filter(n__gt=1).count())
    stored = set(Ranking.objects.filter(pk__in=tally.submitted).values_list("pk", flat=True))
    drafts = dict(Draft.objects.filter(assignment_id__in=list(tally.drafts)).values_list("assignment_id", "revision"))
    lost = [a for a, rev in tally.drafts.items() if drafts.get(a, -1) < rev]
    return {
        "no prompt over-assigned": not over,
        "no duplicate ranking": dupes == 0,
        "every 2xx submit stored": stored == tally.submitted,
        "no draft lost": not lost,
        "queue counts exact": not stale,
    }


def start_gunicorn(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(REPO / "webapp" / "gunicorn.conf.py"), "webapp.wsgi"],
        cwd=REPO, env={**env, "WORKBENCH_BIND": f"127.0.0.1:{port}"}, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            time.sleep(0.3)
    server.kill()
    raise RuntimeError("gunicorn did not listen within 90 s")


def remove_round(*, project_id: int, round_number: int, chunk: int = 500) -> None:
    """Delete a round's prompts (and their rows) in chunks: one DELETE of 150k prompts passes SQLite's limit on
    SQL variables (the import's own clean-up chunks the same way)."""
    from annotate.models import Prompt

    ids = list(Prompt.objects.filter(project_id=project_id, round=round_number).values_list("pk", flat=True))
    for start in range(0, len(ids), chunk):
        Prompt.objects.filter(pk__in=ids[start:start + chunk]).delete()


def worker_main(spec: dict) -> list[dict]:
    """Runs in a child process whose environment names the database (Django is set up once per process)."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)
    t0 = time.monotonic()
    world = setup_world(prompts=spec["prompts"], k=spec["k"], annotators=max(spec["annotators"]),
                        per_prompt=spec["per_prompt"])
    print(f"  [{spec['db']}] {spec['prompts']} prompts × {spec['k']} set up in {time.monotonic() - t0:.1f} s",
          file=sys.stderr, flush=True)
    from django.db import connection

    if connection.vendor == "postgresql":
        # The planner statistics autovacuum gathers on a server that has held the project a while; measured
        # right after the bulk load, autovacuum works through the new rows during the first runs instead.
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    tmp = Path(spec["tmp"])
    import_path = None
    if spec.get("import_records"):
        import_path = tmp / "import.jsonl"
        with import_path.open("w") as out:
            for i in range(spec["import_records"]):
                out.write(json.dumps({"id": f"imp-{i}", "prompt": f"Imported prompt {i}: explain topic {i}.",
                                      "responses": [f"Imported answer {j} to prompt {i}." for j in range(4)]})
                          + "\n")
    results = []
    for mode in spec["modes"]:
        for n in spec["annotators"]:
            reset_work(project_id=world["project"])
            port = free_port()
            log = tmp / f"gunicorn-{mode}-{n}.log"
            server = start_gunicorn(dict(os.environ), port, log)
            try:
                tally, elapsed = asyncio.run(drive(
                    base=f"http://127.0.0.1:{port}", world=world, annotators=n, mode=mode,
                    seconds=spec["seconds"], seed=spec["seed"], skip_rate=spec["skip_rate"],
                    abandon_rate=spec["abandon_rate"], import_path=import_path,
                ))
            finally:
                server.terminate()
                server.wait(timeout=60)
            text = log.read_text(errors="replace")
            result = RunResult(
                db=spec["db"], mode=mode, prompts=spec["prompts"], annotators=n, seconds=elapsed,
                latencies_ms=dict(tally.latencies), submits=len(tally.submitted), errors=len(tally.errors),
                error_samples=tally.errors[:5], checks=check_database(project_id=world["project"], tally=tally),
                server_5xx_in_log=text.count("Internal Server Error") + text.count("Traceback"),
                import_records=spec.get("import_records") or 0, import_seconds=tally.import_seconds,
            )
            print("  " + summary_line(result), file=sys.stderr, flush=True)
            results.append(asdict(result))
            if import_path is not None:  # the next run imports the same file again: remove round 2
                remove_round(project_id=world["project"], round_number=2)
    return results


# --- the parent: one child per (database, P); the table ----------------------------------------------------------


def run_matrix(args) -> list[RunResult]:
    results = []
    for db in args.db:
        for prompts in args.prompts:
            with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
                database_url, dbname = "", ""
                if db == "postgres":
                    dbname = f"bench_load_{os.getpid()}_{prompts}"
                    admin = args.pg_url.rstrip("/") + "/postgres"
                    subprocess.run(["psql", admin, "-qc", f"CREATE DATABASE {dbname}"], check=True)
                    database_url = args.pg_url.rstrip("/") + "/" + dbname
                env = server_env(tmp=Path(tmp), database_url=database_url)
                spec = {"db": db, "prompts": prompts, "k": args.responses, "per_prompt": args.per_prompt,
                        "annotators": args.annotators, "modes": args.mode, "seconds": args.seconds,
                        "seed": args.seed, "skip_rate": args.skip_rate, "abandon_rate": args.abandon_rate,
                        "tmp": tmp, "import_records": args.during_import}
                try:
                    child = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], cwd=REPO, env=env,
                                           stdout=subprocess.PIPE, text=True)
                    if child.returncode != 0:
                        raise RuntimeError(f"benchmark worker for {db}, P={prompts} failed")
                    results += [RunResult(**r) for r in json.loads(child.stdout.strip().splitlines()[-1])]
                finally:
                    if dbname:
                        subprocess.run(["psql", args.pg_url.rstrip("/") + "/postgres", "-qc",
                                        f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)"], check=False)
    return results


def fmt(value: float | None) -> str:
    return "–" if value is None else (f"{value:,.0f}" if value >= 10 else f"{value:.1f}")


def summary_line(r: RunResult) -> str:
    parts = [f"{r.db} {r.mode} P={r.prompts} N={r.annotators}:"]
    if r.import_records:
        parts.append(f"(during an import of {r.import_records:,} records, {r.import_seconds:.0f} s)")
    for e in ENDPOINTS:
        if r.latencies_ms.get(e):
            parts.append(f"{e} {fmt(r.pct(e, .5))}/{fmt(r.pct(e, .95))}/{fmt(r.pct(e, .99))} ms")
    parts.append(f"{r.submits / r.seconds:.1f} submits/s, {r.errors} errors")
    failed = [name for name, ok in r.checks.items() if not ok]
    parts.append("checks OK" if not failed else "CHECKS FAILED: " + ", ".join(failed))
    if r.error_samples:
        parts.append("first errors: " + " | ".join(r.error_samples[:3]))
    return " ".join(parts)


def table(results: list[RunResult]) -> str:
    head = ("| database | load | P | N | " + " | ".join(f"{e} p50 / p95 / p99 (ms)" for e in ENDPOINTS)
            + " | submits/s | errors | DB checks |")
    lines = [head, "|" + "---|" * (4 + len(ENDPOINTS) + 3)]
    for r in results:
        cells = [f"{fmt(r.pct(e, .5))} / {fmt(r.pct(e, .95))} / {fmt(r.pct(e, .99))}" if r.latencies_ms.get(e)
                 else "–" for e in ENDPOINTS]
        failed = [name for name, ok in r.checks.items() if not ok]
        load = r.mode if not r.import_records else f"{r.mode}, importing {r.import_records:,} ({r.import_seconds:.0f} s)"
        lines.append(f"| {r.db} | {load} | {r.prompts:,} | {r.annotators} | " + " | ".join(cells)
                     + f" | {r.submits / r.seconds:.1f} | {r.errors} | {'all hold' if not failed else ', '.join(failed)} |")
    return "\n".join(lines)


def update_results(text: str, command: str, path: Path = RESULTS_FILE, note: str = "") -> None:
    """Replace (or append) only this benchmark's section of bench/RESULTS.md."""
    body = f"{SECTION}\n\n`{command}`\n\n{text}\n" + (f"\n{note}\n" if note else "")
    existing = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    if SECTION in existing:
        before, rest = existing.split(SECTION, 1)
        after = rest.split("\n## ", 1)
        tail = ("\n## " + after[1]) if len(after) == 2 else ""
        new = before + body + tail
    else:
        new = existing.rstrip("\n") + "\n\n" + body
    path.write_text(new, encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", nargs="+", choices=["sqlite", "postgres"], default=["sqlite"])
    parser.add_argument("--pg-url", default="postgres://postgres@127.0.0.1:5432/",
                        help="A PostgreSQL server (no database name): a database of its own is created and dropped.")
    parser.add_argument("--prompts", type=int, nargs="+", default=[3000], help="P, prompts in the project.")
    parser.add_argument("--responses", type=int, default=6, help="K, responses per prompt (default 6).")
    parser.add_argument("--per-prompt", type=int, default=3, help="Rankings each prompt needs (default 3).")
    parser.add_argument("--annotators", type=int, nargs="+", default=[1, 10, 50], help="N, concurrent annotators.")
    parser.add_argument("--mode", nargs="+", choices=["saturation", "paced"], default=["saturation"])
    parser.add_argument("--seconds", type=float, default=15.0, help="Length of each run.")
    parser.add_argument("--skip-rate", type=float, default=0.05)
    parser.add_argument("--abandon-rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--during-import", type=int, default=0, metavar="RECORDS",
                        help="Import a file of this many records (4 short responses each) into the project while the "
                        "annotators work; each run lasts as long as the import.")
    parser.add_argument("--write-results", action="store_true", help="Replace this section of bench/RESULTS.md.")
    parser.add_argument("--note", default="", help="Appended under the table (machine, conditions).")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> list[RunResult]:
    args = build_parser().parse_args(argv)
    if args.worker:
        print(json.dumps(worker_main(json.loads(args.worker))))
        return []
    results = run_matrix(args)
    text = table(results)
    print(text)
    if args.write_results:
        command = "python bench/bench_annotation_load.py " + " ".join(sys.argv[1:] if argv is None else argv)
        update_results(text, command.replace(" --write-results", ""), note=args.note)
    return results


if __name__ == "__main__":
    outcome = main()
    sys.exit(1 if any(r.errors or not all(r.checks.values()) for r in outcome) else 0)
