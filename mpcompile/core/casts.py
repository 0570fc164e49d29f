"""The one place Casts are created: one Cast per (value, target type, graph), uniquely named."""

from __future__ import annotations

import onnx_ir as ir

from mpcompile.core.plan import Decision, Reason, stamp_decision
from mpcompile.core.precision import Precision
from mpcompile.irtools.names import NameAuthority
from mpcompile.irtools.values import set_dtype

SUFFIX = {
    ir.DataType.FLOAT: "fp32",
    ir.DataType.FLOAT16: "fp16",
    ir.DataType.BFLOAT16: "bf16",
    ir.DataType.DOUBLE: "fp64",
}


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
