# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when it is missing and
# (re)install the project only when pyproject.toml changed, so a second run starts in seconds.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test install lint screenshots clean serve bench-load

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# torch is pinned exactly (torch==2.13.0): the CPU wheel here, the CUDA build on GPU hosts.
	$(PY) -m pip install -q -e '.[dev]'
	@if [ -z "$$WORKBENCH_ALLOW_CUDA" ] && ! command -v nvidia-smi >/dev/null && $(PY) -m pip list 2>/dev/null | grep -qi '^nvidia-'; then \
	  echo "CUDA packages were installed on a machine without a GPU; remove .venv and check the torch pin." >&2; exit 1; fi
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) manage.py demo $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) manage.py makemigrations --check --dry-run

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

# The app for a team, with production settings (DJANGO_DEBUG=0; DJANGO_SECRET_KEY and DJANGO_ALLOWED_HOSTS must be
# set, DATABASE_URL for PostgreSQL): static files collected, migrations applied, gunicorn with
# 2 x cores + 1 workers x 4 threads on WORKBENCH_BIND (127.0.0.1:8000); put a TLS proxy in front (README).
serve: $(STAMP)
	DJANGO_DEBUG=$${DJANGO_DEBUG:-0} $(PY) manage.py collectstatic --noinput -v 0
	DJANGO_DEBUG=$${DJANGO_DEBUG:-0} $(PY) manage.py migrate --noinput
	DJANGO_DEBUG=$${DJANGO_DEBUG:-0} $(PY) manage.py check --deploy
	DJANGO_DEBUG=$${DJANGO_DEBUG:-0} exec $(VENV)/bin/gunicorn -c webapp/gunicorn.conf.py webapp.wsgi

# The annotation load benchmark (bench/bench_annotation_load.py --help); BENCH_ARGS="--db postgres --annotators 50".
bench-load: $(STAMP)
	$(PY) bench/bench_annotation_load.py $(BENCH_ARGS)

# The README's screenshots, from a real Chromium run over a demo database of its own (var/screenshots).
screenshots: $(STAMP)
	$(PY) docs/screenshots.py $(SCREENSHOT_ARGS)

clean:
	rm -rf var/test-cache .pytest_cache
