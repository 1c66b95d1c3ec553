"""gunicorn settings for `make serve` (read by `gunicorn -c webapp/gunicorn.conf.py webapp.wsgi`).

Every value can be overridden from the environment, gunicorn's own way (``GUNICORN_CMD_ARGS="--workers 3"``) or
through the variables below. Defaults fit the machine: ``2 × cores + 1`` worker processes (gunicorn's rule of
thumb) with a few threads each, so requests that wait on the database do not hold a whole process.
Database connections: workers × threads at most (PostgreSQL's default max_connections is 100).
"""

import multiprocessing
import os

bind = os.environ.get("WORKBENCH_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", str(2 * multiprocessing.cpu_count() + 1)))
worker_class = "gthread"
threads = int(os.environ.get("WORKBENCH_THREADS", "4"))
timeout = int(os.environ.get("WORKBENCH_REQUEST_TIMEOUT", "60"))  # seconds before a stuck worker is restarted
graceful_timeout = 30
# Load Django once in the master and fork the workers from it: faster (re)starts, shared memory.
preload_app = True


def post_fork(server, worker):
    """No database connection may cross fork() (SQLite's locks and PostgreSQL's sockets are per process)."""
    from django.db import connections

    connections.close_all()

keepalive = 5
# A worker is replaced after this many requests (plus jitter) to bound slow memory growth.
max_requests = int(os.environ.get("WORKBENCH_MAX_REQUESTS", "2000"))
max_requests_jitter = 200
accesslog = os.environ.get("WORKBENCH_ACCESS_LOG", "-") or None  # "-": stdout; empty: no access log
errorlog = "-"
# Behind a TLS proxy on the same host: trust its X-Forwarded-* headers (with DJANGO_BEHIND_PROXY=1).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
