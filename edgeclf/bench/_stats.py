"""Latency statistics of timed calls: percentiles, mean, throughput.

Percentiles use linear interpolation between the two nearest order statistics
(Hyndman & Fan type 7, numpy's default ``method="linear"``): for sorted samples
``x[0..n-1]`` the q-th percentile is at position ``(n - 1) * q / 100``. With fewer
than 100 rounds the p99 lies between the two slowest calls, so read it as "about the
worst case"; ask for more rounds when the tail matters.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Latency", "percentile"]

#: Decimal places kept for milliseconds in results (0.1 microsecond).
MS_DECIMALS = 4


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` by linear interpolation (see the module docstring).

    Raises:
        ValueError: ``values`` is empty or ``q`` is outside 0..100.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class Latency(BaseModel):
    """Milliseconds per call (one call runs one batch) over the timed rounds."""

    model_config = ConfigDict(extra="ignore")  # forward compatible within a schema major version

    rounds: int = Field(gt=0, description="Timed calls (after the warm-up).")
    min_ms: float
    mean_ms: float
    stdev_ms: float = Field(description="Sample standard deviation; 0 for a single round.")
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def from_seconds(cls, seconds: Sequence[float]) -> Latency:
        """Statistics of per-call durations given in seconds.

        Raises:
            ValueError: No durations.
        """
        if not seconds:
            raise ValueError("no timed rounds")
        ms = [s * 1000.0 for s in seconds]
        r = lambda v: round(v, MS_DECIMALS)  # noqa: E731
        return cls(
            rounds=len(ms),
            min_ms=r(min(ms)),
            mean_ms=r(statistics.fmean(ms)),
            stdev_ms=r(statistics.stdev(ms)) if len(ms) > 1 else 0.0,
            p50_ms=r(percentile(ms, 50)),
            p90_ms=r(percentile(ms, 90)),
            p95_ms=r(percentile(ms, 95)),
            p99_ms=r(percentile(ms, 99)),
            max_ms=r(max(ms)),
        )

    def images_per_s(self, batch: int) -> float:
        """Throughput: images over the total time of the timed calls (batch / mean)."""
        return round(batch * 1000.0 / max(self.mean_ms, 10.0**-MS_DECIMALS), 2)
