"""Accuracy-driven automatic mixed precision (``mpcompile convert --auto``); see docs/auto.md."""

from mpcompile.auto.api import DEFAULT_BUDGET, AutoResult, auto_convert
from mpcompile.auto.criteria import Criterion, make_criterion
from mpcompile.auto.range_rules import RangeRules
from mpcompile.auto.reasons import AUTO_RANGE, AUTO_SENSITIVITY
from mpcompile.auto.trace import TRACE_KEY, SearchStep, read_trace

__all__ = [
    "AUTO_RANGE",
    "AUTO_SENSITIVITY",
    "DEFAULT_BUDGET",
    "TRACE_KEY",
    "AutoResult",
    "Criterion",
    "RangeRules",
    "SearchStep",
    "auto_convert",
    "make_criterion",
    "read_trace",
]
