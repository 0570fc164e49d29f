"""ONNX Runtime's default-domain ops, hidden from onnx's checker and shape inference.

ORT registers a few ops in the default domain that onnx does not define
(``SimplifiedLayerNormalization``, ``LayerNormalization`` below opset 17, ...); its fusion tools
emit them. onnx's checker refuses a default-domain op it has no schema for, and its strict shape
inference stops there, although it skips ops of domains it does not know. So while onnx checks
or infers, such nodes are moved to a stand-in domain: onnx then checks and types everything else,
and ORT's schemas type these nodes (``targets/ort_schemas.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import onnx

from mpcompile.io.proto_tensors import graph_protos

STAND_IN_DOMAIN = "mpcompile.ort-default-domain"


def _default_opset(model: onnx.ModelProto) -> int:
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)


def ort_default_domain_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes (subgraphs included) of ops ORT registers in the default domain that onnx does not
    define at the model's opset."""
    from mpcompile.targets.ort_schemas import is_ort_default_domain_op

    opset = _default_opset(model)
    if not opset:
        return []
    return [
        node
        for graph in graph_protos(model.graph)
        for node in graph.node
        if node.domain in ("", "ai.onnx") and is_ort_default_domain_op(node.op_type, opset)
    ]


@contextlib.contextmanager
def hidden_ort_ops(model: onnx.ModelProto) -> Iterator[list[str]]:
    """Move ORT's default-domain nodes of ``model`` to the stand-in domain for the block (in
    place), then back. Yields the op types hidden (empty: the model is untouched)."""
    nodes = ort_default_domain_nodes(model)
    if not nodes:
        yield []
        return
    domains = [node.domain for node in nodes]
    for node in nodes:
        node.domain = STAND_IN_DOMAIN
    model.opset_import.append(onnx.helper.make_opsetid(STAND_IN_DOMAIN, 1))
    try:
        yield sorted({node.op_type for node in nodes})
    finally:
        for node, domain in zip(nodes, domains, strict=True):
            node.domain = domain
        restore_default_domain(model)


def restore_default_domain(model: onnx.ModelProto) -> None:
    """Put nodes of the stand-in domain back into the default domain (in a model onnx returned
    from a hidden one, such as an inferred copy), and drop the stand-in opset import."""
    for graph in graph_protos(model.graph):
        for node in graph.node:
            if node.domain == STAND_IN_DOMAIN:
                node.domain = ""
    kept = [entry for entry in model.opset_import if entry.domain != STAND_IN_DOMAIN]
    if len(kept) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(kept)
