"""Which main-graph inputs and outputs stay FP32: ``keep_io_types`` resolved against a model.

``True`` keeps every one; ``False`` keeps none, so every float (FP32) input and output goes
low precision; a set of names keeps those and lowers the rest. A name the model's main graph
has neither as input nor as output is a usage error (exit 2), never silently ignored.
"""

from __future__ import annotations

import onnx_ir as ir

from mpcompile.errors import UsageError

_LISTED = 8  # names shown in the error message


def io_names(model: ir.Model) -> tuple[list[str], list[str]]:
    """The names of the main graph's inputs (initializers excluded) and outputs."""
    graph = model.graph
    inputs = [value.name or "" for value in graph.inputs if not value.is_initializer()]
    return inputs, [value.name or "" for value in graph.outputs]


def fp32_io_names(model: ir.Model, keep_io_types: bool | frozenset[str]) -> frozenset[str]:
    """The names of the main graph's inputs and outputs that keep their FP32 type."""
    inputs, outputs = io_names(model)
    if keep_io_types is True:
        return frozenset(inputs) | frozenset(outputs)
    if keep_io_types is False:
        return frozenset()
    unknown = sorted(set(keep_io_types) - set(inputs) - set(outputs))
    if unknown:
        raise UsageError(
            f"--keep-io {unknown[0]!r}: the model has no graph input or output of that name "
            f"(inputs: {_listed(inputs)}; outputs: {_listed(outputs)})"
        )
    return frozenset(keep_io_types)


def lowered_io(model: ir.Model, fp32_io: frozenset[str] | None) -> tuple[list[ir.Value], list[ir.Value]]:
    """The main graph's FP32 inputs (initializers excluded) and outputs that go low precision
    (``fp32_io`` None: none of them)."""
    if fp32_io is None:
        return [], []
    graph = model.graph

    def lowered(value: ir.Value) -> bool:
        return value.dtype == ir.DataType.FLOAT and (value.name or "") not in fp32_io

    inputs = [value for value in graph.inputs if not value.is_initializer() and lowered(value)]
    return inputs, [value for value in graph.outputs if lowered(value)]


def _listed(names: list[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:_LISTED])
    more = len(names) - _LISTED
    return (shown or "none") + (f" and {more} more" if more > 0 else "")
