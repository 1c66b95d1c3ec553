"""Small formatting filters for the dashboard templates."""

from __future__ import annotations

import json
import math
from datetime import timedelta

from django import template

register = template.Library()


@register.filter
def duration(value: timedelta | None) -> str:
    """A timedelta as "2h 05m", "3m 07s" or "12s"; "–" when missing."""
    if value is None:
        return "–"
    seconds = int(value.total_seconds())
    if seconds < 0:
        return "–"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


@register.filter
def seconds_left(value: float | None) -> str:
    """Seconds (an ETA) as `duration` writes them."""
    if value is None:
        return "–"
    return duration(timedelta(seconds=round(float(value))))


@register.filter
def num(value, digits: int = 4) -> str:
    """A number with `digits` significant digits (ints as they are); other values unchanged."""
    if isinstance(value, bool) or value is None:
        return "–" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        return f"{value:.{int(digits)}g}"
    return str(value)


@register.filter
def pct(value, digits: int = 1) -> str:
    """0.7312 → "73.1 %"; "–" when missing."""
    if value is None or isinstance(value, bool):
        return "–"
    try:
        return f"{100 * float(value):.{int(digits)}f} %"
    except (TypeError, ValueError):
        return str(value)


@register.filter
def as_json(value) -> str:
    """Compact JSON of a config value (lists, dicts, strings shown as in config.json)."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


@register.filter
def signed(value) -> str:
    if value is None:
        return "–"
    return ("+" if value > 0 else "") + num(value)


@register.filter
def agreement_interval(counts: dict | None) -> str:
    """Pairwise agreement agree / (agree + disagree) with its n and a Wilson 95 % interval, or "too few"."""
    from training.intervals import proportion_text

    counts = counts or {}
    n = int(counts.get("agree") or 0) + int(counts.get("disagree") or 0)
    return proportion_text(counts.get("agree", 0) / n if n else None, n if n else None) if n else "too few (n = 0)"


@register.filter
def pair_interval(counts: dict | None) -> str:
    """The same agreement's Wilson 95 % interval in percent and its n ('16.3–56.3 %, n = 18') or "too few", for
    a column beside the agreement itself."""
    from training.intervals import percent_interval_text

    counts = counts or {}
    n = int(counts.get("agree") or 0) + int(counts.get("disagree") or 0)
    if not n:
        return "too few (n = 0)"
    text = percent_interval_text(counts.get("agree", 0) / n, n)
    return text if text.startswith("too few") else f"{text}, n = {n}"


@register.filter
def share(p, n) -> str:
    """A proportion in percent with its Wilson 95 % interval and n ('73.1 % [60.2–83.4 %], n = 42'), or
    '42.9 %, too few (n = 3)' under the minimum; '–' when unknown."""
    from training.intervals import MIN_PAIRS, percent_interval_text

    if p is None or isinstance(p, bool) or n is None:
        return "–"
    n = int(n)
    if n < MIN_PAIRS:
        return f"{pct(p)}, too few (n = {n})"
    return f"{pct(p)} [{percent_interval_text(float(p), n)}], n = {n}"


@register.filter
def tau_text(stats: dict | None) -> str:
    """A mean Kendall tau-b ("tau_b" or "mean_tau_b" of `stats`) with its t interval and n, or 'too few'."""
    from training.intervals import mean_text

    stats = stats or {}
    mean = stats.get("tau_b", stats.get("mean_tau_b"))
    return mean_text(mean, stats.get("tau_b_sd"), stats.get("tau_b_n")) if mean is not None else "–"


@register.filter
def ties_share(counts: dict | None) -> str:
    """Agreement including ties, (agree + both tied) / every shared pair, with its n and interval (`share`)."""
    counts = counts or {}
    n = sum(int(counts.get(key) or 0) for key in ("agree", "disagree", "one_tied", "both_tied"))
    return share(counts.get("agreement_with_ties"), n) if n else "too few (n = 0)"


@register.filter
def accuracy_share(result: dict | None) -> str:
    """`share` of a result dict's "accuracy" over its "pairs" (an RM check's, or one of its rounds'); "–" for a
    result not written yet (a queued check has none, and a missing filter argument would be an error)."""
    result = result if isinstance(result, dict) else {}
    return share(result.get("accuracy"), result.get("pairs"))
