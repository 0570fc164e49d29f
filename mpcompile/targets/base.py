"""The target interface the precision assignment consults."""

from __future__ import annotations

from typing import Protocol

import onnx_ir as ir


class Target(Protocol):
    """An execution target: answers whether an op has a kernel for a dtype."""

    name: str
    provider: str | None  # e.g. "CUDAExecutionProvider"; None for "any"

    def supports(self, domain: str, op_type: str, opset: int, dtype: ir.DataType) -> bool:
        """True if the target runs ``domain::op_type`` at ``opset`` natively in ``dtype``."""
        ...


class AnyTarget:
    """No kernel constraints: only op schemas limit precision."""

    name = "any"
    provider = None

    def supports(self, domain: str, op_type: str, opset: int, dtype: ir.DataType) -> bool:
        return True


def get_target(name: str) -> Target:
    """Resolve a target name from the CLI or API."""
    if name == "any":
        return AnyTarget()
    raise ValueError(f"unknown target {name!r}")
