"""Range measurement of constants against FP16/BF16, checked against numpy's own rounding."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from mpcompile.core.precision import BF16, FP16
from mpcompile.core.ranges import _measure_array


def test_fp16_counts_match_numpy_rounding():
    values = np.array(
        [0, 1e-9, 3e-8, 1e-6, 1e-3, 7e4, -1e5, np.inf, np.nan, 65519, 65520, -65504], np.float32
    )
    measured = _measure_array(values, FP16)
    with np.errstate(over="ignore"):
        rounded = values.astype(np.float16)
    finite = np.isfinite(values)
    assert measured.overflowing == int(np.count_nonzero(finite & np.isinf(rounded))) == 3
    assert measured.overflowing_positive == 2
    assert measured.flushed_to_zero == int(np.count_nonzero((values != 0) & (rounded == 0))) == 1
    assert measured.subnormal == 2  # 3e-8 and 1e-6 land below FP16's smallest normal (6.1e-5)
    assert measured.max_abs == pytest.approx(1e5)
    assert not measured.in_range


def test_overflow_threshold_is_the_rounding_boundary():
    assert FP16.overflow_threshold == 65520.0
    assert np.float16(np.float32(65519.0)) == 65504.0
    with np.errstate(over="ignore"):
        assert np.isinf(np.float32(65520.0).astype(np.float16))


def test_bf16_range():
    values = np.array([1e38, 3e38, 1e-39], np.float32)
    measured = _measure_array(values, BF16)
    assert measured.in_range
    assert measured.subnormal == int(
        np.count_nonzero(np.abs(values.astype(ml_dtypes.bfloat16).astype(np.float32)) < BF16.tiny)
    )


def test_bf16_overflow_threshold_is_the_rounding_boundary():
    below = np.nextafter(np.float32(BF16.overflow_threshold), np.float32(0))
    rounded = np.array([below, BF16.overflow_threshold], np.float32).astype(ml_dtypes.bfloat16)
    assert np.isfinite(rounded[0]) and np.isinf(rounded[1])


@pytest.mark.parametrize("low", [FP16, BF16], ids=["fp16", "bf16"])
def test_chunked_scan_equals_one_pass(low, monkeypatch):
    """Scanned in chunks through one buffer (``SCAN_CHUNK``), a tensor measures as in one pass:
    specials, overflows and subnormals spread over chunks, a chunk of NaN only, a short last one."""
    from mpcompile.core import ranges

    rng = np.random.default_rng(0)
    values = (rng.standard_normal(10_007) * 300).astype(np.float32)
    values[rng.integers(0, values.size, 40)] = rng.choice([np.inf, -np.inf, 7e4, -1e5, 3e38, 1e-7, 1e-40], 40)
    values[96:128] = np.nan  # one whole chunk of the 32-value scans below
    whole = _measure_array(values, low)
    assert whole == ranges._measure_chunk(values, np.abs(values), low)  # one chunk: as before
    for chunk in (32, 1000, 4096):
        monkeypatch.setattr(ranges, "SCAN_CHUNK", chunk)
        assert _measure_array(values, low) == whole
        assert _measure_array(values.reshape(1, -1, 1), low) == whole
    assert _measure_array(np.full(64, np.nan, np.float32), low).max_abs == 0.0
