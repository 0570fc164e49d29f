"""mpcompile: a mixed-precision (FP16/BF16) compiler for ONNX models.

The public API is imported lazily so that ``mpcompile --help`` starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "convert": "mpcompile.core.converter",
    "convert_file": "mpcompile.core.converter",
    "ConvertResult": "mpcompile.core.converter",
    "ConvertOptions": "mpcompile.core.converter",
    "validate": "mpcompile.validate",
    "ValidationResult": "mpcompile.validate",
    "build_report": "mpcompile.report",
    "write_report": "mpcompile.report",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mpcompile' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
