"""Remove Casts that change nothing, lossless round trips, and duplicate Casts.

Folds only what is exact: Cast(x, to=dtype(x)); Cast(Cast(x, to=W), to=dtype(x)) where W
holds every value of dtype(x) (e.g. FP16->FP32->FP16); and two Casts of one value to one
type in one graph. FP32->FP16->FP32 rounds, so it is never folded. Casts producing a
graph output are kept (the output name must stay).
"""

from __future__ import annotations

import onnx_ir as ir

from mpcompile.irtools.graphs import all_graphs
from mpcompile.passes.context import ConversionContext

F16, BF16, F32, F64 = ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.FLOAT, ir.DataType.DOUBLE
# (source dtype, intermediate dtype) pairs where the intermediate holds every source value.
LOSSLESS_WIDENINGS: frozenset[tuple[ir.DataType, ir.DataType]] = frozenset(
    {(F16, F32), (F16, F64), (BF16, F32), (BF16, F64), (F32, F64)}
)


def _cast_to(node: ir.Node) -> ir.DataType | None:
    if node.op_type != "Cast" or node.domain != "" or "to" not in node.attributes:
        return None
    return ir.DataType(node.attributes["to"].as_int())


class FoldCastsPass(ir.passes.InPlacePass):
    """Fold identity Casts, lossless Cast pairs and duplicate Casts, to a fixed point."""

    def __init__(self, context: ConversionContext | None = None):
        super().__init__()
        self.context = context

    def __repr__(self) -> str:
        return "FoldCastsPass()"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folded = 0
        graphs = list(all_graphs(model))
        for graph, _ in graphs:
            folded += self._fold_graph(graph)
        if self.context is not None:
            self.context.stats.casts_folded += folded
        return ir.passes.PassResult(model, modified=folded > 0)

    def _fold_graph(self, graph: ir.Graph) -> int:
        folded = 0
        seen: dict[tuple[int, ir.DataType], ir.Value] = {}
        for node in list(graph):
            to = _cast_to(node)
            if to is None or node.inputs[0] is None:
                continue
            output = node.outputs[0]
            if output.is_graph_output():
                continue
            source = node.inputs[0]
            replacement = None
            if source.dtype == to:
                replacement = source
            else:
                inner = source.producer()
                inner_to = _cast_to(inner) if inner is not None else None
                if inner_to is not None and inner.inputs[0] is not None:
                    origin = inner.inputs[0]
                    if origin.dtype == to and (to, inner_to) in LOSSLESS_WIDENINGS:
                        replacement = origin
            if replacement is None:
                key = (id(source), to)
                replacement = seen.get(key)
                if replacement is None:
                    seen[key] = output
                    continue
            output.replace_all_uses_with(replacement)
            graph.remove(node, safe=True)
            folded += 1
            folded += _remove_if_dead(source, seen)
        return folded


def _remove_if_dead(value: ir.Value, seen: dict[tuple[int, ir.DataType], ir.Value]) -> int:
    """Remove the Cast producing ``value`` if folding left it unused (and forget it in ``seen``)."""
    producer = value.producer()
    if producer is None or _cast_to(producer) is None or value.uses() or value.is_graph_output():
        return 0
    key = (id(producer.inputs[0]), _cast_to(producer))
    if seen.get(key) is value:
        del seen[key]
    producer.graph.remove(producer, safe=True)
    return 1
