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


MIN_VALUES = 5  # below this, a mean (tau-b over rankings or annotator pairs) is marked "too few"

# Student's t 97.5 % quantiles for 1..30 degrees of freedom (Student 1908; any t table, e.g. NIST/SEMATECH
# e-Handbook 1.3.6.7.2); beyond 30 the Cornish-Fisher expansion below is within 1e-3 of the exact value.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with `df` degrees of freedom: the table up to 30, then the
    Cornish-Fisher expansion z + (z³ + z)/4ν + (5z⁵ + 16z³ + 3z)/96ν² (Abramowitz & Stegun 26.7.5)."""
    if df < 1:
        raise ValueError("t needs at least one degree of freedom")
    if df <= len(T975):
        return T975[df - 1]
    z = Z95
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df * df)


def mean_interval(mean: float, sd: float, n: int) -> tuple[float, float]:
    """95 % t interval of a mean from n values with sample standard deviation sd: mean ± t₀.₉₇₅,ₙ₋₁ · sd/√n."""
    half = t975(n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def mean_text(mean: float | None, sd: float | None, n: int | None, *, minimum: int = MIN_VALUES,
              bounds: tuple[float, float] = (-1.0, 1.0)) -> str:
    """'0.412 [0.20, 0.62], n = 12' (clipped to `bounds`: a tau-b lies in [−1, 1]), or 'too few (n = 3)'."""
    if mean is None or n is None:
        return "–"
    if n < minimum or sd is None:
        return f"{mean:.3f}, too few (n = {n})"
    low, high = mean_interval(mean, sd, n)
    low, high = max(bounds[0], low), min(bounds[1], high)
    return f"{mean:.3f} [{low:.2f}, {high:.2f}], n = {n}"
