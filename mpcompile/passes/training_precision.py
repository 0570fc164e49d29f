"""The precision passes of a training (or eval) graph: paint the plan, apply it, stamp it.

``AssignTrainingPrecisionPass`` paints each node of the main graph with the training rule set
(``mpcompile.policy.training_rules``); ``ApplyTrainingPrecisionPass`` retypes the low-precision
nodes and inserts one Cast per (value, type), right after the value's producer;
``StampTrainingDecisionsPass`` writes the decisions and the model's provenance.

What stays FP32, whatever the plan: graph inputs (user inputs, parameters = master weights,
gradient accumulation buffers) and graph outputs keep their names and types; a low-precision
node reads a parameter through a Cast, so each parameter is cast once and shared by all its uses
(``MasterWeightsPass`` checks it).
"""

from __future__ import annotations

import onnx_ir as ir

from mpcompile.core.casts import CastFactory
from mpcompile.core.plan import MODEL_PRECISION_KEY, MODEL_VERSION_KEY, PrecisionPlan, stamp_decision
from mpcompile.irtools.names import NameAuthority
from mpcompile.irtools.values import set_dtype
from mpcompile.passes.base import PlanPass
from mpcompile.passes.context import ConversionContext
from mpcompile.policy import training_ops
from mpcompile.policy.training_rules import TrainingRules, is_data_input
from mpcompile.version import __version__


class AssignTrainingPrecisionPass(PlanPass):
    """Fill the plan: one decision per node of the main graph (nodes in topological order)."""

    def __init__(self, context: ConversionContext, plan: PrecisionPlan, rules: TrainingRules):
        super().__init__(context, plan)
        self.rules = rules

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        self.plan.graphs = [(graph, model.opset_imports.get("", 0))]
        low_values: set[ir.Value] = set()
        for node in graph:
            decision = self.rules.decide(node, low_values)
            self.plan[node] = decision
            self.context.stats.nodes_by_precision[decision.precision.value] += 1
            if decision.is_low:
                rule = training_ops.rule_for(node.domain, node.op_type)
                assert rule is not None
                outputs = rule.data_outputs(len(node.outputs))
                low_values.update(output for i, output in enumerate(node.outputs) if i in outputs)
        return ir.passes.PassResult(model, modified=False)


class ApplyTrainingPrecisionPass(PlanPass):
    """Retype the low-precision nodes and insert the Casts their boundaries need.

    Casts come from the core's ``CastFactory``: one per (value, type), right after the producer.
    Their count goes to ``context.stats.casts_inserted``."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        factory = CastFactory(NameAuthority(model))
        low_outputs: dict[ir.Value, ir.DataType] = {}
        for node in list(graph):
            decision = self.plan.get(node)
            if decision is None or not decision.is_low:
                continue
            rule = training_ops.rule_for(node.domain, node.op_type)
            assert rule is not None
            low = decision.precision.dtype
            for index in rule.data_inputs(len(node.inputs)):
                value = node.inputs[index]
                if value is None or low_outputs.get(value) == low:
                    continue
                node.replace_input_with(index, factory.cast(value, low, graph))
            for index in rule.data_outputs(len(node.outputs)):
                output = node.outputs[index]
                if output.name == "":
                    continue
                set_dtype(output, low)
                low_outputs[output] = low
        # Consumers outside the low-precision region (FP32 nodes, subgraphs, graph outputs) read FP32.
        for value, low in low_outputs.items():
            fp32_uses = [
                use
                for use in value.uses()
                if not (self.plan.get(use.node) is not None and self.plan[use.node].precision.dtype == low)
                or not is_data_input(use.node, use.idx)
            ]
            for use in fp32_uses:
                use.node.replace_input_with(use.idx, factory.cast(value, ir.DataType.FLOAT, graph))
            if value.is_graph_output():
                _restore_graph_output(graph, value, factory)
        self.context.stats.casts_inserted += factory.created
        return ir.passes.PassResult(model, modified=bool(low_outputs))


class StampTrainingDecisionsPass(PlanPass):
    """Write each planned node's decision, then the model's low precision and mpcompile version."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for node, decision in self.plan.items():
            if node.graph is not None:
                stamp_decision(node, decision)
        model.metadata_props[MODEL_PRECISION_KEY] = self.context.low.precision.value
        model.metadata_props[MODEL_VERSION_KEY] = __version__
        return ir.passes.PassResult(model, modified=True)


def _restore_graph_output(graph: ir.Graph, value: ir.Value, factory: CastFactory) -> None:
    """Keep a graph output's name and FP32 type: the Cast's output takes over the name."""
    fp32 = factory.cast(value, ir.DataType.FLOAT, graph)
    position = next(i for i, out in enumerate(graph.outputs) if out is value)
    graph.outputs[position] = fp32
    original_name = value.name
    value.name = factory.names.unique(f"{original_name}_{value.dtype.name.lower()}")
    fp32.name = original_name
    fp32.shape = value.shape
