"""Latency: warm-up runs excluded, run counts right, percentiles ordered."""

from __future__ import annotations

import time

import numpy as np
import pytest
from test_validate_models import mlp_fp32

from mpcompile.validate import latency
from mpcompile.validate.runners import CPU, OrtRunner


class _CountingRun:
    """Slow for the first ``slow_calls`` calls, then fast; counts calls."""

    def __init__(self, slow_calls: int, slow_s: float = 0.05):
        self.calls, self.slow_calls, self.slow_s = 0, slow_calls, slow_s

    def __call__(self):
        self.calls += 1
        if self.calls <= self.slow_calls:
            time.sleep(self.slow_s)


def test_warmup_is_excluded_and_counts_are_right():
    run = _CountingRun(slow_calls=3)
    stats = latency.measure(run, runs=7, warmup=3)
    assert run.calls == 10
    assert stats.runs == 7 and stats.warmup == 3
    assert stats.max_ms < 50  # none of the slow warm-up calls was timed


def test_statistics_from_known_times():
    times = [0.001 * t for t in range(1, 101)]  # 1..100 ms
    stats = latency.LatencyStats.from_times(times, warmup=0)
    assert stats.p50_ms == pytest.approx(np.percentile(np.arange(1, 101), 50))
    assert stats.p90_ms == pytest.approx(np.percentile(np.arange(1, 101), 90))
    assert stats.p99_ms == pytest.approx(np.percentile(np.arange(1, 101), 99))
    assert (
        stats.mean_ms == pytest.approx(50.5)
        and stats.min_ms == pytest.approx(1)
        and stats.max_ms == pytest.approx(100)
    )
    assert stats.throughput_per_s == pytest.approx(1000 / 50.5)
    fast = latency.LatencyStats.from_times([0.001] * 3, 0)
    slow = latency.LatencyStats.from_times([0.004] * 3, 0)
    assert latency.speedup(slow, fast) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        latency.measure(lambda: None, runs=0, warmup=0)


def test_percentiles_ordered_on_a_real_model():
    pytest.importorskip("onnxruntime", reason="onnxruntime is needed to time a model")
    runner = OrtRunner("mlp", mlp_fp32().SerializeToString(), CPU)
    runner.activate()
    feeds = {"x": np.ones((4, 16), np.float32)}
    stats = latency.measure(runner.timer(feeds), runs=25, warmup=2)
    assert stats.runs == 25
    assert 0 < stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
    assert stats.throughput_per_s > 0
