"""The input limits, in one place: the web pages, the API and the commands all enforce these numbers.

Plain constants read from the environment (no Django imports: settings.py imports this module). The checks
that apply them live in `webapp.boundary`.
"""

from __future__ import annotations

import os


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


MiB = 1024 * 1024

# A whole upload or import request (web upload form, POST /api/data/import/). Larger files: the command.
MAX_UPLOAD_BYTES = _env_int("WORKBENCH_MAX_UPLOAD_BYTES", 50 * MiB)
# Any other request body (drafts, submissions, skips, launches…).
MAX_BODY_BYTES = _env_int("WORKBENCH_MAX_BODY_BYTES", 2 * MiB)
# One imported record (a JSONL line, a CSV row, a Parquet row, one element of the API's `records`).
MAX_IMPORT_RECORD_BYTES = _env_int("WORKBENCH_MAX_IMPORT_RECORD_BYTES", 1 * MiB)
# Nesting of JSON values (objects and arrays): a ranking needs 3, a draft body 4; metadata rarely more than 5.
MAX_JSON_DEPTH = _env_int("WORKBENCH_MAX_JSON_DEPTH", 32)
# One query-string value (and key).
MAX_QUERY_VALUE_CHARS = 1000
# Integers the databases store (SQLite INTEGER, PostgreSQL bigint); ids beyond it name nothing.
MAX_DB_INT = 2**63 - 1
