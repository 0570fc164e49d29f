"""Typing a node's outputs from its typed inputs: contrib ops by their rules, ai.onnx ops by their schema.

Used where whole-graph inference stops (``passes/infer_types.py``) and after ORT's optimiser
(``targets/optimize/symbolic_types.py``), so both type the same values the same way.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from mpcompile.irtools.graphs import ai_onnx_opset, model_graphs
from mpcompile.irtools.values import set_dtype
from mpcompile.policy import op_types


def is_contrib(node: ir.Node, opset: int) -> bool:
    """An op onnx has no schema for: outside ai.onnx, or ORT's own default-domain ops
    (``SimplifiedLayerNormalization``, ...) at the model's ai.onnx ``opset``."""
    if node.domain not in ("", "ai.onnx"):
        return True
    return op_types.get_schema("", node.op_type, opset) is None


def type_contrib_node(node: ir.Node, opset: int) -> bool:
    """Type the untyped outputs of a contrib op from its inputs (``CONTRIB_TYPING``, else ORT's
    schema of the op, else ORT's kernel signatures); True if any was typed."""
    rule = op_types.CONTRIB_TYPING.get((node.domain, node.op_type))
    modified = False
    if rule is None:
        if is_contrib(node, opset) and any(v.dtype is None and v.name for v in node.outputs):
            for value, dtype in zip(node.outputs, op_types.contrib_output_dtypes(node, opset), strict=True):
                if value.dtype is None and dtype is not None and value.name:
                    set_dtype(value, dtype)
                    modified = True
        return modified
    source = next(
        (
            v.dtype
            for i, v in enumerate(node.inputs)
            if v is not None
            and i not in rule.keep_inputs
            and v.dtype is not None
            and v.dtype.is_floating_point()
        ),
        None,
    )
    for index, value in enumerate(node.outputs):
        if value.dtype is not None or not value.name:
            continue
        set_dtype(value, ir.DataType.FLOAT if index in rule.keep_outputs else source)
        modified = modified or value.dtype is not None
    return modified


def propagate_types(model: ir.Model) -> bool:
    """Type, node by node in graph order, the outputs whole-graph inference left untyped.

    onnx's inference stops at an op it has no schema for (a fused ``com.microsoft`` op): the
    values after it stay untyped although the op's own outputs get their types from its inputs
    (``CONTRIB_TYPING``). Here each node whose inputs are all typed is typed from them: contrib
    ops by their rule, ai.onnx ops by their schema's inference. True if any value was typed.
    """
    modified = False
    ai_onnx = ai_onnx_opset(model.opset_imports)
    for graph in model_graphs(model):
        for node in graph:
            if not any(value.dtype is None and value.name for value in node.outputs):
                continue
            if any(value is not None and value.type is None for value in node.inputs):
                continue
            if not is_contrib(node, ai_onnx):
                before = sum(value.type is not None for value in node.outputs)
                infer_node_types(node, ai_onnx)
                modified |= sum(value.type is not None for value in node.outputs) > before
            else:
                modified |= type_contrib_node(node, ai_onnx)
    return modified


def infer_node_types(node: ir.Node, opset: int) -> None:
    schema = op_types.get_schema(node.domain, node.op_type, opset)
    if schema is None or any(value is not None and value.type is None for value in node.inputs):
        return
    input_types = {
        value.name: ir.serde.serialize_type(value.type) for value in node.inputs if value is not None
    }
    try:
        inferred = onnx.shape_inference.infer_node_outputs(schema, ir.serde.serialize_node(node), input_types)
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError, KeyError):
        return
    for value in node.outputs:
        if value.name in inferred and value.type is None:
            value.type = ir.serde.deserialize_type_proto_for_type(inferred[value.name])
