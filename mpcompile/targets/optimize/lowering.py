"""ORT-internal ops in the ai.onnx domain, rewritten as standard ONNX.

ORT registers a few ops in the ai.onnx domain that onnx itself does not define:
``SimplifiedLayerNormalization`` (the RMSNorm its fusions create, at any opset) and
``LayerNormalization`` below opset 17. ORT loads them, but a model holding them fails
``onnx.checker`` ("No Op registered for SimplifiedLayerNormalization with domain_version of 18")
and other runtimes reject it. Each one is rewritten here as the standard op when the model's opset
has it (``RMSNormalization``, opset 23) or as the primitive ops it stands for (the pattern ORT
fused). The fusions built on top of them (``SkipSimplifiedLayerNormalization``,
``SkipLayerNormalization``, in the com.microsoft domain) stay.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import numpy as np
import onnx
import onnx_ir as ir

from mpcompile.irtools.graphs import ai_onnx_opset, model_graphs
from mpcompile.irtools.names import NameAuthority

_FLOAT = ir.DataType.FLOAT


def is_standard_op(op_type: str, opset: int) -> bool:
    """True if onnx defines ai.onnx ``op_type`` at ``opset``."""
    try:
        onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return False
    return True


def internal_onnx_nodes(model: ir.Model) -> list[ir.Node]:
    """Nodes in the ai.onnx domain that onnx does not define at the model's opset (ORT-internal ops)."""
    opset = ai_onnx_opset(model.opset_imports)
    return [
        node
        for graph in model_graphs(model)
        for node in graph
        if node.domain in ("", "ai.onnx") and not is_standard_op(node.op_type, opset)
    ]


def lower_internal_ops(model: ir.Model) -> tuple[collections.Counter[str], list[ir.Node]]:
    """Rewrite every ORT-internal ai.onnx node that has a lowering; changes ``model`` in place.

    Returns how many nodes of each op were lowered (e.g. ``SimplifiedLayerNormalization ->
    RMSNormalization``) and the internal nodes left (no lowering, or one that needs what the
    graph does not say, such as the rank for a positive ``axis``).
    """
    opset = ai_onnx_opset(model.opset_imports)
    lowered: collections.Counter[str] = collections.Counter()
    left: list[ir.Node] = []
    names: NameAuthority | None = None
    for node in internal_onnx_nodes(model):
        lowering = _LOWERINGS.get(node.op_type)
        axes = _normalized_axes(node)
        if lowering is None or axes is None or not _is_float32(node):
            left.append(node)
            continue
        names = names or NameAuthority(model)
        emit = _Emitter(node, names, opset)
        lowered[f"{node.op_type} -> {lowering(emit, node, axes)}"] += 1
        emit.finish()
    return lowered, left


class _Emitter:
    """Builds the replacement ops before ``node``, named by the model's name authority."""

    def __init__(self, node: ir.Node, names: NameAuthority, opset: int):
        assert node.graph is not None
        self.node, self.graph, self.names, self.opset = node, node.graph, names, opset
        self.prefix = node.name or node.op_type

    def op(self, op_type: str, inputs: list[ir.Value], attributes: dict | None = None) -> ir.Value:
        step = ir.node(op_type, inputs, attributes or {}, name=self.names.unique(f"{self.prefix}/{op_type}"))
        step.outputs[0].name = self.names.unique(f"{self.prefix}/{op_type}_output")
        step.outputs[0].dtype = _FLOAT if op_type != "Shape" else ir.DataType.INT64
        self.graph.insert_before(self.node, step)
        return step.outputs[0]

    def constant(self, what: str, array: np.ndarray) -> ir.Value:
        value = ir.Value(name=self.names.unique(f"{self.prefix}/{what}"), const_value=ir.tensor(array))
        value.dtype, value.shape = ir.DataType.from_numpy(array.dtype), ir.Shape(list(array.shape))
        self.graph.register_initializer(value)
        return value

    def reduce_mean(self, value: ir.Value, axes: list[int]) -> ir.Value:
        if self.opset >= 18:
            return self.op("ReduceMean", [value, self.constant("axes", np.array(axes, dtype=np.int64))])
        return self.op("ReduceMean", [value], {"axes": axes, "keepdims": 1})

    def take_over(self, index: int, replacement: ir.Value) -> None:
        """``replacement`` stands for the node's output ``index`` from now on, under its name."""
        if index >= len(self.node.outputs):
            return
        old = self.node.outputs[index]
        if not old.uses() and not old.is_graph_output():
            return
        old.replace_all_uses_with(replacement, replace_graph_outputs=True)
        replacement.shape = old.shape if old.shape is not None else replacement.shape
        replacement.name, old.name = old.name, None

    def finish(self) -> None:
        self.graph.remove(self.node, safe=True)


def _simplified_layer_norm(emit: _Emitter, node: ir.Node, axes: list[int]) -> str:
    """Y = X / sqrt(mean(X^2) + epsilon) * scale (outputs: Y, inv_std_var)."""
    x, scale = node.inputs[0], node.inputs[1]
    epsilon = _float_attribute(node, "epsilon", 1e-5)
    inverse_used = len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output())
    if emit.opset >= 23 and not inverse_used:
        axis = _int_attribute(node, "axis", -1)
        normalized = emit.op("RMSNormalization", [x, scale], {"axis": axis, "epsilon": epsilon})
        emit.take_over(0, normalized)
        return "RMSNormalization"
    mean_square = emit.reduce_mean(emit.op("Mul", [x, x]), axes)
    inverse = emit.op(
        "Reciprocal",
        [
            emit.op(
                "Sqrt",
                [emit.op("Add", [mean_square, emit.constant("epsilon", np.array(epsilon, np.float32))])],
            )
        ],
    )
    emit.take_over(0, emit.op("Mul", [emit.op("Mul", [x, inverse]), scale]))
    emit.take_over(1, inverse)
    return "primitive ops"


def _layer_norm(emit: _Emitter, node: ir.Node, axes: list[int]) -> str:
    """Y = (X - mean) / sqrt(var + epsilon) * scale + bias (outputs: Y, Mean, InvStdDev)."""
    x, scale = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    epsilon = _float_attribute(node, "epsilon", 1e-5)
    mean = emit.reduce_mean(x, axes)
    centered = emit.op("Sub", [x, mean])
    variance = emit.reduce_mean(emit.op("Mul", [centered, centered]), axes)
    inverse = emit.op(
        "Reciprocal",
        [
            emit.op(
                "Sqrt", [emit.op("Add", [variance, emit.constant("epsilon", np.array(epsilon, np.float32))])]
            )
        ],
    )
    normalized = emit.op("Mul", [emit.op("Mul", [centered, inverse]), scale])
    emit.take_over(0, emit.op("Add", [normalized, bias]) if bias is not None else normalized)
    emit.take_over(1, mean)
    emit.take_over(2, inverse)
    return "primitive ops"


_LOWERINGS: dict[str, Callable[[_Emitter, ir.Node, list[int]], str]] = {
    "SimplifiedLayerNormalization": _simplified_layer_norm,
    "LayerNormalization": _layer_norm,
}


def _normalized_axes(node: ir.Node) -> list[int] | None:
    """The reduced axes ``[axis, rank)``: negative ones need no rank; positive ones need the input's."""
    axis = _int_attribute(node, "axis", -1)
    if axis < 0:
        return list(range(axis, 0))
    shape = node.inputs[0].shape if node.inputs else None
    return None if shape is None else list(range(axis, len(shape)))


def _is_float32(node: ir.Node) -> bool:
    """Lowered in FP32 only (optimisation runs before conversion, on FP32 graphs; stash_type 1)."""
    if _int_attribute(node, "stash_type", 1) != 1 or len(node.inputs) < 2:
        return False
    known = [value.dtype for value in node.inputs[:2] if value is not None and value.dtype is not None]
    return bool(known) and all(dtype == _FLOAT for dtype in known)


def _int_attribute(node: ir.Node, name: str, default: int) -> int:
    attribute = node.attributes.get(name)
    return default if attribute is None else attribute.as_int()


def _float_attribute(node: ir.Node, name: str, default: float) -> float:
    attribute = node.attributes.get(name)
    return default if attribute is None else attribute.as_float()
