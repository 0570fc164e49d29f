"""Insert the Casts the new types need: one per (value, target type, graph).

Every node input whose value no longer has the dtype the plan requires for it
(``PrecisionPlan.required_input_dtype``) reads a Cast instead: also the FP32 readers of a
main-graph input that went low precision. Every graph output gets the dtype the plan's
``output_dtypes`` gives it, under its own name: its original dtype for subgraphs (bound to the
If/Loop/Scan node's declared types) and for the main-graph outputs kept FP32, the low-precision
type for the others (``keep_io_types``). Step 3 of ApplyPrecisionPass.
"""

from __future__ import annotations

import onnx_ir as ir

from mpcompile.core.casts import SUFFIX, CastFactory
from mpcompile.core.plan import PrecisionPlan
from mpcompile.passes.base import PlanPass
from mpcompile.passes.context import ConversionContext


class InsertCastsPass(PlanPass):
    """Reconcile every input and graph output with its required dtype."""

    def __init__(self, context: ConversionContext, plan: PrecisionPlan, casts: CastFactory):
        super().__init__(context, plan)
        self.casts = casts

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.casts.names.bind(model)
        before = self.casts.created
        plan = self.plan
        graphs = [graph for graph, _ in self.graphs(model)]
        for graph in graphs:
            for node in list(graph):
                for index, value in enumerate(node.inputs):
                    if value is None:
                        continue
                    wanted = plan.required_input_dtype(node, index)
                    if wanted is not None and value.dtype is not None and value.dtype != wanted:
                        node.replace_input_with(index, self.casts.cast(value, wanted, graph))
        for graph in graphs:
            self._cast_outputs(graph)
        self.context.stats.casts_inserted = self.casts.created - before
        return ir.passes.PassResult(model, modified=self.casts.created > before)

    def _cast_outputs(self, graph: ir.Graph) -> None:
        for position, value in enumerate(list(graph.outputs)):
            wanted = self.plan.output_dtypes.get(value)
            if wanted is None or value.dtype == wanted:
                continue
            cast_node = self.casts.make_cast_node(value, wanted)
            producer = value.producer()
            if producer is not None and producer.graph is graph:
                graph.insert_after(producer, cast_node)
            else:
                graph.append(cast_node)
            output = cast_node.outputs[0]
            # The graph output keeps its public name; the low-precision value is renamed.
            public_name = value.name
            suffix = SUFFIX.get(value.dtype, "low")
            value.name = self.casts.names.unique(f"{public_name}_{suffix}")
            output.name = public_name
            graph.outputs[position] = output
