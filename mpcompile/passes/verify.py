"""Check the invariants every pass keeps (docs/invariants.md) on the IR, without serializing."""

from __future__ import annotations

import onnx_ir as ir

from mpcompile.core.io_types import lowered_io
from mpcompile.irtools.graphs import all_graphs
from mpcompile.passes.base import ConversionPass
from mpcompile.passes.context import ConversionContext
from mpcompile.policy.op_types import type_variable_conflict


class VerifyPass(ConversionPass):
    """Raise ``ir.passes.InvariantError`` (an internal bug) if an invariant is broken.

    - every node's inputs/outputs bound to one schema type variable share one dtype;
    - graph inputs and outputs keep their names, and their dtypes except the FP32 ones that
      keep_io_types lowers (``expected_io_signature``);
    - nodes stay in topological order.
    """

    def __init__(self, context: ConversionContext, io_signature: dict[str, ir.DataType | None] | None = None):
        super().__init__(context)
        self.io_signature = io_signature

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for graph, opset in all_graphs(model):
            _check_topological(graph)
            for node in graph:
                conflict = type_variable_conflict(node, opset, model.opset_imports)
                if conflict is not None:
                    raise ir.passes.InvariantError(conflict)
        if self.io_signature is not None:
            now = io_signature(model)
            if now != self.io_signature:
                raise ir.passes.InvariantError(f"graph inputs/outputs changed: {self.io_signature} -> {now}")
        return ir.passes.PassResult(model, modified=False)


def io_signature(model: ir.Model) -> dict[str, ir.DataType | None]:
    """Names and dtypes of the main graph's inputs and outputs."""
    return {
        **{f"in:{value.name}": value.dtype for value in model.graph.inputs},
        **{f"out:{value.name}": value.dtype for value in model.graph.outputs},
    }


def expected_io_signature(model: ir.Model, context: ConversionContext) -> dict[str, ir.DataType | None]:
    """``io_signature`` of ``model`` once converted: the FP32 inputs (initializers excluded) and
    outputs that ``context.fp32_io`` does not keep take the low-precision type."""
    signature = io_signature(model)
    low_inputs, low_outputs = lowered_io(model, context.fp32_io)
    for prefix, values in (("in", low_inputs), ("out", low_outputs)):
        for value in values:
            signature[f"{prefix}:{value.name}"] = context.low.dtype
    return signature


def _check_topological(graph: ir.Graph) -> None:
    seen: set[int] = set()
    for node in graph:
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None and producer.graph is graph and id(producer) not in seen:
                raise ir.passes.InvariantError(
                    f"node {node.name!r} reads {value.name!r} before it is produced"
                )
        seen.add(id(node))
