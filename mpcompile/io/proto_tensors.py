"""Every tensor an ONNX ``ModelProto`` holds, found on the protobuf before it becomes IR."""

from __future__ import annotations

import collections
import math
from collections.abc import Iterator

import onnx
import onnx_ir as ir

GraphLike = onnx.GraphProto | onnx.FunctionProto


def all_tensor_protos(model: onnx.ModelProto) -> Iterator[tuple[onnx.TensorProto, str]]:
    """(tensor, a label naming it) for every tensor of ``model``: initializers and sparse
    initializers (values and indices), and every tensor-valued attribute (Constant ``value`` and
    ``sparse_value`` among them) of every node, in the main graph, in subgraphs at any depth, in
    model-local function bodies (and their attribute defaults) and in training-info graphs."""
    pending: collections.deque[GraphLike] = collections.deque([model.graph, *model.functions])
    for info in model.training_info:
        pending.extend((info.initialization, info.algorithm))
    while pending:
        graph = pending.popleft()
        if isinstance(graph, onnx.GraphProto):
            for tensor in graph.initializer:
                yield tensor, f"initializer {tensor.name!r}"
            for sparse in graph.sparse_initializer:
                label = f"sparse initializer {sparse.values.name!r}"
                yield sparse.values, label
                yield sparse.indices, label
        owned = [(f"node {node.name or node.op_type!r}", a) for node in graph.node for a in node.attribute]
        if isinstance(graph, onnx.FunctionProto):
            owned += [(f"function {graph.name!r}", attribute) for attribute in graph.attribute_proto]
        for owner, attribute in owned:
            label = f"attribute {attribute.name!r} of {owner}"
            tensors = [*attribute.tensors, *([attribute.t] if attribute.HasField("t") else [])]
            sparse_tensors = [*attribute.sparse_tensors]
            if attribute.HasField("sparse_tensor"):
                sparse_tensors.append(attribute.sparse_tensor)
            for tensor in tensors:
                yield tensor, label
            for sparse in sparse_tensors:
                yield sparse.values, label
                yield sparse.indices, label
            if attribute.HasField("g"):
                pending.append(attribute.g)
            pending.extend(attribute.graphs)


def graph_protos(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph``, then its subgraphs (``If``/``Loop``/``Scan`` bodies) at any depth."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in (attribute.g,) if attribute.HasField("g") else attribute.graphs:
                yield from graph_protos(subgraph)


def tensor_nbytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes of the tensor's data by dtype and dims (2- and 4-bit types packed), or None where
    that is not fixed: strings, 6-bit types, dtypes outside the enum, negative dims."""
    try:
        bits = ir.DataType(tensor.data_type).bitwidth
    except (ValueError, TypeError):  # UNDEFINED, STRING, or a value outside the enum
        return None
    if (bits % 8 and bits not in PACKED_BITS) or any(dim < 0 for dim in tensor.dims):
        return None
    return (math.prod(tensor.dims) * bits + 7) // 8


def typed_field_entries(tensor: onnx.TensorProto) -> int | None:
    """How many entries the dtype's typed field (float_data, int32_data, ...) must hold for the
    tensor's dims, or None where that is not fixed."""
    try:
        bits = ir.DataType(tensor.data_type).bitwidth
    except TypeError:  # STRING: one string_data entry per element
        return math.prod(tensor.dims) if tensor.data_type == onnx.TensorProto.STRING else None
    except ValueError:
        return None
    elements = math.prod(tensor.dims)
    if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
        return 2 * elements
    if bits in PACKED_BITS:
        return (elements * bits + 7) // 8
    return elements


# Sub-byte types ONNX packs into bytes (raw_data) and into one int32_data entry per byte.
PACKED_BITS = (2, 4)
