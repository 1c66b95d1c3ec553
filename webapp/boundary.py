"""The boundary: every text that enters is checked here, once, before any service sees it.

Inputs are refused (4xx naming the field, line or limit; nothing stored) when they hold

- invalid Unicode: a lone surrogate (U+D800–U+DFFF; JSON lets ``"\\ud83d"`` through, UTF-8 cannot encode it,
  so hashing, the database driver or the page renderer would fail later) or a NUL (U+0000: PostgreSQL text
  cannot store it);
- JSON nested deeper than `limits.MAX_JSON_DEPTH` (Python's json module recurses: 50,000 nested lists are a
  RecursionError, caught here and reported as too deep);
- numbers a database cannot store: integers beyond ±(2⁶³−1), NaN and ±Infinity;
- more bytes than the limit of the door they came through (`webapp.limits`).

The doors: `BoundaryJSONParser` (every DRF JSON body), `BoundaryMiddleware` (query strings and form fields of
every request, ids in the URL path), `parse_json` (the JSON the annotator pages post), `check_value` (imported
records, called by the import service for every reader). Data stored before these checks existed may still
hold lone surrogates: `SafeJSONRenderer` and `SurrogateSafeTemplates` replace them with U+FFFD on the way out,
so no page or API answer fails on them and an annotator can always get past such a task.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.backends.django import DjangoTemplates
from django.utils.safestring import SafeString, mark_safe
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer

from webapp import limits

_BAD_CHAR = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


# --- limits (the numbers are in webapp.limits; settings may override them, e.g. in tests) -------------------


def max_upload_bytes() -> int:
    return int(getattr(settings, "WORKBENCH_MAX_UPLOAD_BYTES", limits.MAX_UPLOAD_BYTES))


def max_body_bytes() -> int:
    return int(getattr(settings, "WORKBENCH_MAX_BODY_BYTES", limits.MAX_BODY_BYTES))


def max_record_bytes() -> int:
    return int(getattr(settings, "WORKBENCH_MAX_IMPORT_RECORD_BYTES", limits.MAX_IMPORT_RECORD_BYTES))


def max_json_depth() -> int:
    return int(getattr(settings, "WORKBENCH_MAX_JSON_DEPTH", limits.MAX_JSON_DEPTH))


# --- the checks ------------------------------------------------------------------------------------------------


class BoundaryError(ValueError):
    """One refused input: `field` names where (``state.rationale``, ``records[3].metadata``, ``body``)."""

    def __init__(self, field: str, message: str, *, status: int = 400):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field or "body"
        self.message = message
        self.status = status  # 413 for a body over its size limit

    def as_dict(self) -> dict[str, list[str]]:
        return {self.field: [self.message]}


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored (a NUL or a lone surrogate, with its position), or None."""
    match = _BAD_CHAR.search(text)
    if match is None:
        return None
    char, position = match.group(), match.start() + 1
    if char == "\x00":
        return f"contains a NUL character (U+0000) at character {position}, which cannot be stored."
    return (
        f"contains a lone surrogate (U+{ord(char):04X}) at character {position}: not valid Unicode "
        "(half of a character such as an emoji); send the whole character or remove it."
    )


def too_deep(depth: int | None = None) -> str:
    return f"is nested more than {depth or max_json_depth()} levels deep (the limit, WORKBENCH_MAX_JSON_DEPTH)."


def too_large(size: int, limit: int, setting: str) -> str:
    return f"is {size:,} bytes; the limit is {limit:,} bytes ({setting})."


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def check_value(value: Any, *, field: str = "", max_depth: int | None = None) -> None:
    """Raise BoundaryError for the first string, key or number in `value` that cannot be stored, or for nesting
    deeper than `max_depth`. Iterative: a deep value cannot exhaust the stack."""
    depth_limit = max_depth or max_json_depth()
    stack: list[tuple[Any, str, int]] = [(value, field, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                raise BoundaryError(path, problem)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if abs(item) > limits.MAX_DB_INT:
                raise BoundaryError(path, "is an integer out of range (beyond ±9,223,372,036,854,775,807).")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise BoundaryError(path, "is not a finite number (NaN and Infinity cannot be stored).")
        elif isinstance(item, dict | list | tuple):
            if depth >= depth_limit:
                raise BoundaryError(path, too_deep(depth_limit))
            if isinstance(item, dict):
                for key, child in item.items():
                    if isinstance(key, str):
                        problem = text_problem(key)
                        if problem:
                            raise BoundaryError(_join(path, "<key>"), f"a key {problem}")
                    stack.append((child, _join(path, key), depth + 1))
            else:
                stack.extend((child, _join(path, i), depth + 1) for i, child in enumerate(item))


def json_size(value: Any) -> int:
    """Roughly the UTF-8 JSON size of a value without building the JSON (iterative), for the record limit."""
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item.encode("utf-8", "surrogatepass")) + 2
        elif isinstance(item, dict):
            total += 2 + 2 * len(item)
            for key, child in item.items():
                stack.append(str(key))
                stack.append(child)
        elif isinstance(item, list | tuple):
            total += 2 + len(item)
            stack.extend(item)
        else:
            total += 8
    return total


def record_too_large(limit: int) -> str:
    """The message of a record over the per-record limit (the same for files and the API)."""
    return (
        f"the record is larger than the {limit:,} byte limit for one record "
        "(WORKBENCH_MAX_IMPORT_RECORD_BYTES)"
    )


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_json(data: bytes | str, *, field: str = "", max_bytes: int | None = None, setting: str = "") -> Any:
    """Decode (strict UTF-8), size-check, parse and check a JSON document; raise BoundaryError on any problem."""
    where = field or "body"
    if isinstance(data, bytes):
        if max_bytes is not None and len(data) > max_bytes:
            raise BoundaryError(
                where, too_large(len(data), max_bytes, setting or "WORKBENCH_MAX_BODY_BYTES"), status=413
            )
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BoundaryError(where, f"is not valid UTF-8 (byte {exc.start + 1}).") from None
    elif max_bytes is not None and len(data) > max_bytes:  # characters ≤ bytes: a cheap first bound
        size = len(data.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise BoundaryError(where, too_large(size, max_bytes, setting or "WORKBENCH_MAX_BODY_BYTES"), status=413)
    data = data.removeprefix("\ufeff")
    try:
        value = json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        raise BoundaryError(where, too_deep()) from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, integers of more than 4300 digits
        raise BoundaryError(where, f"is not valid JSON: {exc}.") from None
    check_value(value, field=field)
    return value


def read_json_body(request: HttpRequest, *, max_bytes: int | None = None) -> Any:
    """The JSON body of a plain Django view (the annotator pages' fetch calls), checked like the API's."""
    limit = max_bytes or max_body_bytes()
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        raise BoundaryError("body", too_large(declared, limit, "WORKBENCH_MAX_BODY_BYTES"), status=413)
    return parse_json(request.body or b"", max_bytes=limit)


def parse_id(value: Any) -> int | None:
    """A database id from a query-string value ('17'), or None when it is not one (not digits, out of range)."""
    text = str(value).strip()
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        return None
    number = int(text)
    return number if number <= limits.MAX_DB_INT else None


# --- output: stored text that cannot be encoded ---------------------------------------------------------------


def scrub_text(text: str) -> str:
    """Lone surrogates → U+FFFD (a Python str never holds a valid pair as two code points)."""
    return _SURROGATE.sub(REPLACEMENT, text) if _SURROGATE.search(text) else text


def scrub(value: Any) -> Any:
    """`value` with every lone surrogate in its strings and keys replaced by U+FFFD (a copy; iterative)."""
    if isinstance(value, str):
        return scrub_text(value)
    if not isinstance(value, dict | list | tuple):
        return value
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(value, root, 0)]
    while stack:
        item, parent, key = stack.pop()
        if isinstance(item, str):
            parent[key] = scrub_text(item)
        elif isinstance(item, dict):
            copy: dict = {}
            parent[key] = copy
            for k, child in item.items():
                k = scrub_text(k) if isinstance(k, str) else k
                copy[k] = None
                stack.append((child, copy, k))
        elif isinstance(item, list | tuple):
            copy_list: list = [None] * len(item)
            parent[key] = copy_list
            stack.extend((child, copy_list, i) for i, child in enumerate(item))
        else:
            parent[key] = item
    return root[0]


class SafeJSONRenderer(JSONRenderer):
    """DRF's JSON renderer, except that stored lone surrogates come out as U+FFFD instead of a 500."""

    def render(self, data, accepted_media_type=None, renderer_context=None):
        try:
            return super().render(data, accepted_media_type, renderer_context)
        except UnicodeEncodeError:
            return super().render(scrub(data), accepted_media_type, renderer_context)


class _SafeTemplate:
    def __init__(self, template):
        self._template = template
        self.origin = template.origin
        self.template = getattr(template, "template", None)

    def render(self, context=None, request=None):
        html = self._template.render(context, request)
        clean = scrub_text(html)
        if clean is html:
            return html
        return mark_safe(clean) if isinstance(html, SafeString) else clean  # noqa: S308 - html was safe


class SurrogateSafeTemplates(DjangoTemplates):
    """The Django template backend whose output never holds a lone surrogate (U+FFFD instead), so a page that
    shows stored text (the ranking page, the admin) can always be encoded."""

    def from_string(self, template_code):
        return _SafeTemplate(super().from_string(template_code))

    def get_template(self, template_name):
        return _SafeTemplate(super().get_template(template_name))


# --- the doors -------------------------------------------------------------------------------------------------


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "too_large"


class BoundaryJSONParser(JSONParser):
    """DRF's JSON parser with the boundary's checks: strict UTF-8, the body size limit (413), nesting depth
    without RecursionError, no lone surrogates / NUL / unstorable numbers (400 naming the field), and a JSON
    object at the top (every operation takes named fields; a bare list or `false` is a 400, not a crash)."""

    setting = "WORKBENCH_MAX_BODY_BYTES"

    def limit(self) -> int:
        return max_body_bytes()

    def parse(self, stream, media_type=None, parser_context=None):
        limit = self.limit()
        request = (parser_context or {}).get("request")
        try:
            declared = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        except ValueError:
            declared = 0
        if declared > limit:
            raise PayloadTooLarge({"body": [f"The request body {too_large(declared, limit, self.setting)}"]})
        data = stream.read(limit + 1) if stream is not None else b""
        if len(data) > limit:
            raise PayloadTooLarge({"body": [f"The request body is over the limit of {limit:,} bytes ({self.setting})."]})
        try:
            value = parse_json(data)
        except BoundaryError as exc:
            raise ParseError(exc.as_dict()) from None
        if not isinstance(value, dict):  # every operation of this API takes an object of named fields
            raise ParseError({"body": [f"must be a JSON object of named fields, got {type(value).__name__}."]})
        return value


class UploadJSONParser(BoundaryJSONParser):
    """For the import endpoint: the upload limit instead of the body limit."""

    setting = "WORKBENCH_MAX_UPLOAD_BYTES"

    def limit(self) -> int:
        return max_upload_bytes()


def _query_problem(params) -> BoundaryError | None:
    for key, values in params.lists():
        problem = text_problem(key)
        if problem:
            return BoundaryError("<parameter name>", problem)
        if len(key) > limits.MAX_QUERY_VALUE_CHARS:
            return BoundaryError("<parameter name>", f"is longer than {limits.MAX_QUERY_VALUE_CHARS} characters.")
        for value in values:
            if not isinstance(value, str):
                continue
            problem = text_problem(value)
            if problem:
                return BoundaryError(key, problem)
            if len(value) > limits.MAX_QUERY_VALUE_CHARS:
                return BoundaryError(key, f"is {len(value):,} characters; the limit is {limits.MAX_QUERY_VALUE_CHARS:,}.")
    return None


_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class BoundaryMiddleware:
    """Query strings (every request) and form fields (form posts) are checked before any view runs: a NUL, a
    lone surrogate or an over-long query value is a 400 naming the parameter. An id in the URL path beyond the
    databases' integer range is a 404 (it names nothing) instead of an overflow in the database driver.
    Place it after CsrfViewMiddleware (a refused form post has passed the CSRF check)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view_func, view_args, view_kwargs):
        for value in view_kwargs.values():
            if isinstance(value, int) and abs(value) > limits.MAX_DB_INT:
                return self._refuse(request, BoundaryError("path", "names no object (the id is out of range)."), 404)
        problem = _query_problem(request.GET)
        where = "query string"
        if problem is None and request.method == "POST" and request.content_type in _FORM_TYPES:
            problem = _form_problem(request)
            where = "form"
        if problem is not None:
            return self._refuse(request, problem, 400, where=where)
        return None

    @staticmethod
    def _refuse(request: HttpRequest, problem: BoundaryError, status_code: int, *, where: str = "") -> HttpResponse:
        if request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", ""):
            return JsonResponse(problem.as_dict(), status=status_code)
        label = f"{where} field '{problem.field}'" if where else problem.field
        return HttpResponse(
            f"Refused: the {label} {problem.message}", status=status_code, content_type="text/plain; charset=utf-8"
        )


def _form_problem(request: HttpRequest) -> BoundaryError | None:
    for key, values in request.POST.lists():
        problem = text_problem(key)
        if problem:
            return BoundaryError("<field name>", problem)
        for value in values:
            problem = text_problem(value)
            if problem:
                return BoundaryError(key, problem)
    return None
