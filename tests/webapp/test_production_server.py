"""With production settings the app serves: `collectstatic` completes (every vendored file's source map is there),
`check --deploy` names a missing manifest, and gunicorn answers the login page, the ranking page, the dashboard
and the hashed static files with 200s — through the same config file `make serve` uses."""

import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SECRET = "prod-test-Kq2!vT9zL#pW4rN7@bY1cF6hJ3mD5sG0aE-uQ_oI+e*lZ&kR^wX%yV~tB"

SETUP = textwrap.dedent(
    """
    from django.contrib.auth import get_user_model
    from annotate.models import Project, Prompt, Response
    from annotate.services.queue import lease_next_task
    user = get_user_model().objects.create_user("lead", password="a-long-test-password-1", is_staff=True)
    project = Project.objects.create(name="Production check")
    project.annotators.add(user)
    prompt = Prompt.objects.create(project=project, text="Describe the cafe.")
    for i in range(4):
        Response.objects.create(prompt=prompt, text=f"Answer {i}")
    print("ASSIGNMENT", lease_next_task(annotator=user, project=project).pk)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Browser:
    """Plain HTTP as a browser behind the TLS proxy would send it (X-Forwarded-Proto: https), cookies by hand
    (they are Secure, so a cookie jar would not send them over the proxy's plain-HTTP hop)."""

    def __init__(self, base: str):
        self.base, self.cookies = base, {}
        self.opener = urllib.request.build_opener(NoRedirect)

    def request(self, path: str, data: dict | None = None) -> tuple[int, str, dict]:
        headers = {"X-Forwarded-Proto": "https", "Referer": self.base.replace("http:", "https:") + path}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.base + path, data=body, headers=headers)
        try:
            resp = self.opener.open(req, timeout=30)
        except urllib.error.HTTPError as exc:
            resp = exc
        for header in resp.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        return resp.status, resp.read().decode("utf-8", "replace"), dict(resp.headers)


@pytest.fixture
def production_env(tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_URL", "WORKBENCH_"))}
    return {
        **base,
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": SECRET,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "DJANGO_BEHIND_PROXY": "1",
        "WORKBENCH_VAR_DIR": str(tmp_path / "var"),
        "DJANGO_STATIC_ROOT": str(tmp_path / "static"),
    }


def manage(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_check_deploy_names_a_missing_static_manifest(production_env):
    result = manage("check", "--deploy", env=production_env)
    assert result.returncode != 0
    assert "webapp.E001" in result.stderr and "collectstatic" in result.stderr


@pytest.mark.slow
def test_gunicorn_serves_the_pages_with_production_settings(production_env, tmp_path):
    env = production_env
    collected = manage("collectstatic", "--noinput", env=env)
    assert collected.returncode == 0, collected.stderr[-3000:]
    assert (tmp_path / "static" / "staticfiles.json").is_file()
    assert manage("check", "--deploy", env=env).returncode == 0
    assert manage("migrate", "--noinput", env=env).returncode == 0
    setup = manage("shell", "--no-imports", "-c", SETUP, env=env)
    assert setup.returncode == 0, setup.stderr[-3000:]
    assignment = int(re.search(r"ASSIGNMENT (\d+)", setup.stdout).group(1))

    port = free_port()
    log = open(tmp_path / "gunicorn.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "webapp/gunicorn.conf.py", "webapp.wsgi"],
        cwd=REPO, env={**env, "WORKBENCH_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "2",
                       "WORKBENCH_THREADS": "2"},
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        browser = Browser(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            try:
                status, page, _ = browser.request("/login/")
                break
            except (ConnectionError, urllib.error.URLError):
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
                time.sleep(0.3)
        assert status == 200 and "csrfmiddlewaretoken" in page
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        status, _, headers = browser.request(
            "/login/", {"username": "lead", "password": "a-long-test-password-1", "csrfmiddlewaretoken": token}
        )
        assert status == 302, (status, headers)
        assert "sessionid" in browser.cookies

        status, rank, _ = browser.request(f"/rank/{assignment}/")
        assert status == 200 and "Describe the cafe." in rank
        status, dashboard, _ = browser.request("/dashboard/")
        assert status == 200
        # the pages name hashed static files from the manifest, and whitenoise serves them
        assets = set(re.findall(r'(?:href|src)="(/static/[^"]+)"', rank + dashboard))
        assert assets and all(re.search(r"\.[0-9a-f]{12}\.", a) for a in assets), assets
        for asset in assets:
            assert browser.request(asset)[0] == 200, asset
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert "Traceback" not in (tmp_path / "gunicorn.log").read_text()
