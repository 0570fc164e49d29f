"""The target interface the precision assignment consults, and target lookup by name."""

from __future__ import annotations

from typing import Protocol

import onnx_ir as ir

from mpcompile.commands.choices import DEFAULT_TARGET, TARGET_NAMES, TARGET_PROVIDERS
from mpcompile.errors import ExitCode, MpcompileError
from mpcompile.targets.kernel_table import KernelAnswer

__all__ = [
    "DEFAULT_TARGET",
    "TARGET_NAMES",
    "TARGET_PROVIDERS",
    "AnyTarget",
    "Target",
    "UnknownTargetError",
    "get_target",
]


class Target(Protocol):
    """An execution target: answers whether an op has a kernel for a dtype."""

    name: str
    provider: str | None  # e.g. "CUDAExecutionProvider"; None for "any"

    def supports(self, domain: str, op_type: str, opset: int, dtype: ir.DataType) -> bool:
        """True if the target runs ``domain::op_type`` at ``opset`` natively in ``dtype``.

        ``domain`` is ``""`` or ``"ai.onnx"`` for the default domain; ``opset`` is the model's
        opset import for that domain (not the op's schema version).
        """
        ...


class UnknownTargetError(MpcompileError, ValueError):
    """A target name that is not one of ``TARGET_NAMES``."""

    exit_code = ExitCode.USAGE


class AnyTarget:
    """No kernel constraints: only op schemas limit precision."""

    name = "any"
    provider = None
    source = "no kernel constraints"

    def supports(self, domain: str, op_type: str, opset: int, dtype: ir.DataType) -> bool:
        return True

    def explain(self, domain: str, op_type: str, opset: int, dtype: ir.DataType) -> KernelAnswer:
        return KernelAnswer(True, "target any: no kernel constraints")


def get_target(name: str, live: bool = True) -> Target:
    """Resolve a target name from the CLI or API: cuda, tensorrt, cpu, dml or any.

    With ``live=True`` a target whose execution provider is in the installed onnxruntime build
    answers from that build's kernel registry instead of the shipped tables.
    """
    from mpcompile.targets.kernel_target import KernelTableTarget
    from mpcompile.targets.tensorrt import TensorRTTarget

    key = name.lower()
    if key not in TARGET_PROVIDERS:
        raise UnknownTargetError(f"unknown target {name!r}; expected one of {', '.join(TARGET_NAMES)}")
    if key == "any":
        return AnyTarget()
    if key == "tensorrt":
        return TensorRTTarget(fallback=KernelTableTarget.for_provider("cuda", TARGET_PROVIDERS["cuda"], live))
    return KernelTableTarget.for_provider(key, TARGET_PROVIDERS[key], live)
