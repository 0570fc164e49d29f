"""Decisions for a graph ORT's ``generate_artifacts`` built from a converted forward graph.

ORT drops node metadata when it builds the training and eval graphs. Forward nodes get the
forward conversion's decision back (matched by their first output's name). Nodes ORT added
(gradients, loss, accumulators) are stamped with the precision ORT typed them in: the type of
their first float input (a Cast: its target), reason ``follow``, rule ``ort-gradient-builder``.
The model records its low precision (``mpcompile.low_precision``).
"""

from __future__ import annotations

import onnx_ir as ir

from mpcompile.core.plan import MODEL_PRECISION_KEY, Decision, Reason, stamp_decision
from mpcompile.core.precision import Precision

GRADIENT_BUILDER_RULE = "ort-gradient-builder"


class StampGeneratedGraphPass(ir.passes.InPlacePass):
    """Re-stamp every node of an ORT-generated graph (module docstring)."""

    def __init__(self, forward_decisions: dict[str, Decision], precision: str):
        super().__init__()
        self.forward_decisions = forward_decisions
        self.precision = precision

    def __repr__(self) -> str:
        return "StampGeneratedGraphPass()"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        dtypes = _float_types(model.graph)
        for node in model.graph:
            decision = self.forward_decisions.get(node.outputs[0].name) if node.outputs else None
            if decision is None:
                if node.op_type == "Cast" and node.domain in ("", "ai.onnx"):
                    target = ir.DataType(node.attributes["to"].as_int())
                    decision = Decision(Precision.of_dtype(target), Reason.CAST, GRADIENT_BUILDER_RULE)
                else:
                    floats = [dtypes[v] for v in node.inputs if v is not None and v in dtypes]
                    precision = Precision.of_dtype(floats[0]) if floats else Precision.NONE
                    decision = Decision(precision, Reason.FOLLOW, GRADIENT_BUILDER_RULE)
            stamp_decision(node, decision)
        model.metadata_props[MODEL_PRECISION_KEY] = self.precision
        return ir.passes.PassResult(model, modified=True)


def _float_types(graph: ir.Graph) -> dict[ir.Value, ir.DataType]:
    """Float element types of values: declared, Cast targets, else the first float input's type."""
    floats = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
    types = {v: v.dtype for v in [*graph.inputs, *graph.initializers.values()] if v.dtype in floats}
    for node in graph:
        if node.op_type == "Cast" and node.domain in ("", "ai.onnx"):
            target = ir.DataType(node.attributes["to"].as_int())
            if target in floats:
                types[node.outputs[0]] = target
            continue
        first = next((types[v] for v in node.inputs if v is not None and v in types), None)
        for output in node.outputs:
            if output.dtype in floats:
                types[output] = output.dtype
            elif output.dtype is None and first is not None:
                types[output] = first
    return types
