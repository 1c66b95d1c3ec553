"""Intervals shown beside the dashboard's statistics: every proportion with its sample size and a 95 % interval,
or a "too few" mark below a minimum sample size."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile
MIN_PAIRS = 10  # below this, a proportion is marked "too few" instead of given an interval


def wilson_interval(successes: float, n: float, *, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion (Wilson 1927, JASA 22:209; Brown, Cai & DasGupta 2001
    recommend it over the Wald interval for small n): centre (p + z²/2n)/(1 + z²/n), half-width
    z/(1 + z²/n)·√(p(1 − p)/n + z²/4n²). None when n is 0."""
    if n <= 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if successes <= 0 else max(0.0, centre - half)  # exact at the ends (rounding aside)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return low, high


def _unknown_or_too_few(p: float | None, n: int | None, minimum: int) -> str | None:
    """'–' for an unknown figure, 'too few (n = 3)' below `minimum`, else None (an interval can be given)."""
    if p is None or n is None:
        return "–"
    return f"too few (n = {n})" if n < minimum else None


def proportion_text(p: float | None, n: int | None, *, minimum: int = MIN_PAIRS) -> str:
    """'0.80 [0.49, 0.94], n = 10', or 'too few (n = 3)' below `minimum`."""
    if (mark := _unknown_or_too_few(p, n, minimum)) is not None:
        return mark
    low, high = wilson_interval(p * n, n)
    return f"{p:.2f} [{low:.2f}, {high:.2f}], n = {n}"


def percent_interval_text(p: float | None, n: int | None, *, minimum: int = MIN_PAIRS) -> str:
    """The Wilson 95 % interval in percent ('59.3–72.4 %'), or 'too few (n = 3)' below `minimum`."""
    if (mark := _unknown_or_too_few(p, n, minimum)) is not None:
        return mark
    low, high = wilson_interval(p * n, n)
    return f"{100 * low:.1f}–{100 * high:.1f} %"
