"""``mpcompile validate``: accuracy and latency of a converted model on ONNX Runtime EPs.

Layout follows Polygraphy: ``runners`` (uniform ``infer``), ``compare`` (per-output
statistics), ``latency``, ``results`` (typed, JSON-serializable, truthy when passing),
``api.validate`` ties them together and ``render`` prints the tables.

The names below load lazily, so importing this package is cheap: ``mpcompile/__init__.py``
imports it at start-up (see there why) and the CLI must start without onnx or numpy.
``mpcompile.validate`` itself, the attribute of the top-level package, is the function
``validate``; this package is ``sys.modules["mpcompile.validate"]`` and what
``from mpcompile.validate import ...`` reads (``import mpcompile.validate as name`` binds the
function, as it reads the attribute).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "validate": "mpcompile.validate.api",
    "OutputComparison": "mpcompile.validate.compare",
    "compare_output": "mpcompile.validate.compare",
    "LatencyStats": "mpcompile.validate.latency",
    "render_result": "mpcompile.validate.render",
    "SCHEMA": "mpcompile.validate.results",
    "EpResult": "mpcompile.validate.results",
    "ValidationResult": "mpcompile.validate.results",
    "Tolerance": "mpcompile.validate.tolerances",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mpcompile.validate' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
