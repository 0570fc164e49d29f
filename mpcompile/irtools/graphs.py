"""Every graph a conversion touches: the main graph, subgraphs, and typed local-function bodies."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import weakref
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

import onnx_ir as ir

P = ParamSpec("P")
R = TypeVar("R")

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
    """The main graph and every subgraph in it (``ir.Model.graphs``, in the same order); inside
    ``shared_walk``, from the one walk of ``model`` made there."""
    walks = _WALKS.get()
    main = model.graph
    if walks is None:
        return [main, *subgraphs(main)]
    nested = walks.get(main)
    if nested is None:
        nested = walks[main] = subgraphs(main)
    return [main, *nested]


# Per main graph, its subgraphs, walked once inside shared_walk. Weak keys: a model dropped
# during the block (a clone for the structure check) is not kept alive by its walk.
_WALKS: contextvars.ContextVar[weakref.WeakKeyDictionary[ir.Graph, list[ir.Graph]] | None] = (
    contextvars.ContextVar("mpcompile_graph_walks", default=None)
)


@contextlib.contextmanager
def shared_walk() -> Iterator[None]:
    """Within the block, ``model_graphs`` walks each model once, not once per call (a
    conversion asked ~18 times: 0.1 s each on a 26k-node graph). Valid while nothing in the
    block adds, removes or replaces a node attribute that holds a graph; code that does calls
    ``graphs_changed()``. Nested blocks share the outermost one's walks."""
    if _WALKS.get() is not None:
        yield
        return
    token = _WALKS.set(weakref.WeakKeyDictionary())
    try:
        yield
    finally:
        _WALKS.reset(token)


def with_shared_walk(func: Callable[P, R]) -> Callable[P, R]:
    """Decorator form of ``shared_walk``."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with shared_walk():
            return func(*args, **kwargs)

    return wrapper


def graphs_changed() -> None:
    """Forget the walks of ``shared_walk``: a graph-holding attribute was added, removed or replaced."""
    walks = _WALKS.get()
    if walks is not None:
        walks.clear()


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
