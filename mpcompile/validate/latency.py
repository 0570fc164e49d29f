"""Latency measurement: warm-up runs excluded, N timed runs, percentiles and throughput."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np

from mpcompile.validate.jsonable import jsonable_float


@dataclasses.dataclass
class LatencyStats:
    """Summary of ``runs`` timed runs (milliseconds) after ``warmup`` untimed ones."""

    runs: int
    warmup: int
    mean_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput_per_s: float  # inferences per second, from the mean

    @classmethod
    def from_times(cls, times_s: Sequence[float], warmup: int) -> LatencyStats:
        if not times_s:
            raise ValueError("no timed runs")
        ms = np.asarray(times_s, dtype=np.float64) * 1e3
        p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
        mean = float(ms.mean())
        return cls(
            runs=len(ms),
            warmup=warmup,
            mean_ms=mean,
            min_ms=float(ms.min()),
            max_ms=float(ms.max()),
            p50_ms=p50,
            p90_ms=p90,
            p99_ms=p99,
            throughput_per_s=1e3 / mean if mean > 0 else float("inf"),
        )

    def to_dict(self) -> dict:
        return {
            k: jsonable_float(v) if isinstance(v, float) else v for k, v in dataclasses.asdict(self).items()
        }


def measure(run_once: Callable[[], object], *, runs: int, warmup: int) -> LatencyStats:
    """Call ``run_once`` ``warmup`` times untimed, then ``runs`` times timed."""
    if runs < 1:
        raise ValueError("runs must be at least 1")
    for _ in range(warmup):
        run_once()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - start)
    return LatencyStats.from_times(times, warmup)


def speedup(original: LatencyStats | None, converted: LatencyStats | None) -> float | None:
    """Original p50 over converted p50 (> 1: the converted model is faster)."""
    if original is None or converted is None or converted.p50_ms <= 0:
        return None
    return original.p50_ms / converted.p50_ms
