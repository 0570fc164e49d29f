"""Control-flow bodies (If branches, Loop and Scan bodies) optimised one graph at a time.

ORT's transformer optimiser works on one graph: it matches patterns across subgraph nodes while
editing the main graph, and it drops main-graph values only a subgraph reads. A merged decoder (an
If between the decoder with past and the one without) came out with branch outputs nobody
produces. So here:

1. the main graph is optimised with each control-flow node *hidden*: replaced by a placeholder in
   a private domain that reads the node's inputs and every outer value its bodies read, so no
   fusion matches across it and nothing its bodies need is dropped;
2. each body becomes a standalone model (the outer values it reads become graph inputs, outer
   initializers become its own, so weight-dependent fusions still see constants), is optimised
   the same way (recursively), and is put back: its inputs turn into references to the outer
   values again, and initializers that are still the outer ones are dropped;
3. weights a fusion created identically in sibling bodies (both branches of a merged decoder) are
   stored once, in the graph holding the control-flow node.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable

import onnx
import onnx_ir as ir

from mpcompile.irtools.graphs import graphs_changed, subgraphs
from mpcompile.irtools.names import NameAuthority

HIDDEN_DOMAIN = "mpcompile.hidden"
_HIDDEN_OP = "HiddenControlFlow"
_SHARED_MIN_BYTES = 1024


class ControlFlowLost(Exception):
    """The optimiser removed or rewired a hidden control-flow node, or changed a body's signature."""


@dataclasses.dataclass(frozen=True)
class _Hidden:
    node: onnx.NodeProto  # the control-flow node as it was
    free: tuple[str, ...]  # outer values its bodies read


def has_control_flow(graph: onnx.GraphProto) -> bool:
    """True if a node of ``graph`` (not nested deeper) holds a subgraph."""
    return any(_graph_attributes(node) for node in graph.node)


def hide_control_flow(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, _Hidden]]:
    """A copy of ``model`` whose main-graph control-flow nodes are placeholders, and what they hide."""
    hidden_model = onnx.ModelProto()
    hidden_model.CopyFrom(model)
    hidden: dict[str, _Hidden] = {}
    for position, node in enumerate(hidden_model.graph.node):
        if not _graph_attributes(node):
            continue
        free = tuple(name for name in _free_names(node) if name not in node.input)
        key = f"mpcompile_hidden_{position}"
        hidden[key] = _Hidden(_copy(node), free)
        placeholder = onnx.helper.make_node(
            _HIDDEN_OP, [*node.input, *free], list(node.output), name=key, domain=HIDDEN_DOMAIN
        )
        node.CopyFrom(placeholder)
    hidden_model.opset_import.append(onnx.helper.make_opsetid(HIDDEN_DOMAIN, 1))
    return hidden_model, hidden


def restore_control_flow(model: onnx.ModelProto, hidden: dict[str, _Hidden]) -> onnx.ModelProto:
    """Put the hidden nodes back into the optimised ``model`` (in place; also returned)."""
    found = 0
    for node in model.graph.node:
        record = hidden.get(node.name) if node.domain == HIDDEN_DOMAIN else None
        if record is None:
            continue
        found += 1
        original = _copy(record.node)
        own_inputs = len(original.input)
        if len(node.input) != own_inputs + len(record.free) or len(node.output) != len(original.output):
            raise ControlFlowLost(
                f"the optimiser rewired control-flow node {original.name or original.op_type!r}"
            )
        del original.input[:]
        original.input.extend(node.input[:own_inputs])
        renamed = {
            old: new for old, new in zip(record.free, node.input[own_inputs:], strict=True) if old != new
        }
        if renamed:
            for attribute in _graph_attributes(original):
                for body in _attribute_graphs(attribute):
                    _rename_references(body, renamed)
        del original.output[:]
        original.output.extend(node.output)
        node.CopyFrom(original)
    if found != len(hidden):
        raise ControlFlowLost("the optimiser removed a control-flow node")
    kept = [entry for entry in model.opset_import if entry.domain != HIDDEN_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return model


def optimize_bodies(
    model: onnx.ModelProto, optimize: Callable[[onnx.ModelProto], onnx.ModelProto]
) -> onnx.ModelProto:
    """Every body of the main graph's control-flow nodes run through ``optimize`` as a standalone
    model and put back; returns the new model."""
    work = ir.from_proto(model)
    bodies: list[tuple[ir.Node, str, ir.Graph]] = []
    for node in work.graph:
        for name, attribute in node.attributes.items():
            if isinstance(attribute, ir.Attr) and attribute.type == ir.AttributeType.GRAPH:
                bodies.append((node, name, attribute.value))
    if any(
        isinstance(attribute, ir.Attr) and attribute.type == ir.AttributeType.GRAPHS
        for node in work.graph
        for attribute in node.attributes.values()
    ):
        raise ControlFlowLost("a node holds a list of graphs; left to ORT's own levels")
    for node, name, body in bodies:
        free = _free_values(body)
        standalone, passed_through = _standalone_model(work, body, free)
        optimized = ir.from_proto(optimize(standalone))
        node.attributes[name] = ir.AttrGraph(name, _spliced_body(body, optimized, free, passed_through))
        _detach(body)
        for domain, version in optimized.opset_imports.items():
            work.opset_imports.setdefault(domain, version)
    graphs_changed()
    names = NameAuthority(work)
    for node in {id(node): node for node, _, _ in bodies}.values():
        _share_identical_initializers(node, names)
    return ir.to_proto(work)


def _standalone_model(
    model: ir.Model, body: ir.Graph, free: list[ir.Value]
) -> tuple[onnx.ModelProto, dict[int, str]]:
    """``body`` as a model of its own: outer values it reads become inputs, outer constants initializers.

    Body outputs that no node computes (an outer value or a constant passed on, maybe through an
    Identity: a merged decoder's with-past branch returns empty constants for the encoder KV
    cache) are left out, and returned by position with the name of the value they pass on: a graph
    output that is a graph input or initializer makes ORT's shape inference skip sorting the
    graph, so every fusion after the first one failed there.
    """
    graph = ir.serde.serialize_graph(body)
    sources = {value.name for value in free} | {tensor.name for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    passed_through: dict[int, str] = {}
    for index, output in enumerate(graph.output):
        producer = producers.get(output.name)
        if output.name in sources:
            passed_through[index] = output.name
        elif producer is not None and producer.op_type == "Identity" and producer.input[0] in sources:
            passed_through[index] = producer.input[0]
    if passed_through:
        dropped = {graph.output[index].name for index in passed_through}
        kept_outputs = [output for index, output in enumerate(graph.output) if index not in passed_through]
        kept_nodes = [
            node for node in graph.node if not (node.op_type == "Identity" and node.output[0] in dropped)
        ]
        kept_constants = [
            tensor for tensor in graph.initializer if tensor.name not in passed_through.values()
        ]
        del graph.output[:], graph.node[:], graph.initializer[:]
        graph.output.extend(kept_outputs)
        graph.node.extend(kept_nodes)
        graph.initializer.extend(kept_constants)
    for value in free:
        if value.is_initializer() and not value.is_graph_input() and value.const_value is not None:
            tensor = ir.serde.serialize_tensor(value.const_value)
            tensor.name = value.name or ""
            graph.initializer.append(tensor)
        else:
            graph.input.append(ir.serde.serialize_value(value))
    opsets = [onnx.helper.make_opsetid(domain, version) for domain, version in model.opset_imports.items()]
    standalone = onnx.helper.make_model(graph, opset_imports=opsets)
    standalone.ir_version = model.ir_version
    return standalone, passed_through


def _spliced_body(
    old: ir.Graph, optimized: ir.Model, free: list[ir.Value], passed_through: dict[int, str]
) -> ir.Graph:
    """The optimised standalone graph as a body again: references to the outer values, its own
    formal inputs and outputs (checked against ``old``, pass-through outputs put back as
    Identities), initializers that are not outer ones."""
    graph = optimized.graph
    names = NameAuthority(optimized)
    outer = {value.name: value for value in free}
    formal_names = [value.name for value in old.inputs]
    inputs = {value.name: value for value in graph.inputs}
    if any(name not in inputs for name in formal_names):
        raise ControlFlowLost(f"the optimiser removed an input of body {old.name!r}")
    expected = [value.name for index, value in enumerate(old.outputs) if index not in passed_through]
    if [value.name for value in graph.outputs] != expected:
        raise ControlFlowLost(f"the optimiser changed the outputs of body {old.name!r}")
    formal = [inputs[name] for name in formal_names]
    replacements = [(value, outer[value.name]) for value in graph.inputs if value.name in outer]
    graph.inputs.clear()
    initializers = []
    for name in list(graph.initializers):
        value = graph.initializers.pop(name)
        twin = outer.get(name)
        if (
            twin is not None
            and twin.const_value is not None
            and _same_tensor(twin.const_value, value.const_value)
        ):
            replacements.append((value, twin))
        elif twin is not None:
            raise ControlFlowLost(
                f"the optimiser changed outer initializer {name!r} inside body {old.name!r}"
            )
        else:
            initializers.append(value)
    for value, replacement in replacements:
        value.replace_all_uses_with(replacement, replace_graph_outputs=True)
    outputs = list(graph.outputs)
    graph.outputs.clear()
    nodes = list(graph)
    graph.remove(nodes)
    declared_outputs = list(old.outputs)
    old.outputs.clear()  # the old body is dropped; its constants may be outputs of the new one
    for index in sorted(passed_through):
        declared, source = declared_outputs[index], passed_through[index]
        if source in old.initializers:  # the body's own constant, returned as it was
            constant = old.initializers.pop(source)
            if not any(value is constant for value in initializers):
                initializers.append(constant)
            outputs.insert(index, constant)
            continue
        identity = ir.node("Identity", [outer[source]], name=names.unique(f"{declared.name}_pass_through"))
        identity.outputs[0].name = declared.name
        identity.outputs[0].type = declared.type
        identity.outputs[0].shape = None if declared.shape is None else ir.Shape(declared.shape)
        nodes.append(identity)
        outputs.insert(index, identity.outputs[0])
    return ir.Graph(formal, outputs, nodes=nodes, initializers=initializers, name=old.name)


def _share_identical_initializers(node: ir.Node, names: NameAuthority) -> None:
    """Weights created identically in several bodies of ``node`` move to ``node``'s graph, stored once."""
    assert node.graph is not None
    groups: dict[tuple, list[tuple[ir.Graph, ir.Value]]] = {}
    for attribute in node.attributes.values():
        if not (isinstance(attribute, ir.Attr) and attribute.type == ir.AttributeType.GRAPH):
            continue
        body = attribute.value
        for value in body.initializers.values():
            tensor = value.const_value
            if tensor is None or tensor.nbytes < _SHARED_MIN_BYTES:
                continue
            key = (tensor.dtype, tuple(tensor.shape), hashlib.sha256(tensor.tobytes()).digest())
            groups.setdefault(key, []).append((body, value))
    for members in groups.values():
        if len({id(body) for body, _ in members}) < 2:
            continue
        (first_body, shared), *others = members
        first_body.initializers.pop(shared.name)
        shared.name = names.unique(shared.name or "shared_weight")
        node.graph.register_initializer(shared)
        for body, value in others:
            body.initializers.pop(value.name)
            value.replace_all_uses_with(shared, replace_graph_outputs=True)


def _same_tensor(left: ir.TensorProtocol, right: ir.TensorProtocol | None) -> bool:
    return (
        right is not None
        and left.dtype == right.dtype
        and tuple(left.shape) == tuple(right.shape)
        and left.tobytes() == right.tobytes()
    )


def _free_values(body: ir.Graph) -> list[ir.Value]:
    """Values read inside ``body`` (nested graphs included) that an enclosing graph defines, in first-use order."""
    inside = {id(graph) for graph in (body, *subgraphs(body))}
    found: dict[int, ir.Value] = {}
    for graph in (body, *subgraphs(body)):
        for node in graph:
            for value in node.inputs:
                if value is None or id(value) in found:
                    continue
                producer = value.producer()
                owner = producer.graph if producer is not None else value.graph
                if owner is None or id(owner) not in inside:
                    found[id(value)] = value
    return list(found.values())


def _detach(graph: ir.Graph) -> None:
    """Drop the uses a replaced body's nodes hold on outer values."""
    for each in (graph, *subgraphs(graph)):
        for node in each:
            for index in range(len(node.inputs)):
                node.replace_input_with(index, None)


def _free_names(node: onnx.NodeProto) -> list[str]:
    """Names the bodies of ``node`` read but do not define, in first-use order."""
    found: dict[str, None] = {}
    for attribute in _graph_attributes(node):
        for body in _attribute_graphs(attribute):
            for name in _graph_free_names(body, set()):
                found.setdefault(name)
    return list(found)


def _graph_free_names(graph: onnx.GraphProto, outer_defined: set[str]) -> list[str]:
    defined = set(outer_defined)
    defined.update(value.name for value in graph.input)
    defined.update(tensor.name for tensor in graph.initializer)
    defined.update(tensor.values.name for tensor in graph.sparse_initializer)
    found: dict[str, None] = {}
    for node in graph.node:
        for name in node.input:
            if name and name not in defined:
                found.setdefault(name)
        for attribute in _graph_attributes(node):
            for body in _attribute_graphs(attribute):
                for name in _graph_free_names(body, defined):
                    found.setdefault(name)
        defined.update(node.output)
    for value in graph.output:
        if value.name not in defined:
            found.setdefault(value.name)
    return list(found)


def _rename_references(graph: onnx.GraphProto, renamed: dict[str, str]) -> None:
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in renamed:
                node.input[index] = renamed[name]
        for attribute in _graph_attributes(node):
            for body in _attribute_graphs(attribute):
                _rename_references(body, renamed)
    for value in graph.output:
        if value.name in renamed:
            value.name = renamed[value.name]


def _graph_attributes(node: onnx.NodeProto) -> list[onnx.AttributeProto]:
    return [attribute for attribute in node.attribute if attribute.HasField("g") or len(attribute.graphs)]


def _attribute_graphs(attribute: onnx.AttributeProto) -> list[onnx.GraphProto]:
    return [attribute.g] if attribute.HasField("g") else list(attribute.graphs)


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copied = onnx.NodeProto()
    copied.CopyFrom(node)
    return copied
