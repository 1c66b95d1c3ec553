"""Several writers at once on the embedded SQLite database: no "database is locked" errors.

Annotators submitting while a training worker writes metrics is the everyday case. With WAL, BEGIN IMMEDIATE
and a busy timeout (webapp/settings.py), concurrent transactions queue instead of failing. A deferred
transaction that reads first and then writes cannot wait for the lock and fails at once — the failure mode
these settings exist to prevent.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent(
    """
    import os, sys, django
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    django.setup()
    from django.db import transaction
    from training.models import Metric, TrainingRun
    run_id, worker = int(sys.argv[1]), int(sys.argv[2])
    run = TrainingRun.objects.get(pk=run_id)
    for step in range(60):
        with transaction.atomic():
            # read-then-write inside one transaction: the pattern that breaks deferred transactions
            n = Metric.objects.filter(run=run).count()
            Metric.objects.create(run=run, step=worker * 1000 + step, name="w", value=n)
    print("ok")
    """
)


@pytest.mark.slow
def test_concurrent_writer_processes_do_not_hit_database_is_locked(tmp_path):
    if os.environ.get("DATABASE_URL"):
        pytest.skip("SQLite-only check; the PostgreSQL pass has its own concurrency tests")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["WORKBENCH_VAR_DIR"] = str(tmp_path)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=REPO, env=env, check=True, timeout=300)
    create = "from training.models import TrainingRun; print(TrainingRun.objects.create(kind='rm').pk)"
    run_id = subprocess.run(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", create], cwd=REPO, env=env, check=True, capture_output=True,
        text=True, timeout=120,
    ).stdout.strip()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env["PYTHONPATH"] = str(REPO)
    procs = [
        subprocess.Popen([sys.executable, str(script), run_id, str(i)], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "database is locked" not in err
    count = "from training.models import Metric; print(Metric.objects.count())"
    total = subprocess.run(
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", count], cwd=REPO, env=env, check=True, capture_output=True,
        text=True, timeout=120,
    ).stdout.strip()
    assert total == str(4 * 60)
