"""Statistics shared by the benchmarks (one definition of a percentile)."""

from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    """The value at rank round(q * (n - 1)) of the sorted values; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]
