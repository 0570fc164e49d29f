"""Infer the dtype of every value: onnx shape inference plus typing rules for contrib ops."""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir
import onnx_ir.passes.common

from mpcompile.io.model_io import TYPES_INFERRED_KEY, infer_shapes
from mpcompile.io.proto_tensors import graph_protos
from mpcompile.irtools.graphs import TYPED_FUNCTION_KEY, ai_onnx_opset, model_graphs
from mpcompile.irtools.values import set_dtype
from mpcompile.passes.base import ConversionPass
from mpcompile.policy.type_propagation import infer_node_types, propagate_types, type_contrib_node

logger = logging.getLogger(__name__)

# Initializers larger than this are left out of the proto given to onnx shape inference.
LARGE_TENSOR_BYTES = 1000


class InferTypesPass(ConversionPass):
    """Fill in value dtypes so precision decisions never guess.

    Runs onnx's shape inference (which cannot type contrib ops), then types the
    outputs of known contrib ops from their inputs and, where inference stopped at
    one, the nodes after it (``propagate_types``). Values that stay untyped are
    counted; nodes reading them are kept FP32 by the precision assignment.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        inference_failed = False
        inferred_at_load = bool(model.meta.get(TYPES_INFERRED_KEY))
        if not inferred_at_load and any(
            value.dtype is None for graph in model_graphs(model) for node in graph for value in node.outputs
        ):
            # Strips large initializers before serializing, so big models are not copied.
            inferred = _infer_shapes(model, self.context.notes)
            inference_failed = inferred is None
            modified = bool(inferred)
        modified |= _type_contrib_outputs(model)
        # Where inference failed (types that contradict each other) nothing is typed around it.
        if not inference_failed and _has_untyped_values(model):
            modified |= propagate_types(model)
        modified |= _type_function_bodies(model)
        self.context.stats.untyped_values = sum(
            1
            for graph in model_graphs(model)
            for node in graph
            for value in node.outputs
            if value.dtype is None and value.name
        )
        return ir.passes.PassResult(model, modified=modified)


def infer_once(model: ir.Model) -> bool:
    """The pass's onnx shape inference run on ``model`` in place, once for every copy converted
    from it (``--auto`` converts one copy per candidate): when some value is untyped and the
    inference succeeds, ``model`` is marked typed (``TYPES_INFERRED_KEY``, which
    ``convert_checked_ir`` passes on to its copy), so the pass on a copy does not infer again.
    Returns whether the model is marked."""
    if not any(
        value.dtype is None for graph in model_graphs(model) for node in graph for value in node.outputs
    ):
        return False  # nothing to infer: the pass skips the inference anyway
    if _infer_shapes(model, []) is None:
        model.meta.pop(TYPES_INFERRED_KEY, None)  # failed: each conversion fails again, with its note
        return False
    model.meta[TYPES_INFERRED_KEY] = True
    return True


def _has_untyped_values(model: ir.Model) -> bool:
    return any(
        value.dtype is None and value.name
        for graph in model_graphs(model)
        for node in graph
        for value in node.outputs
    )


def _infer_shapes(model: ir.Model, notes: list[str]) -> bool | None:
    """onnx shape inference merged back with whole types.

    onnx-ir 1.1.0's ShapeInferencePass merges only ``dtype``/``shape``, which turns an untyped
    sequence or optional value (e.g. SequenceConstruct's output inside an If branch) into a
    tensor: the saved model then fails the checker ("type case mismatch"). Here a value
    without a type (or with a type of another kind) takes the inferred type whole. Returns
    whether a type changed, or None when inference failed.

    A failure is a conversion note (printed with the summary, in ``--json``), not a log line:
    stderr carries only the one ``error:`` line of a failing command.
    """

    try:
        inferred_proto = _call_without_weights(infer_shapes, model)
    except Exception as exc:  # as ShapeInferencePass: leave the model as it is
        try:  # declared shapes that contradict inference (only the full checker refuses them)
            inferred_proto = _call_without_weights(
                lambda proto: infer_shapes(_without_declared_shapes(proto)), model
            )
        except Exception:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            notes.append(f"onnx shape inference failed ({message}); values it would type stay untyped")
            logger.debug("shape inference failed", exc_info=True)
            return None
        logger.info("strict shape inference failed (%s); typed with the declared shapes cleared", exc)
    modified = False
    for graph, inferred_types in zip(model_graphs(model), _value_types(inferred_proto.graph), strict=True):
        values = [*graph.inputs, *(output for node in graph for output in node.outputs)]
        for value in values:
            proto = inferred_types.get(value.name or "")
            if proto is None or not proto.HasField("value"):
                continue
            inferred = ir.serde.deserialize_type_proto_for_type(proto)
            if value.type is None or type(value.type) is not type(inferred):
                value.type = inferred
                modified = True
            elif inferred.dtype is not None and value.dtype != inferred.dtype:
                set_dtype(value, inferred.dtype)
                modified = True
            if value.shape is None and proto.HasField("tensor_type") and proto.tensor_type.HasField("shape"):
                value.shape = ir.serde.deserialize_type_proto_for_shape(proto)
                modified = True
    return modified


def _without_declared_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with the shapes declared for graph outputs and intermediate values cleared, in
    every graph: strict inference that fails only over those shapes then succeeds, with types as
    sure as ever (a declared type that contradicts inference still fails it)."""

    for graph in graph_protos(proto.graph):
        for info in (*graph.output, *graph.value_info):
            if info.type.HasField("tensor_type"):
                info.type.tensor_type.ClearField("shape")
    return proto


def _call_without_weights(func, model: ir.Model):
    """Call an onnx C++ API on the model with initializers turned into typed inputs and large
    tensor values left out, then restore the model exactly.

    onnx-ir 1.1.0's ``_c_api_utils.call_onnx_api`` does the same but checks each initializer
    against the input list (``initializer not in graph.inputs``): quadratic, 12 s of a
    52k-node conversion. Here membership is a set lookup.
    """
    graph = model.graph
    initializers = list(graph.initializers.values())
    inputs_before = list(graph.inputs)
    listed = {id(value) for value in inputs_before}
    stripped: list[tuple[ir.Value, ir.TensorProtocol | None]] = []
    for value in initializers:
        tensor = value.const_value
        if tensor is not None:
            if value.shape is None:
                value.shape = tensor.shape
            if value.dtype is None:
                set_dtype(value, tensor.dtype)
        if id(value) not in listed:
            graph.inputs.append(value)
        if tensor is None or tensor.nbytes > LARGE_TENSOR_BYTES:
            stripped.append((value, tensor))
            value.const_value = None
            graph.initializers.pop(value.name)
    try:
        return func(ir.serde.serialize_model(model))
    finally:
        for value, tensor in stripped:
            value.const_value = tensor
        graph.initializers.clear()  # back in their original order
        for value in initializers:
            graph.initializers.add(value)
        graph.inputs.clear()
        graph.inputs.extend(inputs_before)


def _value_types(graph: onnx.GraphProto) -> list[dict[str, onnx.TypeProto]]:
    """Each graph's inferred TypeProtos by value name, in ``model_graphs`` order (the graph, then its
    subgraphs depth first), read straight from the protobuf: deserializing the whole inferred model
    again would cost more than the inference itself. One table per graph, because sibling
    subgraphs may reuse names for values of different types (optimum's merged decoders do)."""
    types: dict[str, onnx.TypeProto] = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        types.setdefault(info.name, info.type)
    tables = [types]
    for node in graph.node:
        for attr in node.attribute:
            for subgraph in (attr.g,) if attr.HasField("g") else attr.graphs:
                tables.extend(_value_types(subgraph))
    return tables


def _type_contrib_outputs(model: ir.Model) -> bool:
    modified = False
    opset = ai_onnx_opset(model.opset_imports)
    for graph in model_graphs(model):
        for node in graph:
            modified |= type_contrib_node(node, opset)
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
    for graph in model_graphs(model):
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
            infer_node_types(node, opset)
        if all(value.dtype is not None for node in function.graph for value in node.outputs if value.name):
            function.meta[TYPED_FUNCTION_KEY] = True
            modified = True
    return modified
