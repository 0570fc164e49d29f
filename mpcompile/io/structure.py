"""Structural checks of a parsed ONNX model, before it becomes IR.

``onnx.checker`` misses some of these, and onnx-ir and the passes would otherwise meet them as
internal errors: cycles and self-loops, nodes out of topological order, a value defined twice (two
producers, a node output that is a graph input or an initializer), reads of undefined values,
graph outputs nothing produces, empty names, input/output counts outside an op's schema, unknown
or UNDEFINED dtypes (also in dtype attributes such as Cast's ``to``), negative dims, tensors whose
data does not fit their dims, sparse tensors (onnx-ir cannot hold them), and value_info or declared
dtypes that contradict an initializer, a graph input/output, the inferred type or a node's schema.
Each is refused (``InvalidModelError``, exit 12) with one line naming the node or value.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence, Set

import onnx
import onnx_ir as ir
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from mpcompile import errors
from mpcompile.io.proto_tensors import all_tensor_protos, tensor_nbytes, typed_field_entries
from mpcompile.irtools.graphs import all_graphs, model_graphs

GraphLike = onnx.GraphProto | onnx.FunctionProto
# Names visible in a graph: its own definitions, then those of each enclosing graph.
Scopes = tuple[dict[str, str], ...]
# The location given to the stand-ins of weights in check_ir_structure; never opened.
STAND_IN_LOCATION = "mpcompile-structure-check"
# ai.onnx attributes holding a dtype (Cast's to, RandomNormal's dtype, QuantizeLinear's output_dtype, ...)
DTYPE_ATTRIBUTES = frozenset({"to", "dtype", "output_dtype"})
# onnx looks schemas up with a C int: a larger opset version is no real one.
MAX_OPSET_VERSION = (1 << 31) - 1
KNOWN_DTYPES = frozenset(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}


def check_structure(model: onnx.ModelProto) -> None:
    """Raise ``InvalidModelError`` (one line naming the node or value) for a malformed model, or
    one holding sparse tensors (onnx-ir 1.1 cannot)."""
    if _may_hold_non_text(model):
        _check_text_fields(model, "model")  # the slower walk that names the field
    for tensor, label in all_tensor_protos(model):
        _check_tensor(tensor, label)
    seen: set[tuple[str, str, str]] = set()
    for function in model.functions:
        key = (function.domain, function.name, function.overload)
        if key in seen:
            raise _invalid(f"function {function.domain}::{function.name} is defined twice")
        seen.add(key)
    for function in model.functions:
        where = f" in function {function.name!r}"
        _check_graph(function, (), where, main=False, opsets=_opsets(function, where), functions=seen)
    _check_graph(model.graph, (), "", main=True, opsets=_opsets(model, ""), functions=seen)


def _may_hold_non_text(model: onnx.ModelProto) -> bool:
    """False when no string field of ``model`` holds bytes that are not UTF-8 (True: maybe one
    does; ``_check_text_fields`` says which). The model is parsed again as proto3 messages, whose
    string fields protobuf validates while parsing: the main graph's initializers one by one (one
    weight's bytes copied at a time), the rest at once. That is C work, where ``_holds_non_text``
    walks every field in Python (0.56 s against 0.04 s on a 26,000-node graph)."""
    strict = _strict_messages()
    if strict is None:  # a protobuf runtime that cannot build them
        return _holds_non_text(model)
    strict_model, strict_tensor = strict
    skeleton = onnx.ModelProto()
    try:  # setting a string field to bytes that are not UTF-8 may raise
        _copy_fields(model, skeleton, skip=frozenset({"graph"}))
        if model.HasField("graph"):
            _copy_fields(model.graph, skeleton.graph, skip=frozenset({"initializer"}))
    except Exception:
        return True
    return not _parses(strict_model, skeleton.SerializeToString()) or not all(
        _parses(strict_tensor, tensor.SerializeToString()) for tensor in model.graph.initializer
    )


def _copy_fields(source: Message, target: Message, skip: Set[str]) -> None:
    """Copy the fields set in ``source`` but those named in ``skip`` into the empty ``target``."""
    for field, value in source.ListFields():
        if field.name in skip:
            continue
        if _is_repeated(field):
            getattr(target, field.name).extend(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _parses(message_class, data: bytes) -> bool:
    try:
        message_class.FromString(data)
    except Exception:  # DecodeError (bad UTF-8) or any other refusal: the slow walk decides
        return False
    return True


@functools.cache
def _strict_messages():
    """ModelProto and TensorProto classes of onnx's schema as proto3 (which validates UTF-8 in
    string fields while parsing, where proto2 reads such bytes back as ``bytes``), or None."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    package = "mpcompile.utf8check"
    try:
        file = descriptor_pb2.FileDescriptorProto()
        onnx.ModelProto.DESCRIPTOR.file.CopyToProto(file)
        if file.dependency or file.extension or file.service:
            return None
        original = "." + file.package + "."
        file.name, file.package, file.syntax = f"{package}/{file.name}", f"{package}.{file.package}", "proto3"

        def as_proto3(message: descriptor_pb2.DescriptorProto) -> bool:
            if message.extension_range or message.extension:
                return False
            for field in message.field:
                if field.label == field.LABEL_REQUIRED or field.HasField("default_value"):
                    return False
                if field.type_name.startswith(original):
                    field.type_name = f".{package}.{field.type_name[1:]}"
            return all(map(as_proto3, message.nested_type))

        if not all(map(as_proto3, file.message_type)):
            return None
        pool = descriptor_pool.DescriptorPool()
        pool.Add(file)
        prefix = file.package
        return tuple(
            message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{prefix}.{name}"))
            for name in ("ModelProto", "TensorProto")
        )
    except Exception:  # any failure leaves the check to the Python walk
        return None


def _holds_non_text(message: Message) -> bool:
    """Whether a string field anywhere in ``message`` holds bytes that are not UTF-8 (read back as
    ``bytes``). ``ListFields`` visits only the fields that are set, which makes this walk several
    times faster than ``_check_text_fields`` on graphs of many nodes; tensors are read field by
    field, so no weight's ``raw_data`` is copied."""
    stack = [message]
    while stack:
        current = stack.pop()
        if current.DESCRIPTOR is _TENSOR_DESCRIPTOR:
            fields = [
                (field, getattr(current, field.name))
                for field in _text_and_message_fields(_TENSOR_DESCRIPTOR)
                if _is_repeated(field) or current.HasField(field.name)
            ]
        else:
            fields = current.ListFields()
        for field, value in fields:
            kind = field.type
            if kind == FieldDescriptor.TYPE_MESSAGE:
                if _is_repeated(field):
                    stack.extend(value)
                else:
                    stack.append(value)
            elif kind == FieldDescriptor.TYPE_STRING and any(
                isinstance(text, bytes) for text in (value if _is_repeated(field) else (value,))
            ):
                return True
    return False


_TENSOR_DESCRIPTOR = onnx.TensorProto.DESCRIPTOR


def _check_text_fields(message: Message, where: str) -> None:
    """Every string field holds UTF-8: protobuf parses a proto2 string from any bytes (it then
    reads back as ``bytes``), and onnx-ir fails on it when writing the model. Only string and
    message fields are read, so no weight's ``raw_data`` is copied."""
    for field in _text_and_message_fields(message.DESCRIPTOR):
        repeated = _is_repeated(field)
        if not repeated and field.type == FieldDescriptor.TYPE_MESSAGE and not message.HasField(field.name):
            continue
        value = getattr(message, field.name)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for index, child in enumerate(value if repeated else [value]):
                _check_text_fields(
                    child, f"{where}.{field.name}[{index}]" if repeated else f"{where}.{field.name}"
                )
        elif any(isinstance(text, bytes) for text in (value if repeated else [value])):
            raise _invalid(f"{where}.{field.name} holds bytes that are not UTF-8 text")


@functools.lru_cache(maxsize=64)
def _text_and_message_fields(descriptor) -> tuple[FieldDescriptor, ...]:
    kinds = (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE)
    return tuple(field for field in descriptor.fields if field.type in kinds)


@functools.lru_cache(maxsize=256)
def _is_repeated(field: FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)  # newer protobuf: `label` is gone
    if repeated is not None:
        return bool(repeated() if callable(repeated) else repeated)
    return field.label == FieldDescriptor.LABEL_REPEATED


def check_ir_structure(model: ir.Model) -> None:
    """``check_structure`` for an in-memory IR model (not modified): a copy is serialized with each
    initializer described as external data, so no weight is copied."""
    _check_ir_order(model)  # before cloning: clone() fails on nodes out of order
    light = model.clone()  # new values sharing the tensors: replacing const_value here is harmless
    for graph in (*model_graphs(light), *(function.graph for function in light.functions.values())):
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is not None and not isinstance(tensor, ir.StringTensor):
                value.const_value = ir.ExternalTensor(
                    STAND_IN_LOCATION, 0, tensor.nbytes, tensor.dtype, shape=tensor.shape, name=value.name
                )
    check_structure(ir.to_proto(light))


def _check_ir_order(model: ir.Model) -> None:
    """Every node of an IR model reads only values produced before it in its graph."""
    for graph in (*model_graphs(model), *(function.graph for function in model.functions.values())):
        seen: set[int] = set()
        for node in graph:
            for value in node.inputs:
                producer = value.producer() if value is not None else None
                if producer is None or producer.graph is not graph or id(producer) in seen:
                    continue
                read = (
                    f"its own output {value.name!r}"
                    if producer is node
                    else f"{value.name!r} before node {producer.name!r} produces it"
                )
                raise _invalid(
                    f"node {node.name!r} reads {read}: nodes must be in topological order, without cycles"
                )
            seen.add(id(node))


def check_declared_types(model: ir.Model) -> None:
    """For a model onnx could not type: refuse a node whose declared input and output dtypes
    contradict its schema (two dtypes bound to one type variable), which VerifyPass would
    otherwise meet as an internal error after converting."""
    from mpcompile.policy.op_types import type_variable_conflict

    for graph, opset in all_graphs(model):
        for node in graph:
            conflict = type_variable_conflict(node, opset, model.opset_imports)
            if conflict is not None:
                raise _invalid(f"{conflict}, as the model declares them")


def check_value_info_against_inference(
    model: onnx.ModelProto, infer: Callable[[onnx.ModelProto], onnx.ModelProto]
) -> None:
    """For a model whose shape inference failed: when inference without the declared value_info
    succeeds, refuse the first value_info whose type differs from the one inferred for its value."""
    if not any(graph.value_info for graph in _graphs(model.graph)):
        return
    stripped = copy.deepcopy(model)
    for graph in _graphs(stripped.graph):
        del graph.value_info[:]
    try:
        inferred = infer(stripped)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError, ValueError):
        return  # the failure is not the value_info's
    # Graph by graph: sibling subgraphs may use one name for values of different types.
    for graph, inferred_graph in zip(_graphs(model.graph), _graphs(inferred.graph), strict=True):
        found_types = {info.name: info.type for info in (*inferred_graph.value_info, *inferred_graph.output)}
        for info in graph.value_info:
            found = found_types.get(info.name)
            if (
                found is not None
                and _type_key(found) is not None
                and _type_key(found) != _type_key(info.type)
            ):
                raise _invalid(
                    f"value {info.name!r}: value_info declares {_type_text(info.type)} but its producer "
                    f"outputs {_type_text(found)}"
                )


def _check_graph(
    graph: GraphLike,
    outer: Scopes,
    where: str,
    main: bool,
    opsets: dict[str, int],
    functions: Set[tuple[str, str, str]] = frozenset(),
) -> None:
    """Names defined once and before use, node by node, subgraphs with this graph in scope;
    ``functions``: the (domain, name, overload) of the model's local functions."""
    defined: dict[str, str] = {}  # name -> what defines it ("" + index for a node, formatted lazily)
    scopes = (defined, *outer)

    def visible(name: str) -> bool:
        return name in defined or any(name in scope for scope in outer)

    def define(name: str, what: str) -> None:
        if not name:
            raise _invalid(f"{_what(graph, what)}{where} has an empty name")
        previous = defined.get(name) or next((scope[name] for scope in outer if name in scope), None)
        if previous is not None:
            first, second = _what(graph, previous), _what(graph, what)
            raise _invalid(f"value {name!r}{where} is defined twice: by {first} and by {second}")
        defined[name] = what

    declared: dict[str, onnx.TypeProto] = {}
    if isinstance(graph, onnx.FunctionProto):
        for name in graph.input:
            define(name, "a function input")
    else:
        _define_inputs_and_initializers(graph, define, declared, where, main)
    for index, node in enumerate(graph.node):
        if not node.op_type:
            raise _invalid(f"node {_node_label(node, index)}{where} has no op_type")
        inputs, outputs = node.input, node.output
        _check_arity(node, index, inputs, outputs, where, opsets)
        if node.overload and (node.domain, node.op_type, node.overload) not in functions:
            raise _invalid(
                f"node {_node_label(node, index)}{where} calls overload {node.overload!r} of "
                f"{node.domain or 'ai.onnx'}::{node.op_type}, which no local function defines"
            )
        for name in inputs:
            if name and not visible(name):
                raise _read_error(graph, index, name, where)
        for attribute in node.attribute:
            _check_attribute(graph, index, attribute, scopes, where, opsets, functions)
        for name in outputs:
            if name:
                define(name, f"\0{index}")
    outputs = graph.output if isinstance(graph, onnx.FunctionProto) else [info.name for info in graph.output]
    listed: set[str] = set()
    for position, name in enumerate(outputs):
        if not name:
            raise _invalid(f"graph output #{position}{where} has an empty name")
        if name in listed:
            raise _invalid(f"graph output {name!r}{where} is listed twice")
        listed.add(name)
        if not visible(name):
            raise _invalid(f"graph output {name!r}{where} is not produced by any node, input or initializer")
    if isinstance(graph, onnx.GraphProto):
        for info in graph.output:
            _check_declared_type(info, "graph output", where, required=main)
            _check_agrees(info, declared.get(info.name), "graph output", where)
            declared.setdefault(info.name, info.type)
        for info in graph.value_info:
            _check_declared_type(info, "value_info of", where, required=False)
            _check_agrees(info, declared.get(info.name), "value_info of", where)


def _check_attribute(
    graph: GraphLike,
    index: int,
    attribute: onnx.AttributeProto,
    scopes: Scopes,
    where: str,
    opsets: dict[str, int],
    functions: Set[tuple[str, str, str]],
) -> None:
    """The attribute type the op's schema declares, a dtype attribute names a known dtype, no
    sparse tensor, and each subgraph checked in scope."""
    node = graph.node[index]
    kind = attribute.type
    _check_attribute_type(node, index, attribute, where, opsets)
    if (
        kind == onnx.AttributeProto.INT
        and attribute.name in DTYPE_ATTRIBUTES
        and node.domain in ("", "ai.onnx")
    ):
        _check_dtype(attribute.i, f"attribute {attribute.name!r} of node {_node_label(node, index)}{where}")
    elif kind in (onnx.AttributeProto.SPARSE_TENSOR, onnx.AttributeProto.SPARSE_TENSORS):
        raise _invalid(
            f"attribute {attribute.name!r} of node {_node_label(node, index)}{where}: sparse tensors are "
            "not supported; store it dense"
        )
    elif kind in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        for subgraph in [attribute.g] if kind == onnx.AttributeProto.GRAPH else attribute.graphs:
            inner = (
                f" in subgraph {subgraph.name or attribute.name!r} of node {_node_label(node, index)}{where}"
            )
            _check_graph(subgraph, scopes, inner, main=False, opsets=opsets, functions=functions)


def _check_attribute_type(
    node: onnx.NodeProto, index: int, attribute: onnx.AttributeProto, where: str, opsets: dict[str, int]
) -> None:
    """An attribute of a type other than its schema's (Cast ``to`` given as a string) is refused:
    onnx's checker lets it through and every reader of the attribute would fail on it."""
    domain = "" if node.domain == "ai.onnx" else node.domain
    if attribute.ref_attr_name or domain not in opsets:
        return
    expected = _schema_attribute_types(node.op_type, domain, opsets[domain]).get(attribute.name)
    if expected is not None and attribute.type != expected:
        given = onnx.AttributeProto.AttributeType.Name(attribute.type)
        want = onnx.AttributeProto.AttributeType.Name(expected)
        raise _invalid(
            f"attribute {attribute.name!r} of node {_node_label(node, index)}{where} ({node.op_type}) "
            f"is {given}; its schema takes {want}"
        )


@functools.lru_cache(maxsize=4096)
def _schema_attribute_types(op_type: str, domain: str, opset: int) -> dict[str, int]:
    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except onnx.defs.SchemaError:
        return {}
    return {name: int(attribute.type) for name, attribute in schema.attributes.items()}


def _what(graph: GraphLike, what: str) -> str:
    """What defines a value: a description, or ``\\0`` and the index of the node."""
    if what.startswith("\0"):
        index = int(what[1:])
        return f"node {_node_label(graph.node[index], index)}"
    return what


def _define_inputs_and_initializers(
    graph: onnx.GraphProto,
    define: Callable[[str, str], None],
    declared: dict[str, onnx.TypeProto],
    where: str,
    main: bool,
) -> None:
    """Graph inputs, then initializers (one may give an input its default value)."""
    for info in graph.input:
        _check_declared_type(info, "graph input", where, required=main)
        define(info.name, "a graph input")
        declared[info.name] = info.type
    if graph.sparse_initializer:
        name = graph.sparse_initializer[0].values.name
        raise _invalid(
            f"sparse initializer {name!r}{where}: sparse tensors are not supported; store it dense"
        )
    defaults: set[str] = set()
    for tensor in graph.initializer:
        typed = onnx.helper.make_tensor_type_proto(tensor.data_type, list(tensor.dims))
        if tensor.name in declared and tensor.name not in defaults:
            _check_agrees_with_initializer(declared[tensor.name], tensor, "graph input", where)
            defaults.add(tensor.name)
            continue
        define(tensor.name, "an initializer")
        declared[tensor.name] = typed
        defaults.add(tensor.name)


def _opsets(owner: onnx.ModelProto | onnx.FunctionProto, where: str) -> dict[str, int]:
    for entry in owner.opset_import:
        if not 0 <= entry.version <= MAX_OPSET_VERSION:
            raise _invalid(
                f"opset_import{where} gives domain {entry.domain or 'ai.onnx'!r} version {entry.version}, "
                f"outside 0..{MAX_OPSET_VERSION}"
            )
    opsets = {entry.domain: entry.version for entry in owner.opset_import}
    if "ai.onnx" in opsets:
        opsets.setdefault("", opsets["ai.onnx"])
    return opsets


def _check_arity(
    node: onnx.NodeProto,
    index: int,
    inputs: Sequence[str],
    outputs: Sequence[str],
    where: str,
    opsets: dict[str, int],
) -> None:
    """For ops onnx has a schema for: as many inputs and outputs as the schema allows, and a name
    for every input or output it requires (the passes assume both)."""
    domain = "" if node.domain == "ai.onnx" else node.domain
    if domain not in opsets:
        return  # the checker reports the missing opset import
    arity = _schema_arity(node.op_type, domain, opsets[domain])
    if arity is None:
        return  # unknown ops are ort_loadable's and the checker's to refuse
    for kind, names, (low, high, formals) in (("inputs", inputs, arity[0]), ("outputs", outputs, arity[1])):
        if not low <= len(names) <= high:
            allowed = (
                str(low) if low == high else f"at least {low}" if high > low + 1000 else f"{low} to {high}"
            )
            label = f"node {_node_label(node, index)}{where}"
            raise _invalid(f"{label} ({node.op_type}) has {len(names)} {kind}; its schema allows {allowed}")
        if "" not in names:
            continue
        for position, name in enumerate(names):
            formal, single = formals[min(position, len(formals) - 1)] if formals else ("", False)
            if not name and single:
                label = f"node {_node_label(node, index)}{where}"
                raise _invalid(f"{label} ({node.op_type}): {kind[:-1]} {position} ({formal}) needs a name")


Arity = tuple[int, int, tuple[tuple[str, bool], ...]]  # min, max, (name, required) per formal


@functools.lru_cache(maxsize=4096)
def _schema_arity(op_type: str, domain: str, opset: int) -> tuple[Arity, Arity] | None:
    """The input and output arity of the schema onnx resolves, or None when it has none."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except onnx.defs.SchemaError:
        return None
    single = onnx.defs.OpSchema.FormalParameterOption.Single
    inputs = tuple((formal.name, formal.option == single) for formal in schema.inputs)
    outputs = tuple((formal.name, formal.option == single) for formal in schema.outputs)
    return (schema.min_input, schema.max_input, inputs), (schema.min_output, schema.max_output, outputs)


def _read_error(graph: GraphLike, index: int, name: str, where: str) -> Exception:
    """Why node ``index`` cannot read ``name``: undefined, a cycle, or nodes out of order."""
    producers: dict[str, int] = {}
    for position, other in enumerate(graph.node):
        for output in other.output:
            producers.setdefault(output, position)
    node = graph.node[index]
    label = _node_label(node, index)
    producer = producers.get(name)
    if producer is None:
        return _invalid(
            f"node {label}{where} reads {name!r}, which no node, graph input or initializer defines"
        )
    if producer == index:
        return _invalid(f"node {label}{where} reads its own output {name!r}: the graph has a cycle")
    producer_label = _node_label(graph.node[producer], producer)
    if _depends_on(graph, producer, index, producers):
        return _invalid(
            f"node {label}{where} reads {name!r} from node {producer_label}, which depends on an output "
            f"of node {label}: the graph has a cycle"
        )
    return _invalid(
        f"node {label}{where} reads {name!r} before node {producer_label} produces it: nodes must be in "
        "topological order"
    )


def _depends_on(graph: GraphLike, start: int, target: int, producers: dict[str, int]) -> bool:
    """Whether node ``start`` reads, directly or not, an output of node ``target``."""
    pending, seen = [start], {start}
    while pending:
        for name in graph.node[pending.pop()].input:
            producer = producers.get(name)
            if producer == target:
                return True
            if producer is not None and producer not in seen:
                seen.add(producer)
                pending.append(producer)
    return False


def _check_tensor(tensor: onnx.TensorProto, label: str) -> None:
    """A known dtype, no negative dims, and (when embedded) data that fits the dims."""
    _check_dtype(tensor.data_type, label)
    if any(dim < 0 for dim in tensor.dims):
        raise _invalid(f"{label} has a negative dimension in {list(tensor.dims)}")
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return  # io.check_external_data checks the file's extent
    if tensor.HasField("raw_data"):
        needed = tensor_nbytes(tensor)
        if tensor.data_type == onnx.TensorProto.STRING:
            raise _invalid(f"{label}: a string tensor cannot hold raw_data")
        if needed is not None and len(tensor.raw_data) != needed:
            raise _invalid(
                f"{label} holds {len(tensor.raw_data)} bytes but its dtype and dims {list(tensor.dims)} "
                f"need {needed}"
            )
        return
    entries = typed_field_entries(tensor)
    field = onnx.helper.tensor_dtype_to_field(tensor.data_type)
    held = len(getattr(tensor, field))
    if entries is not None and held != entries:
        raise _invalid(f"{label} holds {held} values but its dims {list(tensor.dims)} need {entries}")


def _check_dtype(dtype: int, label: str) -> None:
    if dtype == onnx.TensorProto.UNDEFINED:
        raise _invalid(f"{label} has dtype UNDEFINED")
    if dtype not in KNOWN_DTYPES:
        raise _invalid(f"{label} has an unknown dtype ({dtype})")


def _check_declared_type(info: onnx.ValueInfoProto, what: str, where: str, required: bool) -> None:
    label = f"{what} {info.name!r}{where}"
    if not info.HasField("type") or info.type.WhichOneof("value") is None:
        if required:
            raise _invalid(f"{label} has no type")
        return
    _check_type(info.type, label)


def _check_type(type_proto: onnx.TypeProto, label: str) -> None:
    """Every element type in a (possibly nested) type is a known dtype."""
    kind = type_proto.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        _check_dtype(getattr(type_proto, kind).elem_type, label)
    elif kind in ("sequence_type", "optional_type"):
        inner = getattr(type_proto, kind)
        if inner.HasField("elem_type"):
            _check_type(inner.elem_type, label)
    elif kind == "map_type":
        _check_dtype(type_proto.map_type.key_type, label)
        _check_type(type_proto.map_type.value_type, label)


def _check_agrees(info: onnx.ValueInfoProto, other: onnx.TypeProto | None, what: str, where: str) -> None:
    """A second declaration of a value's type (value_info, graph output) matches the first."""
    if other is None or not info.HasField("type"):
        return
    mine, theirs = _type_key(info.type), _type_key(other)
    if mine is not None and theirs is not None and mine != theirs:
        raise _invalid(
            f"{what} {info.name!r}{where} declares {_type_text(info.type)}, but the value is "
            f"{_type_text(other)}"
        )


def _check_agrees_with_initializer(
    declared: onnx.TypeProto, tensor: onnx.TensorProto, what: str, where: str
) -> None:
    key = _type_key(declared)
    if key is not None and key != ("tensor_type", tensor.data_type):
        raise _invalid(
            f"{what} {tensor.name!r}{where} declares {_type_text(declared)}, but its initializer is "
            f"{onnx.TensorProto.DataType.Name(tensor.data_type).lower()}"
        )


def _type_key(type_proto: onnx.TypeProto) -> tuple | None:
    """The kind and element types of a type (shapes left out), None where unknown."""
    kind = type_proto.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        elem = getattr(type_proto, kind).elem_type
        return (kind, elem) if elem else None
    if kind in ("sequence_type", "optional_type"):
        inner = getattr(type_proto, kind)
        return (kind, _type_key(inner.elem_type)) if inner.HasField("elem_type") else None
    if kind == "map_type":
        return (kind, type_proto.map_type.key_type, _type_key(type_proto.map_type.value_type))
    return None


def _type_text(type_proto: onnx.TypeProto) -> str:
    """A type as ONNX spells it (``tensor(float)``, ``seq(tensor(int64))``)."""
    kind = type_proto.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        elem = getattr(type_proto, kind).elem_type
        name = onnx.TensorProto.DataType.Name(elem).lower() if elem in KNOWN_DTYPES else str(elem)
        return f"{'tensor' if kind == 'tensor_type' else 'sparse_tensor'}({name})"
    if kind in ("sequence_type", "optional_type"):
        inner = getattr(type_proto, kind)
        text = _type_text(inner.elem_type) if inner.HasField("elem_type") else "?"
        return f"{'seq' if kind == 'sequence_type' else 'optional'}({text})"
    if kind == "map_type":
        key = onnx.TensorProto.DataType.Name(type_proto.map_type.key_type).lower()
        return f"map({key}, {_type_text(type_proto.map_type.value_type)})"
    return "no type"


def _graphs(graph: GraphLike) -> list[GraphLike]:
    """``graph`` and every subgraph in it, at any depth."""
    found = [graph]
    for node in graph.node:
        for attribute in node.attribute:
            nested = [attribute.g] if attribute.HasField("g") else []
            for subgraph in [*nested, *attribute.graphs]:
                found.extend(_graphs(subgraph))
    return found


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return repr(node.name) if node.name else f"#{index} ({node.op_type or 'no op_type'})"


def _invalid(message: str) -> errors.InvalidModelError:
    return errors.InvalidModelError(message)
