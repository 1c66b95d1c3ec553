"""The database went away: answer 503 with Retry-After instead of a 500.

While PostgreSQL restarts (or a SQLite writer holds the lock past the timeout), every query raises
`django.db.OperationalError` or `InterfaceError`. Those are not bugs of the request, so the client is told to
come back: a JSON body for the API, htmx requests (the ranking page shows its `detail` next to the button; htmx
swaps nothing on a 503, so the task stays as it was) and anything that asks for JSON; a small page otherwise;
all without touching the database. Django closes the broken connection when the request ends (`close_old_connections`), so the first
request after the server is back reconnects and works. Writes are in transactions, so a request cut off by the
outage stored nothing: the retry stores it once.

Two ways a database error reaches us: raised in a view (`process_exception`), or raised in another middleware
or while a response is finalised (the session, `request.user`), which Django turns into a 500 on the spot; for
those, the `got_request_exception` signal marks the request and the outermost `__call__` swaps the 500 for a
503. Keep this middleware first in MIDDLEWARE.
"""

from __future__ import annotations

import logging
import sys

from django.conf import settings
from django.core.signals import got_request_exception
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string

logger = logging.getLogger(__name__)

MESSAGE = "The database is unavailable right now; nothing was saved by this request. Try again in a few seconds."
_MARK = "_workbench_database_unavailable"
# SQLite reports schema mistakes as OperationalError too: those are bugs, not outages (they stay 500s).
_NOT_AN_OUTAGE = ("no such table", "no such column", "has no column", "syntax error")


def is_database_outage(exc: BaseException | None) -> bool:
    """True for errors that mean "the database cannot be reached or used right now" (connection refused or
    lost, server shutting down, SQLite locked), false for a broken query."""
    if not isinstance(exc, OperationalError | InterfaceError):
        return False
    text = str(exc).lower()
    return not any(marker in text for marker in _NOT_AN_OUTAGE)


def retry_after_seconds() -> int:
    return int(getattr(settings, "DATABASE_UNAVAILABLE_RETRY_AFTER", 5))


def _wants_json(request: HttpRequest) -> bool:
    return (
        request.path.startswith("/api/")
        or "application/json" in request.headers.get("Accept", "")
        or request.headers.get("HX-Request") == "true"
        or request.content_type == "application/json"
    )


def unavailable_response(request: HttpRequest) -> HttpResponse:
    """503 + Retry-After; rendered without the database (no context processors, no session)."""
    seconds = retry_after_seconds()
    if _wants_json(request):
        response: HttpResponse = JsonResponse(
            {"detail": MESSAGE, "code": "database_unavailable", "retry_after": seconds}, status=503
        )
    else:
        context = {"message": MESSAGE, "retry_after": seconds}
        response = HttpResponse(render_to_string("503.html", context), status=503)
    response["Retry-After"] = str(seconds)
    response["Cache-Control"] = "no-store"
    return response


def _mark_request(sender, request: HttpRequest | None = None, **kwargs) -> None:
    if request is not None and is_database_outage(sys.exc_info()[1]):
        setattr(request, _MARK, True)


got_request_exception.connect(_mark_request, dispatch_uid="webapp.middleware.database_unavailable")


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.status_code == 500 and getattr(request, _MARK, False):
            return unavailable_response(request)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_database_outage(exception):
            return None
        logger.warning("database unavailable during %s %s: %s", request.method, request.path, exception)
        return unavailable_response(request)
