"""The one place Casts are created: one Cast per (value, target type, graph), uniquely named."""

from __future__ import annotations

import onnx_ir as ir

from mpcompile.core.plan import Decision, Reason, stamp_decision
from mpcompile.core.precision import Precision
from mpcompile.irtools.graphs import model_graphs
from mpcompile.irtools.values import set_dtype

SUFFIX = {
    ir.DataType.FLOAT: "fp32",
    ir.DataType.FLOAT16: "fp16",
    ir.DataType.BFLOAT16: "bf16",
    ir.DataType.DOUBLE: "fp64",
}


class NameAuthority:
    """Hands out names not used anywhere in the model (all graphs and functions)."""

    def __init__(self, model: ir.Model):
        self._used: set[str] = set()
        for graph in (*model_graphs(model), *model.functions.values()):
            for value in getattr(graph, "inputs", ()):
                self._used.add(value.name or "")
            for value in getattr(graph, "initializers", {}).values():
                self._used.add(value.name or "")
            for node in graph:
                self._used.add(node.name or "")
                for value in node.outputs:
                    self._used.add(value.name or "")

    def unique(self, base: str) -> str:
        name, counter = base, 1
        while name in self._used:
            name = f"{base}_{counter}"
            counter += 1
        self._used.add(name)
        return name


class CastFactory:
    """Creates Casts through one helper so each (value, dtype, graph) gets exactly one."""

    def __init__(self, names: NameAuthority):
        self.names = names
        self._casts: dict[tuple[int, ir.DataType, int], ir.Value] = {}
        self.created = 0

    def cast(self, value: ir.Value, to: ir.DataType, graph: ir.Graph) -> ir.Value:
        """A value equal to ``value`` cast to ``to``, usable anywhere in ``graph``."""
        key = (id(value), to, id(graph))
        existing = self._casts.get(key)
        if existing is not None:
            return existing
        node = self.make_cast_node(value, to)
        producer = value.producer()
        if producer is not None and producer.graph is graph:
            graph.insert_after(producer, node)
        elif len(graph) > 0:
            graph.insert_before(graph.node(0), node)
        else:
            graph.append(node)
        self._casts[key] = node.outputs[0]
        return node.outputs[0]

    def make_cast_node(self, value: ir.Value, to: ir.DataType) -> ir.Node:
        """A detached, named, typed and stamped Cast node reading ``value``."""
        suffix = SUFFIX.get(to, to.name.lower())
        base = value.name or "value"
        node = ir.node(
            "Cast",
            inputs=[value],
            attributes={"to": to},
            name=self.names.unique(f"{base}_cast_{suffix}"),
        )
        output = node.outputs[0]
        output.name = self.names.unique(f"{base}_{suffix}")
        set_dtype(output, to)
        output.shape = value.shape
        stamp_decision(
            node, Decision(Precision.of_dtype(to), Reason.CAST, "inserted at a precision boundary")
        )
        self.created += 1
        return node
