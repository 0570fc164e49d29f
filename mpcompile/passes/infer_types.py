"""Infer the dtype of every value: onnx shape inference plus typing rules for contrib ops."""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir
import onnx_ir.passes.common

from mpcompile import op_types
from mpcompile.graphs import TYPED_FUNCTION_KEY, ai_onnx_opset
from mpcompile.passes.base import ConversionPass
from mpcompile.values import set_dtype

logger = logging.getLogger(__name__)


class InferTypesPass(ConversionPass):
    """Fill in value dtypes so precision decisions never guess.

    Runs onnx's shape inference (which cannot type contrib ops), then types the
    outputs of known contrib ops from their inputs. Values that stay untyped are
    counted; nodes reading them are kept FP32 by the precision assignment.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        if any(value.dtype is None for graph in model.graphs() for node in graph for value in node.outputs):
            # Strips large initializers before serializing, so big models are not copied.
            modified = _infer_shapes(model)
        modified |= _type_contrib_outputs(model)
        modified |= _type_function_bodies(model)
        self.context.stats.untyped_values = sum(
            1
            for graph in model.graphs()
            for node in graph
            for value in node.outputs
            if value.dtype is None and value.name
        )
        return ir.passes.PassResult(model, modified=modified)


def _infer_shapes(model: ir.Model) -> bool:
    """onnx shape inference merged back with whole types.

    onnx-ir 1.1.0's ShapeInferencePass merges only ``dtype``/``shape``, which turns an untyped
    sequence or optional value (e.g. SequenceConstruct's output inside an If branch) into a
    tensor: the saved model then fails the checker ("type case mismatch"). Here a value
    without a type (or with a type of another kind) takes the inferred type whole.
    """
    from onnx_ir.passes.common import _c_api_utils

    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=False)

    try:
        inferred_proto = _c_api_utils.call_onnx_api(infer, model)  # strips large initializers first
    except Exception as exc:  # as ShapeInferencePass: leave the model as it is
        logger.warning("shape inference failed: %s; values stay untyped", exc)
        return False
    inferred_model = ir.serde.deserialize_model(inferred_proto)
    modified = False
    for graph, inferred_graph in zip(model.graphs(), inferred_model.graphs(), strict=False):
        inferred_values = ir.convenience.create_value_mapping(inferred_graph)
        for name, value in ir.convenience.create_value_mapping(graph).items():
            inferred = inferred_values.get(name)
            if inferred is None or inferred.type is None:
                continue
            if value.type is None or type(value.type) is not type(inferred.type):
                value.type = inferred.type
                modified = True
            elif value.dtype != inferred.dtype and inferred.dtype is not None:
                value.dtype = inferred.dtype
                modified = True
            if inferred.shape is not None and value.shape != inferred.shape:
                value.shape = inferred.shape
                modified = True
    return modified


def _type_contrib_outputs(model: ir.Model) -> bool:
    modified = False
    for graph in model.graphs():
        for node in graph:
            rule = op_types.CONTRIB_TYPING.get((node.domain, node.op_type))
            if rule is None:
                if node.domain not in ("", "ai.onnx") and any(
                    v.dtype is None and v.name for v in node.outputs
                ):
                    for value, dtype in zip(
                        node.outputs, op_types.output_dtypes_from_inputs(node), strict=True
                    ):
                        if value.dtype is None and dtype is not None and value.name:
                            set_dtype(value, dtype)
                            modified = True
                continue
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


def _type_function_bodies(model: ir.Model) -> bool:
    """Type each local function's body from its call sites, when they all agree.

    Function bodies carry no types of their own. When every call passes the same input
    dtypes, those seed node-by-node onnx inference through the body; the function is then
    marked typed and converted like a subgraph (its interface stays as called).
    """
    if not model.functions:
        return False
    calls: dict[tuple[str, str, str], list[ir.Node]] = {}
    for graph in model.graphs():
        for node in graph:
            if node.op_identifier() in model.functions:
                calls.setdefault(node.op_identifier(), []).append(node)
    modified = False
    for key, function in model.functions.items():
        signatures = {
            tuple(None if v is None else v.dtype for v in node.inputs) for node in calls.get(key, ())
        }
        if len(signatures) != 1:
            continue
        (signature,) = signatures
        if None in signature or len(signature) != len(function.inputs):
            continue
        for value, dtype in zip(function.inputs, signature, strict=True):
            set_dtype(value, dtype)
        opset = ai_onnx_opset(function.opset_imports, ai_onnx_opset(model.opset_imports))
        for node in function.graph:
            _infer_node_types(node, opset)
        if all(value.dtype is not None for node in function.graph for value in node.outputs if value.name):
            function.meta[TYPED_FUNCTION_KEY] = True
            modified = True
    return modified


def _infer_node_types(node: ir.Node, opset: int) -> None:
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
