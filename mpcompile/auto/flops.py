"""FLOPs per node, subgraphs included, at the shapes of the search's inputs (``mpcompile.report``'s estimates).

The search's FP16 FLOP share and the report's come from the same estimates
(``mpcompile.analysis.flops``), so they count the same nodes: every node of every graph once,
both branches of an If included. A model with one graph, whose every value the reference run
gave, is estimated straight from those arrays' shapes; any other goes through the audit
(``mpcompile.analysis.audit``: a copy, onnx shape inference), which gives the same numbers there.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir


def node_flops(
    model: ir.Model, feeds: Mapping[str, np.ndarray], values: Mapping[str, np.ndarray] | None = None
) -> dict[str, int]:
    """FLOPs of each named node of every graph the audit covers (0 where the estimate is unknown).

    ``values``: arrays of the model's values from a run on ``feeds`` (the reference run); their
    shapes are used where shape inference cannot tell (ops it does not know, such as the
    com.microsoft fusions of ``--optimize transformer``, and everything after them).
    """
    if values:
        measured = flops_from_values(model, feeds, values)
        if measured is not None:
            return measured
    return audited_flops(model, feeds, values)


def flops_from_values(
    model: ir.Model, feeds: Mapping[str, np.ndarray], values: Mapping[str, np.ndarray]
) -> dict[str, int] | None:
    """``node_flops`` from the shapes of the arrays alone (no copy, no shape inference), or None
    when they do not cover the model: subgraphs or functions, a graph input not fed, a node
    output without an array. ``model`` is left as it was (its shapes are set for the count only)."""
    from mpcompile.analysis.flops import estimate_flops

    graph = model.graph
    if model.functions or any(
        attribute.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
        for node in graph
        for attribute in node.attributes.values()
    ):
        return None
    shapes: list[tuple[ir.Value, tuple[int, ...]]] = []
    for value in graph.inputs:
        array = feeds.get(value.name or "")
        if not isinstance(array, np.ndarray):
            return None
        shapes.append((value, array.shape))
    for node in graph:
        for value in node.outputs:
            if not value.name:
                continue
            array = values.get(value.name)
            if not isinstance(array, np.ndarray):
                return None
            shapes.append((value, array.shape))
    for value in graph.initializers.values():
        if value.shape is None and value.const_value is not None and not value.is_graph_input():
            shapes.append((value, tuple(value.const_value.shape)))
    saved = [(value, value.shape) for value, _ in shapes]
    try:
        for value, shape in shapes:
            value.shape = ir.Shape(shape)
        return {node.name: int(estimate_flops(node)[0] or 0) for node in graph if node.name}
    finally:
        for value, shape in saved:
            value.shape = shape


def audited_flops(
    model: ir.Model, feeds: Mapping[str, np.ndarray], values: Mapping[str, np.ndarray] | None = None
) -> dict[str, int]:
    """``node_flops`` through the audit: a copy annotated with the arrays' shapes, then onnx
    shape inference at the feeds' shapes."""
    from mpcompile.analysis.audit import audit_model
    from mpcompile.evaluate.shapes import ShapeSpec

    spec = ShapeSpec(feed_shapes={name: tuple(np.shape(array)) for name, array in feeds.items()})
    if values:
        model = model.clone()  # tensors shared; only value shapes are annotated
        for node in model.graph:
            for value in node.outputs:
                array = values.get(value.name) if value.name else None
                if isinstance(array, np.ndarray):
                    value.shape = ir.Shape(array.shape)
                    if value.type is None:
                        value.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
    audit = audit_model(model, shapes=spec)
    return {node.name: int(node.flops or 0) for node in audit.nodes if node.name}
