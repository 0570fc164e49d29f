"""Execution-provider targets: which ops have low-precision kernels where.

The names load lazily, so ``targets/registry.py`` (the targets by name) can be read without
loading onnx: the CLI builds its ``--target`` choices from it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DEFAULT_TARGET": "mpcompile.targets.registry",
    "AnyTarget": "mpcompile.targets.base",
    "Target": "mpcompile.targets.base",
    "UnknownTargetError": "mpcompile.targets.base",
    "get_target": "mpcompile.targets.base",
    "KernelAnswer": "mpcompile.targets.kernel_table",
    "KernelTable": "mpcompile.targets.kernel_table",
    "op_signatures": "mpcompile.targets.kernel_table",
    "KernelTableTarget": "mpcompile.targets.kernel_target",
    "KernelDifference": "mpcompile.targets.live",
    "compare_with_live": "mpcompile.targets.live",
    "TensorRTTarget": "mpcompile.targets.tensorrt",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mpcompile.targets' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
