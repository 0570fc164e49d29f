"""Rewrite an ORT training (or eval) graph to mixed precision.

The decision is separate from the mutation: ``plan_training_precision`` paints nodes using the
rules in ``mpcompile.policy.training_ops`` and returns a ``PrecisionPlan``; ``apply_training_precision`` retypes the
low-precision nodes and inserts one Cast per (value, type), right after the value's producer.

What stays FP32, whatever the plan: graph inputs (user inputs, parameters = master weights,
gradient accumulation buffers) and graph outputs keep their names and types; a low-precision
node reads a parameter through a Cast, so each parameter is cast once and shared by all its uses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import onnx_ir as ir

from mpcompile.core.casts import CastFactory
from mpcompile.core.plan import Decision, PrecisionPlan, Reason, stamp_decision
from mpcompile.core.precision import Precision
from mpcompile.irtools.names import NameAuthority
from mpcompile.irtools.values import set_dtype
from mpcompile.policy import training_ops


def plan_training_precision(
    graph: ir.Graph,
    precision: Precision = Precision.FP16,
    *,
    block_ops: Iterable[str] = (),
    block_nodes: Iterable[str] = (),
) -> PrecisionPlan:
    """Decide each node's precision in a training graph (nodes must be in topological order)."""
    blocked_ops = set(block_ops)
    node_patterns = [re.compile(p) for p in block_nodes]
    plan = PrecisionPlan()
    low_values: set[ir.Value] = set()
    for node in graph:
        rule = training_ops.rule_for(node.domain, node.op_type)
        name = node.name or ""
        decision: Decision
        if node.op_type in blocked_ops:
            decision = Decision(Precision.FP32, Reason.USER_BLOCK_OP, node.op_type)
        elif any(p.fullmatch(name) for p in node_patterns):
            decision = Decision(Precision.FP32, Reason.USER_BLOCK_NODE, name)
        elif name.startswith(training_ops.LOSS_SUBGRAPH_NODE_PREFIX):
            decision = Decision(Precision.FP32, Reason.BLOCK, "training:loss-subgraph")
        elif rule is None:
            decision = Decision(Precision.FP32, Reason.BLOCK, f"training:{node.op_type}")
        elif not _data_inputs_are_float(node, rule):
            decision = Decision(Precision.FP32, Reason.NO_FLOAT, f"training:{node.op_type}")
        elif rule.allow:
            decision = Decision(precision, Reason.ALLOW, f"training:{node.op_type}")
        elif any(node.inputs[i] in low_values for i in rule.data_inputs(len(node.inputs))):
            decision = Decision(precision, Reason.FOLLOW, f"training:{node.op_type}")
        else:
            decision = Decision(Precision.FP32, Reason.NOT_BETWEEN_LOW, f"training:{node.op_type}")
        plan[node] = decision
        if decision.is_low:
            low_values.update(
                o for i, o in enumerate(node.outputs) if i in rule.data_outputs(len(node.outputs))
            )
    return plan


def apply_training_precision(model: ir.Model, plan: PrecisionPlan) -> int:
    """Retype low-precision nodes and insert the Casts their boundaries need; return Casts added.

    Casts come from the core's ``CastFactory``: one per (value, type), right after the producer."""
    graph = model.graph
    casts = _Casts(CastFactory(NameAuthority(model)), graph)
    low_outputs: dict[ir.Value, ir.DataType] = {}
    for node in list(graph):
        decision = plan.get(node)
        if decision is None:
            continue
        stamp_decision(node, decision)
        if not decision.is_low:
            continue
        rule = training_ops.rule_for(node.domain, node.op_type)
        assert rule is not None
        low = decision.precision.dtype
        for index in rule.data_inputs(len(node.inputs)):
            value = node.inputs[index]
            if value is None or low_outputs.get(value) == low:
                continue
            node.replace_input_with(index, casts.get(value, low))
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
            if not (plan.get(use.node) is not None and plan[use.node].precision.dtype == low)
            or not _is_data_input(use.node, use.idx)
        ]
        for use in fp32_uses:
            use.node.replace_input_with(use.idx, casts.get(value, ir.DataType.FLOAT))
        if value.is_graph_output():
            _restore_graph_output(graph, value, casts)
    return casts.count


def _data_inputs_are_float(node: ir.Node, rule: training_ops.OpRule) -> bool:
    for index in rule.data_inputs(len(node.inputs)):
        value = node.inputs[index]
        if value is not None and value.dtype not in (None, ir.DataType.FLOAT):
            return False
    return True


def _is_data_input(node: ir.Node, index: int) -> bool:
    rule = training_ops.rule_for(node.domain, node.op_type)
    return rule is not None and index in rule.data_inputs(len(node.inputs))


def _restore_graph_output(graph: ir.Graph, value: ir.Value, casts: _Casts) -> None:
    """Keep a graph output's name and FP32 type: the Cast's output takes over the name."""
    fp32 = casts.get(value, ir.DataType.FLOAT)
    position = next(i for i, out in enumerate(graph.outputs) if out is value)
    graph.outputs[position] = fp32
    original_name = value.name
    value.name = casts.factory.names.unique(f"{original_name}_{value.dtype.name.lower()}")
    fp32.name = original_name
    fp32.shape = value.shape


class _Casts:
    """The factory bound to one graph, counting what it created."""

    def __init__(self, factory: CastFactory, graph: ir.Graph) -> None:
        self.factory = factory
        self.graph = graph

    def get(self, value: ir.Value, dtype: ir.DataType) -> ir.Value:
        return self.factory.cast(value, dtype, self.graph)

    @property
    def count(self) -> int:
        return self.factory.created
