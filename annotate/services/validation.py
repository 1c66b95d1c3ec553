"""Validation of ranking payloads (submissions and drafts). Pure functions: no database access.

Errors are collected per field and raised together as one ``ValidationError({"field": ["message", …]})``.
Response ids are the primary keys of the Response rows that were displayed; ratings and flags are keyed by
response id (as a string, since JSON object keys are strings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError

from annotate.models import LIKERT_MAX, LIKERT_MIN, RESPONSE_FLAGS
from training.rlhf.data import tier_issues

MAX_RATIONALE_CHARS = 5000
MAX_SECONDS = 24 * 3600.0
DRAFT_KEYS = {"tiers", "ratings", "flags", "rationale", "all_bad", "seconds_spent"}


@dataclass
class CleanPayload:
    tiers: list[list[int]]
    ratings: dict[str, int] = field(default_factory=dict)
    flags: dict[str, list[str]] = field(default_factory=dict)
    rationale: str = ""
    all_bad: bool = False
    seconds_spent: float | None = None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _response_id(key: Any, displayed: set[int]) -> int | None:
    """A response id from a JSON key or value ("17" or 17); None when it is not one of the displayed ones."""
    if isinstance(key, str) and key.strip().lstrip("-").isdigit():
        key = int(key)
    if _is_int(key) and key in displayed:
        return key
    return None


def clean_tiers(tiers: Any, *, display_order: list[int], errors: dict[str, list[str]]) -> list[list[int]]:
    """Tiers must be a partition of exactly the displayed response ids: every one once, no other (the record
    contract's rule, training.rlhf.data.tier_issues; the messages here speak of response ids)."""
    if not isinstance(tiers, list) or not tiers:
        errors.setdefault("tiers", []).append(
            "tiers must be a non-empty list of tiers, best first; each tier is a list of response ids."
        )
        return []
    problems: list[str] = []
    shaped: list[list[Any]] = []  # one entry per tier, so that tier positions stay those of the payload
    for position, tier in enumerate(tiers, start=1):
        if not isinstance(tier, list):
            problems.append(f"tier {position} must be a list of response ids, got {type(tier).__name__}.")
            shaped.append([])
        elif not tier:
            problems.append(f"tier {position} is empty.")
            shaped.append([])
        else:
            shaped.append(tier)
    issues = tier_issues(shaped, display_order)
    for issue in issues:
        position = (issue.tier or 0) + 1
        if issue.kind == "unknown" and not _is_int(issue.item):
            problems.append(f"tier {position} contains {issue.item!r}, which is not a response id (an integer).")
        elif issue.kind == "unknown":
            problems.append(f"response {issue.item} (tier {position}) is not one of the responses shown in this task.")
        elif issue.kind == "repeated":
            problems.append(f"response {issue.item} appears more than once.")
    missing = [issue.item for issue in issues if issue.kind == "missing"]
    if missing and not problems:
        problems.append(
            "every response shown must be ranked; missing: " + ", ".join(str(i) for i in missing) + "."
        )
    if problems:
        errors.setdefault("tiers", []).extend(problems)
        return []  # the caller raises: nothing of a rejected ranking is kept
    return [list(tier) for tier in tiers]


def clean_ratings(ratings: Any, *, display_order: list[int], errors: dict[str, list[str]]) -> dict[str, int]:
    if ratings in (None, ""):
        return {}
    if not isinstance(ratings, dict):
        errors.setdefault("ratings", []).append("ratings must be an object mapping response id to 1–7.")
        return {}
    displayed = set(display_order)
    cleaned: dict[str, int] = {}
    for key, value in ratings.items():
        rid = _response_id(key, displayed)
        if rid is None:
            errors.setdefault("ratings", []).append(f"{key!r} is not one of the responses shown in this task.")
        elif value is None:
            continue
        elif not _is_int(value) or not LIKERT_MIN <= value <= LIKERT_MAX:
            errors.setdefault("ratings", []).append(
                f"the rating of response {rid} must be a whole number from {LIKERT_MIN} to {LIKERT_MAX}, got {value!r}."
            )
        else:
            cleaned[str(rid)] = value
    return cleaned


def clean_flags(flags: Any, *, display_order: list[int], errors: dict[str, list[str]]) -> dict[str, list[str]]:
    if flags in (None, ""):
        return {}
    if not isinstance(flags, dict):
        errors.setdefault("flags", []).append("flags must be an object mapping response id to a list of flag keys.")
        return {}
    displayed = set(display_order)
    cleaned: dict[str, list[str]] = {}
    for key, value in flags.items():
        rid = _response_id(key, displayed)
        if rid is None:
            errors.setdefault("flags", []).append(f"{key!r} is not one of the responses shown in this task.")
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            errors.setdefault("flags", []).append(f"the flags of response {rid} must be a list of flag keys.")
            continue
        unknown = [v for v in value if v not in RESPONSE_FLAGS]
        if unknown:
            errors.setdefault("flags", []).append(
                f"unknown flag {unknown[0]!r} on response {rid}; known flags: {', '.join(RESPONSE_FLAGS)}."
            )
            continue
        kept = [k for k in RESPONSE_FLAGS if k in value]  # canonical order, no duplicates
        if kept:
            cleaned[str(rid)] = kept
    return cleaned


def clean_rationale(rationale: Any, *, errors: dict[str, list[str]]) -> str:
    if rationale is None:
        return ""
    if not isinstance(rationale, str):
        errors.setdefault("rationale", []).append("rationale must be text.")
        return ""
    if len(rationale) > MAX_RATIONALE_CHARS:
        errors.setdefault("rationale", []).append(
            f"rationale is {len(rationale)} characters long; the limit is {MAX_RATIONALE_CHARS}."
        )
    return rationale.strip()


def clean_all_bad(all_bad: Any, *, errors: dict[str, list[str]]) -> bool:
    if all_bad is None:
        return False
    if not isinstance(all_bad, bool):
        errors.setdefault("all_bad", []).append("all_bad must be true or false.")
        return False
    return all_bad


def clean_seconds(seconds: Any, *, errors: dict[str, list[str]]) -> float | None:
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
        errors.setdefault("seconds_spent", []).append("seconds_spent must be a number of seconds, 0 or more.")
        return None
    return min(float(seconds), MAX_SECONDS)


def clean_submission(
    *,
    display_order: list[int],
    tiers: Any,
    ratings: Any = None,
    flags: Any = None,
    rationale: Any = "",
    all_bad: Any = False,
    seconds_spent: Any = None,
) -> CleanPayload:
    """Validate a complete ranking; raises ValidationError naming every bad field."""
    errors: dict[str, list[str]] = {}
    payload = CleanPayload(
        tiers=clean_tiers(tiers, display_order=display_order, errors=errors),
        ratings=clean_ratings(ratings, display_order=display_order, errors=errors),
        flags=clean_flags(flags, display_order=display_order, errors=errors),
        rationale=clean_rationale(rationale, errors=errors),
        all_bad=clean_all_bad(all_bad, errors=errors),
        seconds_spent=clean_seconds(seconds_spent, errors=errors),
    )
    if errors:
        raise ValidationError(errors)
    return payload


def clean_draft_tiers(tiers: Any, *, display_order: list[int], errors: dict[str, list[str]]) -> list[list[int]]:
    """A draft's tiers hold the responses placed so far: the ranking page starts every response unplaced, so a
    draft may leave some out (they are the unplaced ones; ``[]`` when none is placed yet). Otherwise the rules of
    `clean_tiers` hold: no unknown id, none twice, no empty tier."""
    if isinstance(tiers, list) and not tiers:
        return []
    if isinstance(tiers, list) and all(isinstance(t, list) for t in tiers):
        placed = {item for tier in tiers for item in tier if _is_int(item)}
        unplaced = [rid for rid in display_order if rid not in placed]
        if unplaced:  # checked as one more tier at the end, so the positions named in messages stay the payload's
            return clean_tiers([*tiers, unplaced], display_order=display_order, errors=errors)[:-1]
    return clean_tiers(tiers, display_order=display_order, errors=errors)


def clean_draft_state(state: Any, *, display_order: list[int]) -> dict[str, Any]:
    """A draft holds the same fields as a submission, each optional. Unknown keys are refused so a typo in a
    client does not silently lose work."""
    if not isinstance(state, dict):
        raise ValidationError({"state": ["state must be an object."]})
    unknown = sorted(set(state) - DRAFT_KEYS)
    if unknown:
        raise ValidationError({"state": [f"unknown draft field(s): {', '.join(unknown)}; known: {', '.join(sorted(DRAFT_KEYS))}."]})
    errors: dict[str, list[str]] = {}
    clean: dict[str, Any] = {}
    if "tiers" in state and state["tiers"] is not None:
        clean["tiers"] = clean_draft_tiers(state["tiers"], display_order=display_order, errors=errors)
    clean["ratings"] = clean_ratings(state.get("ratings"), display_order=display_order, errors=errors)
    clean["flags"] = clean_flags(state.get("flags"), display_order=display_order, errors=errors)
    raw_rationale = state.get("rationale")
    clean_rationale(raw_rationale, errors=errors)
    clean["rationale"] = raw_rationale if isinstance(raw_rationale, str) else ""  # a draft keeps whitespace
    clean["all_bad"] = clean_all_bad(state.get("all_bad"), errors=errors)
    seconds = clean_seconds(state.get("seconds_spent"), errors=errors)
    clean["seconds_spent"] = seconds or 0.0
    if errors:
        raise ValidationError(errors)
    return clean
