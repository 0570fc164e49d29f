"""The execution targets by name: one line per target, naming the function that builds it.

Adding a target is one module (a class with the ``Target`` protocol of ``targets/base.py`` and a
factory function) plus one line in ``TARGETS``. This module imports nothing heavy: the CLI builds
its ``--target`` choices and the policy file checks its ``target`` from it without loading onnx.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mpcompile.targets.base import Target

# Name -> "module:function". The function takes ``live`` (answer from the installed onnxruntime's
# kernel registry where it has one, else the shipped tables) and returns the target. The order
# is the order ``mpcompile targets`` lists them in.
TARGETS: dict[str, str] = {
    "cuda": "mpcompile.targets.kernel_target:cuda_target",
    "tensorrt": "mpcompile.targets.tensorrt:tensorrt_target",
    "cpu": "mpcompile.targets.kernel_target:cpu_target",
    "dml": "mpcompile.targets.kernel_target:dml_target",
    "any": "mpcompile.targets.base:any_target",
}
DEFAULT_TARGET = "cuda"


def target_names() -> tuple[str, ...]:
    """The names a user may give as a target, in registry order."""
    return tuple(TARGETS)


def target_factory(name: str) -> Callable[[bool], Target] | None:
    """The factory registered for ``name`` (already lower-cased), or None if there is none."""
    reference = TARGETS.get(name)
    if reference is None:
        return None
    module, _, function = reference.partition(":")
    return getattr(importlib.import_module(module), function)
