"""Every graph a conversion touches: the main graph, subgraphs, and typed local-function bodies."""

from __future__ import annotations

from collections.abc import Iterator

import onnx_ir as ir

# Set on a local function once InferTypesPass has typed its body from its call sites.
TYPED_FUNCTION_KEY = "mpcompile.typed"


def ai_onnx_opset(opset_imports: dict[str, int], default: int = 1) -> int:
    return opset_imports.get("", opset_imports.get("ai.onnx", default))


def subgraphs(graph: ir.Graph | ir.Function) -> list[ir.Graph]:
    """Every graph nested in ``graph``'s nodes, depth first in node order (as
    ``ir.Graph.subgraphs``, whose generator-per-node walk costs seconds on 50k-node graphs)."""
    found: list[ir.Graph] = []
    for node in graph:
        if not node.attributes:
            continue
        for attr in node.attributes.values():
            if not isinstance(attr, ir.Attr):
                continue
            if attr.type == ir.AttributeType.GRAPH:
                nested = [attr.value]
            elif attr.type == ir.AttributeType.GRAPHS:
                nested = list(attr.value)
            else:
                continue
            for subgraph in nested:
                found.append(subgraph)
                found.extend(subgraphs(subgraph))
    return found


def model_graphs(model: ir.Model) -> list[ir.Graph]:
    """The main graph and every subgraph in it (``ir.Model.graphs``, in the same order)."""
    return [model.graph, *subgraphs(model.graph)]


def all_graphs(model: ir.Model, every_function: bool = False) -> Iterator[tuple[ir.Graph, int]]:
    """(graph, ai.onnx opset) for the main graph, its subgraphs, and the bodies of local
    functions whose types are known (see ``InferTypesPass``), or of all of them."""
    opset = ai_onnx_opset(model.opset_imports)
    for graph in model_graphs(model):
        yield graph, opset
    for function in model.functions.values():
        if every_function or function.meta.get(TYPED_FUNCTION_KEY):
            function_opset = ai_onnx_opset(function.opset_imports, opset)
            yield function.graph, function_opset
            for subgraph in subgraphs(function.graph):
                yield subgraph, function_opset


def node_opset(node: ir.Node, ai_onnx: int, opset_imports: dict[str, int]) -> int:
    """The opset in force for ``node``'s own domain (ai.onnx.ml, com.microsoft, ... have their own)."""
    if node.domain in ("", "ai.onnx"):
        return ai_onnx
    return opset_imports.get(node.domain, 1)
