"""Time buckets and percentiles for the dashboards' charts (pure functions, no I/O)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["STEPS", "bucket_width", "bucketed", "floor_to", "percentile"]

# Bucket widths in seconds, smallest first: a chart has at most about 60 buckets.
STEPS = (1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)


def bucket_width(first: float, last: float, *, buckets: int = 60) -> int:
    """The smallest of :data:`STEPS` that covers ``first``..``last`` in ``buckets`` buckets."""
    span = max(0.0, last - first)
    for step in STEPS:
        if span / step <= buckets:
            return step
    return STEPS[-1] * max(1, math.ceil(span / (STEPS[-1] * buckets)))


def percentile(values: Sequence[float], share: float) -> float | None:
    """The ``share`` (0..1) percentile of ``values`` by the nearest-rank method; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def floor_to(ts: float, width: int) -> int:
    return int(ts // width) * width


def bucketed(points: Iterable[tuple[float, float]], width: int) -> dict[int, list[float]]:
    """``(ts, value)`` pairs grouped by their bucket's start (seconds)."""
    out: dict[int, list[float]] = {}
    for ts, value in points:
        out.setdefault(floor_to(ts, width), []).append(value)
    return out
