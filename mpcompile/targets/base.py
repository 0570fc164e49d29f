"""The target interface the precision assignment consults, and target lookup by name."""

from __future__ import annotations

from typing import Protocol

import onnx_ir as ir

from mpcompile.errors import ExitCode, MpcompileError
from mpcompile.targets.kernel_table import KernelAnswer
from mpcompile.targets.registry import target_factory, target_names


class Target(Protocol):
    """An execution target: answers whether an op has a kernel for a dtype, and why."""

    name: str
    provider: str | None  # e.g. "CUDAExecutionProvider"; None for "any"
    source: str  # where its answers come from, e.g. "OperatorKernels.md (ORT 1.30.0-dev)"

    def supports(self, domain: str, op_type: str, opset: int, dtype: ir.DataType) -> bool:
        """True if the target runs ``domain::op_type`` at ``opset`` natively in ``dtype``.

        ``domain`` is ``""`` or ``"ai.onnx"`` for the default domain; ``opset`` is the model's
        opset import for that domain (not the op's schema version).
        """
        ...

    def explain(self, domain: str, op_type: str, opset: int, dtype: ir.DataType) -> KernelAnswer:
        """``supports`` with a one-line reason (recorded as the detail of a no-kernel decision)."""
        ...

    def describe(self) -> dict[str, object]:
        """What ``mpcompile targets`` shows beyond name, provider and source (e.g. op counts)."""
        ...


class UnknownTargetError(MpcompileError, ValueError):
    """A target name that is not in the registry (``targets/registry.py``)."""

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

    def describe(self) -> dict[str, object]:
        return {}


def any_target(live: bool = True) -> AnyTarget:
    """The ``any`` target (``live`` does not matter: it has no kernel data)."""
    return AnyTarget()


def get_target(name: str, live: bool = True) -> Target:
    """Resolve a target name from the CLI or API: one of ``targets/registry.py``'s names.

    With ``live=True`` a target whose execution provider is in the installed onnxruntime build
    answers from that build's kernel registry instead of the shipped tables.
    """
    factory = target_factory(name.lower())
    if factory is None:
        raise UnknownTargetError(f"unknown target {name!r}; expected one of {', '.join(target_names())}")
    return factory(live)
