"""Targets backed by an execution provider's kernel table (CPU, CUDA, DirectML)."""

from __future__ import annotations

import onnx_ir as ir

from mpcompile.targets import live
from mpcompile.targets.kernel_table import KernelAnswer, KernelTable, shipped_source, shipped_table


class KernelTableTarget:
    """An execution provider whose kernels are listed per (domain, op, version range, types).

    ``supports`` follows the installed onnxruntime's registry for this provider when it has one
    (``live=True`` and the build registers kernels for it), otherwise the shipped tables.
    """

    def __init__(self, name: str, provider: str, table: KernelTable, source: str):
        self.name = name
        self.provider = provider
        self.table = table
        self.source = source  # e.g. "onnxruntime 1.32.0 (installed)" or "OperatorKernels.md (ORT 1.30.0-dev)"

    @classmethod
    def for_provider(cls, name: str, provider: str, live_registry: bool = True) -> KernelTableTarget:
        """The target for ``provider``: live registry when available and wanted, else shipped data."""
        if live_registry:
            table = live.live_table(provider)
            if table is not None:
                return cls(name, provider, table, f"onnxruntime {live.live_runtime_version()} (installed)")
        source = shipped_source()
        return cls(
            name, provider, shipped_table(provider), f"OperatorKernels.md (ORT {source['ort_version']})"
        )

    @property
    def is_live(self) -> bool:
        return self.source.endswith("(installed)")

    def supports(self, domain: str, op_type: str, opset: int, dtype: ir.DataType) -> bool:
        return self.table.supports(domain, op_type, opset, dtype)

    def explain(self, domain: str, op_type: str, opset: int, dtype: ir.DataType) -> KernelAnswer:
        """``supports`` with a one-line reason, e.g. ``CPUExecutionProvider ai.onnx::Add 14+: T lacks tensor(float16)``."""
        return self.table.explain(domain, op_type, opset, dtype)

    def describe(self) -> dict[str, object]:
        """Whether the table is the installed build's, and how many ops have FP16/BF16 kernels."""
        return {
            "live": self.is_live,
            "ops": len(self.table),
            "ops_with_float16": _ops_with(self.table, "tensor(float16)"),
            "ops_with_bfloat16": _ops_with(self.table, "tensor(bfloat16)"),
        }

    def __repr__(self) -> str:
        return f"KernelTableTarget({self.name!r}, {self.provider!r}, source={self.source!r})"


def _ops_with(table: KernelTable, type_name: str) -> int:
    return sum(
        any(type_name in types for kernel in entry.kernels for types in kernel.constraints.values())
        for _, entry in table.items()
    )


def cuda_target(live: bool = True) -> KernelTableTarget:
    """The CUDA execution provider's kernels."""
    return KernelTableTarget.for_provider("cuda", "CUDAExecutionProvider", live)


def cpu_target(live: bool = True) -> KernelTableTarget:
    """The CPU execution provider's kernels."""
    return KernelTableTarget.for_provider("cpu", "CPUExecutionProvider", live)


def dml_target(live: bool = True) -> KernelTableTarget:
    """The DirectML execution provider's kernels."""
    return KernelTableTarget.for_provider("dml", "DmlExecutionProvider", live)
