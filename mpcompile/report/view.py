"""Which node rows a report shows and in what order (``--op``, ``--precision``, ``--sort``, ``--top``).

Filters select table rows only; the summary always covers the whole model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from mpcompile.analysis.audit import NodeAudit
from mpcompile.evaluate.shapes import ReportOptionError


def _numeric(node: NodeAudit, key: str) -> float:
    value = (node.numerics or {}).get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return -1.0
    return float(value)


# sort name -> (key function, descending)
SORTS: dict[str, tuple[Callable[[NodeAudit], Any], bool]] = {
    "order": (lambda n: n.index, False),
    "flops": (lambda n: n.flops if n.flops is not None else -1, True),
    "weights": (lambda n: n.weight_bytes, True),
    "name": (lambda n: (n.name, n.index), False),
    "op": (lambda n: (n.op_type, n.index), False),
    "precision": (lambda n: (n.precision, n.index), False),
    "range": (lambda n: _numeric(n, "max_abs"), True),
    "error": (lambda n: _numeric(n, "error_introduced"), True),
}


@dataclasses.dataclass(frozen=True)
class ReportView:
    """Row selection of a report."""

    ops: tuple[str, ...] = ()
    precisions: tuple[str, ...] = ()
    top: int | None = None
    sort: str = "order"

    def __post_init__(self) -> None:
        if self.sort not in SORTS:
            raise ReportOptionError(f"--sort {self.sort!r}: choose one of {', '.join(SORTS)}")
        if self.top is not None and self.top < 0:
            raise ReportOptionError("--top must not be negative")

    def select(self, nodes: list[NodeAudit]) -> list[NodeAudit]:
        ops = {op.lower() for op in self.ops}
        precisions = {p.lower() for p in self.precisions}
        rows = [
            n
            for n in nodes
            if (not ops or n.op_type.lower() in ops) and (not precisions or n.precision.lower() in precisions)
        ]
        key, descending = SORTS[self.sort]
        # Stable: ties keep graph order.
        rows.sort(key=lambda n: n.index)
        rows.sort(key=key, reverse=descending)
        return rows if self.top is None else rows[: self.top]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ops": list(self.ops),
            "precisions": list(self.precisions),
            "top": self.top,
            "sort": self.sort,
        }


def display_name(node: NodeAudit) -> str:
    """The node's name, or ``<op>→<first output>`` for unnamed nodes."""
    if node.name:
        return node.name
    first = node.output_names[0] if node.output_names else ""
    return f"<{node.op_type}→{first}>" if first else f"<{node.op_type} #{node.index}>"


def format_count(value: int | float | None) -> str:
    """Human-sized number: 1.5G, 20.3M, 512."""
    if value is None:
        return "?"
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return str(value)
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_bytes(value: int | None) -> str:
    if value is None:
        return "?"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"


def format_share(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def format_float(value: float | None) -> str:
    if value is None:
        return ""
    if math.isinf(value) or math.isnan(value):
        return str(value)
    return f"{value:.3g}"
