"""Settings come from the environment; production settings pass `check --deploy` with nothing to report."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env={**base, **env}, capture_output=True, text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    # collectstatic has run (webapp.E001 otherwise: tests/webapp/test_production_server.py)
    (tmp_path / "staticfiles").mkdir()
    (tmp_path / "staticfiles" / "staticfiles.json").write_text("{}")
    result = _manage(
        "check", "--deploy", "--fail-level", "DEBUG",
        env={
            "DJANGO_DEBUG": "0",
            "DJANGO_SECRET_KEY": "x8$Kq2!vT9zL#pW4rN7@bY1cF6hJ3mD5sG0aE-uQ_oI+e*lZ&kR^wX%yV~tB",
            "DJANGO_ALLOWED_HOSTS": "rlhf.example.org",
            "WORKBENCH_VAR_DIR": str(tmp_path),
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_production_without_secret_key_refuses_to_start(tmp_path):
    result = _manage("check", env={"DJANGO_DEBUG": "0", "WORKBENCH_VAR_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


def test_database_url_selects_postgresql(tmp_path):
    code = (
        "from django.conf import settings; d = settings.DATABASES['default'];"
        "print(d['ENGINE'], d['NAME'], d['HOST'], d['PORT'])"
    )
    env = {"DATABASE_URL": "postgres://someone@db.internal:5433/workbench", "WORKBENCH_VAR_DIR": str(tmp_path)}
    result = _manage("shell", "--no-imports", "-c", code, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["django.db.backends.postgresql", "workbench", "db.internal", "5433"]


def test_sqlite_default_is_wal_with_immediate_transactions(tmp_path):
    code = (
        "from django.db import connection; c = connection.cursor();"
        "c.execute('PRAGMA journal_mode'); print(c.fetchone()[0]);"
        "c.execute('PRAGMA busy_timeout'); print(c.fetchone()[0]);"
        "print(connection.settings_dict['OPTIONS']['transaction_mode'])"
    )
    result = _manage("shell", "--no-imports", "-c", code, env={"WORKBENCH_VAR_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["wal", "30000", "IMMEDIATE"]
