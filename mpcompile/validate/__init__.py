"""``mpcompile validate``: accuracy and latency of a converted model on ONNX Runtime EPs.

Layout follows Polygraphy: ``runners`` (uniform ``infer``), ``compare`` (per-output
statistics), ``latency``, ``results`` (typed, JSON-serializable, truthy when passing),
``api.validate`` ties them together and ``render`` prints the tables.
"""

import sys
import types

from mpcompile.validate.api import validate
from mpcompile.validate.compare import OutputComparison, compare_output
from mpcompile.validate.latency import LatencyStats
from mpcompile.validate.render import render_result
from mpcompile.validate.results import SCHEMA, EpResult, ValidationResult
from mpcompile.validate.tolerances import Tolerance

__all__ = [
    "SCHEMA",
    "EpResult",
    "LatencyStats",
    "OutputComparison",
    "Tolerance",
    "ValidationResult",
    "compare_output",
    "render_result",
    "validate",
]


class _CallableModule(types.ModuleType):
    """``mpcompile.validate`` is both this package and the function ``validate``: whichever the
    name resolves to (the package once any submodule is imported), calling it validates."""

    def __call__(self, *args, **kwargs) -> ValidationResult:
        return validate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
