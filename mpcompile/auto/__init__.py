"""Accuracy-driven automatic mixed precision (``mpcompile convert --auto``); see docs/auto.md.

The API is imported lazily, so the CLI's option set does not pull in numpy/onnx at start-up.
"""

from __future__ import annotations

import importlib
from typing import Any

DEFAULT_BUDGET = 16  # model evaluations (reference and candidate runs), the reference included

_EXPORTS = {
    "AUTO_RANGE": "mpcompile.auto.reasons",
    "AUTO_SENSITIVITY": "mpcompile.auto.reasons",
    "TRACE_KEY": "mpcompile.core.plan",  # model metadata key of the saved search record
    "AutoResult": "mpcompile.auto.api",
    "auto_convert": "mpcompile.auto.api",
    "Criterion": "mpcompile.auto.criteria",
    "make_criterion": "mpcompile.auto.criteria",
    "RangeRules": "mpcompile.analysis.range_rules",
    "SearchStep": "mpcompile.auto.trace",
    "read_trace": "mpcompile.auto.trace",
}

__all__ = ["DEFAULT_BUDGET", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mpcompile.auto' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
