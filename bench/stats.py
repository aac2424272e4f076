"""Order statistics for latency samples: percentiles, medians, and a summary dict for reports."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence


def percentile(samples: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation between closest ranks; NaN when empty."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are present; None when there are none."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summary(samples: Sequence[float]) -> dict[str, float | int]:
    """Count, p50, p90, p99 and max of the samples (in their own unit)."""
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "max": ordered[-1] if ordered else float("nan"),
    }
