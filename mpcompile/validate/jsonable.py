"""JSON helpers: non-finite floats become the strings "inf", "-inf" and "nan"."""

from __future__ import annotations

import math


def jsonable_float(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    if math.isnan(value):
        return "nan"
    return "inf" if value > 0 else "-inf"
