"""How much memory a run that keeps every intermediate needs, estimated from shapes alone.

``--auto``'s reference run and ``report --numerics`` expose every main-graph value, so they hold
all of them at once: the estimate is the sum of the sizes of the inputs and of every node output
whose shape onnx shape inference makes static for the chosen input shapes. It is checked against
``mpcompile.evaluate.memory_limit`` before anything runs, so a model asking for a 20 GB
intermediate is refused in one line instead of exhausting the machine. Values whose shape stays
unknown count zero. A run holds each value more than once (ONNX Runtime's arena, the numpy copy
it returns, a candidate's run beside the reference), so the sum is multiplied by
``RUN_OVERHEAD``, measured: a Relu chain on 1.6 GB inputs peaked at about 3x the sum of its values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import onnx
import onnx_ir as ir

from mpcompile.evaluate import memory_limit
from mpcompile.evaluate.ort_session import tensors_swapped
from mpcompile.evaluate.shapes import static_shape

RUN_OVERHEAD = 3
LARGE_TENSOR_BYTES = 1000  # initializers onnx-ir's shape inference leaves out of the proto (data too)
_LEFT_OUT = "__mpcompile_left_out__"  # a stand-in for bytes never read


def values_bytes(model: ir.Model) -> int:
    """``RUN_OVERHEAD`` times the bytes of the main graph's inputs and node outputs that have a
    static shape and a dtype."""
    values = [*model.graph.inputs, *(value for node in model.graph for value in node.outputs)]
    return RUN_OVERHEAD * sum(_value_bytes(value) for value in values)


def run_bytes(
    model: ir.Model, input_shapes: Mapping[str, Sequence[int]], *, proto: onnx.ModelProto | None = None
) -> int:
    """The estimate for ``model`` fed arrays of ``input_shapes`` (``model`` is not modified).

    ``proto``: ``model`` serialized already, its initializers with or without their bytes
    (``faithful.serialize_reference``); copied, not changed. Else ``model`` is serialized here,
    without the bytes of its large weights.

    What onnx-ir's ``ShapeInferencePass`` (lenient, with data propagation) gives on a copy of
    ``model`` whose inputs have those shapes and whose values between nodes have none, worked on
    the protobuf: neither a copy of the model nor a second serialization to read results back."""
    if proto is None:
        probe = _serialize_light(model)
    else:
        probe = onnx.ModelProto()
        probe.CopyFrom(proto)
    graph = probe.graph
    outputs = {value.name for value in model.graph.outputs}
    forget = {value.name for node in model.graph for value in node.outputs if value.name not in outputs}
    for info in graph.value_info:  # forget the exporter's symbolic shapes: inference gives the real ones
        if info.name in forget and info.type.HasField("tensor_type"):
            info.type.tensor_type.ClearField("shape")
    for info in graph.input:
        if info.name in input_shapes and info.type.HasField("tensor_type"):
            shape = info.type.tensor_type.shape
            shape.Clear()
            for dim in input_shapes[info.name]:
                shape.dim.add().dim_value = dim
    _initializers_as_inputs(model, graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(
            probe, check_type=False, strict_mode=False, data_prop=True
        )
    except Exception:  # as ShapeInferencePass: the shapes stay as they were
        inferred = probe
    types = {info.name: info.type for info in (*inferred.graph.value_info, *inferred.graph.output)}
    total = 0
    for value in model.graph.inputs:
        shape = tuple(input_shapes[value.name]) if value.name in input_shapes else _dims(value.shape)
        total += _bytes(shape, value.dtype)
    for node in model.graph:
        for value in node.outputs:
            shape = None if value.name in forget else _dims(value.shape)
            dtype = value.dtype
            inferred_type = types.get(value.name) if value.name else None
            if inferred_type is not None:  # merged as ShapeInferencePass merges: what it inferred wins
                shape, dtype = _merged(inferred_type, shape, dtype)
            total += _bytes(shape, dtype)
    return RUN_OVERHEAD * total


_SYMBOLIC = ("symbolic",)  # a shape with a dim that is not a number: counts zero


def _dims(shape: ir.Shape | None) -> tuple | None:
    if shape is None:
        return None
    dims = tuple(shape)
    return dims if all(isinstance(dim, int) for dim in dims) else _SYMBOLIC


def _merged(
    inferred: onnx.TypeProto, shape: tuple | None, dtype: ir.DataType | None
) -> tuple[tuple | None, ir.DataType | None]:
    """The shape and dtype after merging an inferred type: each replaced where it says something
    (read from the proto for tensors; onnx-ir's deserializers for other types)."""
    if inferred.HasField("tensor_type"):
        tensor_type = inferred.tensor_type
        if tensor_type.HasField("shape"):
            dims = tensor_type.shape.dim
            numbers = all(dim.HasField("dim_value") for dim in dims)
            shape = tuple(dim.dim_value for dim in dims) if numbers else _SYMBOLIC
        if tensor_type.HasField("elem_type"):
            dtype = ir.DataType(tensor_type.elem_type)
        return shape, dtype
    inferred_shape = ir.serde.deserialize_type_proto_for_shape(inferred)
    if inferred_shape is not None:
        shape = _dims(inferred_shape)
    type_ = ir.serde.deserialize_type_proto_for_type(inferred)
    if type_ is not None and type_.dtype is not None:
        dtype = type_.dtype
    return shape, dtype


def _serialize_light(model: ir.Model) -> onnx.ModelProto:
    """``model`` serialized without the bytes of its main-graph initializers above
    ``LARGE_TENSOR_BYTES`` (inference needs no more) and with the small external ones read."""
    stand_ins: dict[ir.Value, ir.TensorProtocol] = {}
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None:
            continue
        if tensor.nbytes > LARGE_TENSOR_BYTES:
            stand_ins[value] = ir.ExternalTensor(
                _LEFT_OUT, 0, tensor.nbytes, tensor.dtype, shape=tensor.shape, name=value.name
            )
        elif isinstance(tensor, ir.ExternalTensor):
            (stand_ins[value],) = ir.external_data.convert_tensors_from_external([tensor])
    with tensors_swapped(stand_ins):
        return ir.serde.serialize_model(model)


def _initializers_as_inputs(model: ir.Model, graph: onnx.GraphProto) -> None:
    """As onnx-ir's ``call_onnx_api`` serializes for inference: every main-graph initializer is
    also an input (typed from its tensor), and those above ``LARGE_TENSOR_BYTES`` lose their data."""
    listed = {info.name for info in graph.input}
    serialized = {tensor.name: tensor for tensor in graph.initializer}
    dropped = set()
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if value.name not in listed:
            _add_input_info(graph, value, serialized.get(value.name))
        if tensor is None or tensor.nbytes > LARGE_TENSOR_BYTES:
            dropped.add(value.name)
    if dropped:
        kept = [tensor for tensor in graph.initializer if tensor.name not in dropped]
        del graph.initializer[:]
        graph.initializer.extend(kept)


def _add_input_info(graph: onnx.GraphProto, value: ir.Value, serialized: onnx.TensorProto | None) -> None:
    """An initializer as a typed input of ``graph``: its value's type and shape, else its tensor's."""
    tensor = value.const_value
    shape = value.shape if value.shape is not None or tensor is None else tensor.shape
    dtype = value.dtype if value.dtype is not None or tensor is None else tensor.dtype
    if (
        serialized is not None
        and dtype is not None
        and shape is not None
        and int(dtype) == serialized.data_type
        and tuple(shape) == tuple(serialized.dims)
    ):  # written from the serialized tensor, in place: the same ValueInfo, without the IR's per-dim work
        info = graph.input.add(name=value.name)
        tensor_type = info.type.tensor_type
        tensor_type.elem_type = serialized.data_type
        tensor_type.shape.SetInParent()
        for dim in serialized.dims:
            tensor_type.shape.dim.add(dim_value=dim)
        return
    typed = ir.Value(
        name=value.name,
        type=value.type if value.dtype is not None or tensor is None else ir.TensorType(tensor.dtype),
        shape=shape,
    )
    graph.input.append(ir.serde.serialize_value(typed))


def _bytes(shape: tuple | None, dtype: ir.DataType | None) -> int:
    if shape is None or shape is _SYMBOLIC or dtype is None:
        return 0
    try:
        itemsize = dtype.itemsize
    except (AttributeError, TypeError, ValueError):
        return 0
    return math.prod(max(dim, 0) for dim in shape) * math.ceil(itemsize)


def check_run_fits(model: ir.Model, input_shapes: Mapping[str, Sequence[int]], what: str) -> None:
    """Refuse (``TooLargeError``, exit 17) a run whose estimate is above the memory limit."""
    if memory_limit.memory_limit() is None:
        return
    memory_limit.check_fits(run_bytes(model, input_shapes), what)


def _value_bytes(value: ir.Value) -> int:
    shape = static_shape(value)
    if shape is None or value.dtype is None:
        return 0
    try:
        itemsize = value.dtype.itemsize
    except (AttributeError, TypeError, ValueError):
        return 0
    return math.prod(max(dim, 0) for dim in shape) * math.ceil(itemsize)
