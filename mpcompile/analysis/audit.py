"""Collect the per-node precision audit of any ONNX model.

For models mpcompile wrote, each node's precision, reason and rule come from the decision
stamped into its metadata (``mpcompile.core.plan.read_decision``). For nodes without one (models
converted elsewhere, or FP32 originals) the precision is derived from the node's dtypes and
the reason is ``unknown``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import onnx
import onnx_ir as ir

from mpcompile.analysis import flops as flops_mod
from mpcompile.core.plan import (
    MODEL_PRECISION_KEY,
    MODEL_TARGET_KEY,
    MODEL_VERSION_KEY,
    TRACE_KEY,
    Reason,
    read_decision,
)
from mpcompile.evaluate.shapes import (
    ShapeSpec,
    element_count,
    infer_shapes,
    refine_shapes,
    resolve_input_shapes,
)
from mpcompile.irtools.graphs import model_graphs

MAIN_GRAPH = "main"
CAST_OPS = frozenset({"Cast", "CastLike"})
# Ops that read only a tensor's shape, never its values.
SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})

SOURCE_METADATA = "metadata"  # decision stamped by mpcompile
SOURCE_DERIVED = "derived"  # precision read off the node's dtypes

PRECISION_OF_DTYPE = {
    ir.DataType.FLOAT: "fp32",
    ir.DataType.FLOAT16: "fp16",
    ir.DataType.BFLOAT16: "bf16",
    ir.DataType.DOUBLE: "fp64",
}
UNKNOWN_PRECISION = "unknown"  # no dtype of the node is known
NO_PRECISION = "n/a"  # touches no floating-point data

ModelLike = str | os.PathLike | onnx.ModelProto | ir.Model


@dataclasses.dataclass
class NodeAudit:
    """Everything the report says about one node."""

    index: int  # position in the traversal (main graph, subgraphs after their parent node)
    name: str
    op_type: str
    domain: str
    graph: str  # "main", "<parent node>/<attribute>" for subgraphs, "function <domain>::<name>"
    precision: str
    reason: str
    rule: str
    source: str  # SOURCE_METADATA or SOURCE_DERIVED
    input_dtypes: list[str | None]
    output_dtypes: list[str | None]
    casts_before: list[str]  # Casts producing this node's inputs
    casts_after: list[str]  # Casts consuming this node's outputs
    weight_bytes: int
    flops: int | None
    flops_method: str
    cast_bytes: int | None = None  # Cast nodes only: bytes read plus bytes written
    output_names: list[str] = dataclasses.field(default_factory=list)
    compare: dict[str, Any] | None = None
    numerics: dict[str, Any] | None = None

    @property
    def is_cast(self) -> bool:
        return self.domain in ("", "ai.onnx") and self.op_type in CAST_OPS


@dataclasses.dataclass
class ModelAudit:
    """The audit of one model: model facts, assumptions, nodes; summary built on demand."""

    model_name: str
    producer: str
    opsets: dict[str, int]
    mpcompile: dict[str, str]  # mpcompile.* model metadata, empty for other models
    assumed_dims: dict[str, int]
    shape_overrides: dict[str, Any]
    shape_inference_ok: bool
    nodes: list[NodeAudit]
    weights_by_dtype: dict[str, int]  # unique initializer and Constant bytes, by stored precision
    notes: list[str] = dataclasses.field(default_factory=list)
    compare: dict[str, Any] | None = None  # set by compare.attach_comparison
    numerics: dict[str, Any] | None = None  # set by numerics.attach_numerics
    auto: dict[str, Any] | None = None  # the --auto search record saved in the model (docs/auto.md)
    # The private, shape-resolved copy the audit was built from (for the numerics run).
    model: ir.Model | None = dataclasses.field(default=None, repr=False, compare=False)


def dtype_name(dtype: ir.DataType | None) -> str | None:
    """ONNX TensorProto type name in lower case (``float``, ``float16``), None when unknown."""
    return None if dtype is None else dtype.name.lower()


def precision_of_dtype(dtype: ir.DataType | None) -> str:
    if dtype is None:
        return UNKNOWN_PRECISION
    if dtype in PRECISION_OF_DTYPE:
        return PRECISION_OF_DTYPE[dtype]
    if dtype.is_floating_point():
        return "fp8" if dtype.itemsize <= 1 else dtype.name.lower()
    return NO_PRECISION


def load_for_audit(model: ModelLike) -> ir.Model:
    """A private copy of the model that the audit may annotate with shapes.

    Paths and protos get every input check of ``mpcompile.io.model_io.load_model`` (weights stay mapped);
    an ``ir.Model`` is cloned (tensors shared, the caller's model is never touched).
    """
    if isinstance(model, ir.Model):
        return model.clone()
    from mpcompile.io import model_io

    if isinstance(model, onnx.ModelProto):  # external data resolves against the working folder
        return model_io.model_from_proto(model, pathlib.Path.cwd())
    return model_io.load_model(model)


def audit_model(
    model: ModelLike, *, shapes: ShapeSpec | list[str] | None = None, name: str | None = None
) -> ModelAudit:
    """Audit every node of ``model`` (path, ModelProto or ir.Model): subgraphs and local functions included.

    Nodes inside a local function's body are listed once (not per call), with the shapes
    inference leaves there (often none: their FLOPs are then unknown).
    """
    if name is None:
        name = os.path.basename(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else ""
    spec = shapes if isinstance(shapes, ShapeSpec) else ShapeSpec.parse(shapes)
    work = load_for_audit(model)
    assumed = resolve_input_shapes(work, spec)
    inference_ok = infer_shapes(work)
    refine_shapes(work)
    labels = _graph_labels(work)
    nodes = [_audit_node(i, node, labels) for i, node in enumerate(_all_nodes(work))]
    notes = []
    if not inference_ok:
        notes.append("onnx shape inference failed; shapes are those stored in the model.")
    if any(n.op_type in ("Loop", "Scan") for n in nodes):
        notes.append("Loop and Scan bodies are counted once, not per iteration.")
    unknown = sum(1 for n in nodes if n.flops is None)
    if unknown:
        notes.append(
            f"{unknown} node(s) have no static shapes; their FLOPs are unknown and left out of totals."
        )
    return ModelAudit(
        model_name=name or work.graph.name or "",
        producer=" ".join(p for p in (work.producer_name, work.producer_version) if p),
        opsets=dict(work.opset_imports),
        mpcompile={
            key: work.metadata_props[key]
            for key in (MODEL_VERSION_KEY, MODEL_PRECISION_KEY, MODEL_TARGET_KEY)
            if key in work.metadata_props
        },
        assumed_dims=assumed,
        shape_overrides={"inputs": {k: list(v) for k, v in spec.inputs.items()}, "dims": dict(spec.dims)},
        shape_inference_ok=inference_ok,
        nodes=nodes,
        weights_by_dtype=_weights_by_precision(work),
        notes=notes,
        auto=_auto_record(work),
        model=work,
    )


def _auto_record(model: ir.Model) -> dict[str, Any] | None:
    """The ``convert --auto`` search record (``mpcompile.auto`` metadata), or None."""
    text = model.metadata_props.get(TRACE_KEY)
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _all_nodes(model: ir.Model):
    """Main graph and its subgraphs, then each local function's body (and its subgraphs)."""
    yield from ir.traversal.RecursiveGraphIterator(model.graph)
    for function in model.functions.values():
        yield from ir.traversal.RecursiveGraphIterator(function)


def function_label(function: ir.Function) -> str:
    return f"function {function.domain}::{function.name}"


def _graph_labels(model: ir.Model) -> dict[int, str]:
    """Readable label for the main graph, every subgraph and function body (keyed by id of the graph)."""
    labels = {id(model.graph): MAIN_GRAPH}
    labels.update({id(function.graph): function_label(function) for function in model.functions.values()})
    for node in _all_nodes(model):
        parent = labels.get(id(node.graph), "?")
        owner = node.name or node.op_type
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                labels[id(attr.as_graph())] = f"{_join(parent, owner)}/{attr.name}"
            elif attr.type == ir.AttributeType.GRAPHS:
                for i, graph in enumerate(attr.as_graphs()):
                    labels[id(graph)] = f"{_join(parent, owner)}/{attr.name}[{i}]"
    return labels


def _join(parent: str, owner: str) -> str:
    return owner if parent == MAIN_GRAPH else f"{parent}/{owner}"


def _audit_node(index: int, node: ir.Node, labels: dict[int, str]) -> NodeAudit:
    decision = read_decision(node)
    if decision is not None:
        precision, reason, rule, source = (
            decision.precision.value,
            decision.reason,
            decision.rule,
            SOURCE_METADATA,
        )
    else:
        precision, reason, rule, source = derive_precision(node), Reason.UNKNOWN, "", SOURCE_DERIVED
    flops, method = flops_mod.estimate_flops(node)
    audit = NodeAudit(
        index=index,
        name=node.name or "",
        op_type=node.op_type,
        domain=node.domain or "",
        graph=labels.get(id(node.graph), "?"),
        precision=precision,
        reason=reason,
        rule=rule,
        source=source,
        input_dtypes=[dtype_name(v.dtype) if v is not None else None for v in node.inputs],
        output_dtypes=[dtype_name(v.dtype) for v in node.outputs],
        casts_before=[
            _cast_name(v.producer()) for v in node.inputs if v is not None and _is_cast(v.producer())
        ],
        casts_after=[_cast_name(use.node) for v in node.outputs for use in v.uses() if _is_cast(use.node)],
        weight_bytes=node_weight_bytes(node),
        flops=flops,
        flops_method=method,
        output_names=[v.name or "" for v in node.outputs],
    )
    if audit.is_cast:
        audit.cast_bytes = cast_bytes(node)
    return audit


def derive_precision(node: ir.Node) -> str:
    """Precision of a node without a stamped decision: its first float output, else input."""
    if node.domain in ("", "ai.onnx") and node.op_type in SHAPE_ONLY_OPS:
        return NO_PRECISION
    any_unknown = False
    for values in (node.outputs, node.inputs):
        for value in values:
            if value is None:
                continue
            if value.dtype is None:
                any_unknown = True
                continue
            precision = precision_of_dtype(value.dtype)
            if precision != NO_PRECISION:
                return precision
    return UNKNOWN_PRECISION if any_unknown else NO_PRECISION


def _is_cast(node: ir.Node | None) -> bool:
    return node is not None and node.domain in ("", "ai.onnx") and node.op_type in CAST_OPS


def _cast_name(node: ir.Node | None) -> str:
    assert node is not None
    return node.name or f"{node.op_type}->{node.outputs[0].name}"


def _tensor_nbytes(tensor: ir.TensorProtocol | None) -> int:
    return int(tensor.nbytes) if tensor is not None else 0


def node_weight_bytes(node: ir.Node) -> int:
    """Bytes of the constant tensors the node reads: initializers, or a Constant's value."""
    if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
        attr = node.attributes.get("value")
        return _tensor_nbytes(attr.as_tensor()) if attr is not None else 0
    seen: set[int] = set()
    total = 0
    for value in node.inputs:
        if value is None or id(value) in seen or not value.is_initializer():
            continue
        seen.add(id(value))
        total += _tensor_nbytes(value.const_value)
    return total


def cast_bytes(node: ir.Node) -> int | None:
    """Bytes a Cast reads plus writes in one inference, None when its shape is unknown."""
    source, target = node.inputs[0] if node.inputs else None, node.outputs[0]
    count = element_count(source) if source is not None else None
    if count is None:
        count = element_count(target)
    if count is None or source is None or source.dtype is None or target.dtype is None:
        return None
    if ir.DataType.STRING in (source.dtype, target.dtype):  # no fixed size
        return None
    return int(count * (source.dtype.itemsize + target.dtype.itemsize))


def _weights_by_precision(model: ir.Model) -> dict[str, int]:
    """Stored bytes of unique initializers and Constant tensors, by the precision of their dtype."""
    totals: dict[str, int] = {}
    seen: set[int] = set()

    def add(tensor: ir.TensorProtocol | None) -> None:
        if tensor is None or id(tensor) in seen:
            return
        seen.add(id(tensor))
        key = precision_of_dtype(tensor.dtype)
        totals[key] = totals.get(key, 0) + _tensor_nbytes(tensor)

    for graph in model_graphs(model):
        for value in graph.initializers.values():
            add(value.const_value)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = node.attributes.get("value")
            if attr is not None:
                add(attr.as_tensor())
    return totals
