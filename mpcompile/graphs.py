"""Every graph a conversion touches: the main graph, subgraphs, and typed local-function bodies."""

from __future__ import annotations

from collections.abc import Iterator

import onnx_ir as ir

# Set on a local function once InferTypesPass has typed its body from its call sites.
TYPED_FUNCTION_KEY = "mpcompile.typed"


def ai_onnx_opset(opset_imports: dict[str, int], default: int = 1) -> int:
    return opset_imports.get("", opset_imports.get("ai.onnx", default))


def all_graphs(model: ir.Model, every_function: bool = False) -> Iterator[tuple[ir.Graph, int]]:
    """(graph, ai.onnx opset) for the main graph, its subgraphs, and the bodies of local
    functions whose types are known (see ``InferTypesPass``), or of all of them."""
    opset = ai_onnx_opset(model.opset_imports)
    for graph in model.graphs():
        yield graph, opset
    for function in model.functions.values():
        if every_function or function.meta.get(TYPED_FUNCTION_KEY):
            function_opset = ai_onnx_opset(function.opset_imports, opset)
            yield function.graph, function_opset
            for subgraph in function.graph.subgraphs():
                yield subgraph, function_opset


def is_function_body(model: ir.Model, graph: ir.Graph) -> bool:
    return any(function.graph is graph for function in model.functions.values())


def node_opset(node: ir.Node, ai_onnx: int, opset_imports: dict[str, int]) -> int:
    """The opset in force for ``node``'s own domain (ai.onnx.ml, com.microsoft, ... have their own)."""
    if node.domain in ("", "ai.onnx"):
        return ai_onnx
    return opset_imports.get(node.domain, 1)
