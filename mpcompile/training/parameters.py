"""Which initializers of a forward model are trainable parameters when the user names none.

Exporters leave two kinds of FP32 initializers: the model's parameters, and constants the
exporter lifted out of the code (the 0.5 of a GELU, 1/sqrt(d) of attention, the finfo.min a
mask is filled with, a Clip's bounds, a Pow's exponent). Training a constant is wrong (it changes
the model's arithmetic) and often impossible (ORT has no gradient for a Pow exponent or a Clip
bound, and a scalar's gradient buffer has no shape). Rule:

- an FP32 initializer with more than one element is a parameter;
- a one-element FP32 initializer is a parameter only where a node uses it as a weight or bias
  (``WEIGHT_SLOTS``: a 1-class Gemm bias, a 1-channel Conv bias, ...);
- anything else (non-float initializers included) stays a constant, embedded in the graph;
- only initializers the loss input depends on count: ORT refuses a parameter unreachable from the
  loss ("Cannot compute the partial derivative"), e.g. a BERT pooler when the loss is on
  ``last_hidden_state``.

Multi-element float tables that are not parameters (precomputed rotary cos/sin, a float mask)
are rare in exports; name them with ``--frozen`` (or list the trainable ones with ``--requires-grad``).
"""

from __future__ import annotations

import math

import onnx_ir as ir

# Input positions that hold weights or biases, by (domain, op type).
WEIGHT_SLOTS: dict[tuple[str, str], tuple[int, ...]] = {
    ("", "Conv"): (1, 2),
    ("", "ConvTranspose"): (1, 2),
    ("", "Gemm"): (0, 1, 2),
    ("", "MatMul"): (0, 1),
    ("", "Gather"): (0,),  # an embedding table
    ("", "LayerNormalization"): (1, 2),
    ("", "BatchNormalization"): (1, 2),
    ("", "InstanceNormalization"): (1, 2),
    ("", "GroupNormalization"): (1, 2),
    ("", "RMSNormalization"): (1,),
    ("com.microsoft", "SimplifiedLayerNormalization"): (1,),
    ("com.microsoft", "SkipLayerNormalization"): (2, 3, 4),
}


def default_trainable_parameters(
    graph: ir.Graph, frozen: tuple[str, ...] | list[str] = (), loss_input: str | None = None
) -> list[str]:
    """Names of the FP32 initializers that are parameters under the module docstring's rule,
    in initializer order, without ``frozen`` (and, given ``loss_input``, only those it depends on)."""
    needed = _ancestors(graph, loss_input) if loss_input is not None else None
    weight_uses: set[str] = set()
    for node in graph:
        slots = WEIGHT_SLOTS.get(("" if node.domain == "ai.onnx" else node.domain, node.op_type), ())
        for index in slots:
            if index < len(node.inputs) and node.inputs[index] is not None:
                weight_uses.add(node.inputs[index].name or "")
    parameters = []
    for name, value in graph.initializers.items():
        if value.dtype != ir.DataType.FLOAT or name in frozen:
            continue
        if needed is not None and value not in needed:
            continue
        if _element_count(value) > 1 or name in weight_uses:
            parameters.append(name)
    return parameters


def _element_count(value: ir.Value) -> int:
    """Elements of an initializer (its tensor's shape when the value's own shape is missing)."""
    shape = value.const_value.shape if value.const_value is not None else value.shape
    if shape is None:
        return 0
    dims = [d if isinstance(d, int) else 0 for d in shape]
    return math.prod(dims)


def _ancestors(graph: ir.Graph, output_name: str) -> set[ir.Value]:
    """Every value the named graph output depends on (main graph; subgraph captures included)."""
    start = next((value for value in graph.outputs if value.name == output_name), None)
    seen: set[ir.Value] = set()
    stack = [start] if start is not None else []
    while stack:
        value = stack.pop()
        if value in seen:
            continue
        seen.add(value)
        node = value.producer()
        if node is None:
            continue
        inputs = [v for v in node.inputs if v is not None]
        for attribute in node.attributes.values():
            for subgraph in _subgraphs(attribute):
                inputs.extend(_captured(subgraph))
        stack.extend(inputs)
    return seen


def _subgraphs(attribute: ir.Attr) -> list[ir.Graph]:
    if attribute.type == ir.AttributeType.GRAPH:
        return [attribute.as_graph()]
    if attribute.type == ir.AttributeType.GRAPHS:
        return list(attribute.as_graphs())
    return []


def _captured(subgraph: ir.Graph) -> list[ir.Value]:
    """Values a subgraph reads from enclosing graphs."""
    own = {*subgraph.inputs, *subgraph.initializers.values()}
    for node in subgraph:
        own.update(node.outputs)
    captured = []
    for node in subgraph:
        captured.extend(v for v in node.inputs if v is not None and v not in own)
        for attribute in node.attributes.values():
            for inner in _subgraphs(attribute):
                captured.extend(v for v in _captured(inner) if v not in own)
    return captured
