"""Error measures between a computed and a reference array, shared by the report's numerics
(``mpcompile.report.numerics``) and ``--auto``'s sensitivity ranking (``mpcompile.auto.sensitivity``)."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

_FLOAT_DTYPES = (np.dtype(ml_dtypes.bfloat16),)


def is_float_array(array: np.ndarray) -> bool:
    """A numpy array of a floating-point dtype, bfloat16 included."""
    return isinstance(array, np.ndarray) and (array.dtype.kind == "f" or array.dtype in _FLOAT_DTYPES)


def normalized_error(got: np.ndarray, ref: np.ndarray) -> tuple[float, float] | None:
    """(max abs error, max abs error / max |ref|); inf where got is not finite but ref is."""
    if got.shape != ref.shape or not is_float_array(ref) or not is_float_array(got):
        return None
    g, r = got.astype(np.float64), ref.astype(np.float64)
    if (np.isfinite(r) & ~np.isfinite(g)).any():
        return math.inf, math.inf
    finite = np.isfinite(r)
    if not finite.any():
        return 0.0, 0.0
    err = float(np.max(np.abs(g[finite] - r[finite])))
    scale = float(np.max(np.abs(r[finite])))
    return err, (err / scale if scale > 0 else (0.0 if err == 0 else math.inf))
