"""mpcompile: a mixed-precision (FP16/BF16) compiler for ONNX models.

The public API is imported lazily so that ``mpcompile --help`` starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpcompile.validate.results import ValidationResult

from mpcompile.version import __version__

_EXPORTS = {
    "convert": "mpcompile.compiler.converter",
    "convert_file": "mpcompile.compiler.converter",
    "ConvertResult": "mpcompile.compiler.converter",
    "ConvertOptions": "mpcompile.compiler.converter",
    "convert_folder": "mpcompile.compiler.folder",
    "FolderResult": "mpcompile.compiler.folder",
    "ValidationResult": "mpcompile.validate",
    "build_report": "mpcompile.report",
    "write_report": "mpcompile.report",
}

__all__ = ["__version__", "validate", *_EXPORTS]


# ``mpcompile.validate`` is the function below, and ``mpcompile/validate/`` the package of its
# modules. Python binds a submodule as an attribute of its parent when it first loads it, so the
# package is loaded here, before the function is defined (its names load lazily: this is cheap);
# later imports of it or of its modules find it in ``sys.modules`` and leave the function alone.
importlib.import_module("mpcompile.validate")


def validate(original, converted, **options) -> ValidationResult:
    """Compare ``converted`` against the FP32 ``original`` on ONNX Runtime EPs.

    The same as :func:`mpcompile.validate.api.validate` (see there for the options).
    """
    from mpcompile.validate.api import validate as validate_models

    return validate_models(original, converted, **options)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mpcompile' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
