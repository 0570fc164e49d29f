"""The training rule set: the decision cascade for one node of an ORT training (or eval) graph.

The first rule that matches decides:

1. the user's ``--block-op`` (by op type, any domain) and ``--block-node`` (full-match patterns);
2. the loss subgraph and its gradient (``training_ops.LOSS_SUBGRAPH_NODE_PREFIX``) stay FP32;
3. an op without a typing rule in ``training_ops`` stays FP32 (``training:<op>``);
4. an op whose data inputs are not all FP32 (or untyped) touches no float data it could lower;
5. an ``allow`` op computes in low precision;
6. a ``follow`` op joins low precision when one of its data inputs already is low precision,
   else it stays FP32 (``not-between-low``).

``passes/assign_training_precision.py`` paints a plan with it, node by node in topological order.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable

import onnx_ir as ir

from mpcompile.core.plan import Decision, Reason
from mpcompile.core.precision import Precision
from mpcompile.policy import training_ops


class TrainingRules:
    """The cascade for one conversion: the low-precision type and the user's overrides."""

    def __init__(
        self,
        precision: Precision = Precision.FP16,
        *,
        block_ops: Iterable[str] = (),
        block_nodes: Iterable[str] = (),
    ) -> None:
        self.precision = precision
        self.block_ops = frozenset(block_ops)
        self.node_patterns = [re.compile(pattern) for pattern in block_nodes]

    def decide(self, node: ir.Node, low_values: Collection[ir.Value]) -> Decision:
        """The decision for ``node``, given the values already computed in low precision."""
        rule = training_ops.rule_for(node.domain, node.op_type)
        name = node.name or ""
        if node.op_type in self.block_ops:
            return Decision(Precision.FP32, Reason.USER_BLOCK_OP, node.op_type)
        if any(pattern.fullmatch(name) for pattern in self.node_patterns):
            return Decision(Precision.FP32, Reason.USER_BLOCK_NODE, name)
        if name.startswith(training_ops.LOSS_SUBGRAPH_NODE_PREFIX):
            return Decision(Precision.FP32, Reason.BLOCK, "training:loss-subgraph")
        if rule is None:
            return Decision(Precision.FP32, Reason.BLOCK, f"training:{node.op_type}")
        if not _data_inputs_are_float(node, rule):
            return Decision(Precision.FP32, Reason.NO_FLOAT, f"training:{node.op_type}")
        if rule.allow:
            return Decision(self.precision, Reason.ALLOW, f"training:{node.op_type}")
        if any(node.inputs[i] in low_values for i in rule.data_inputs(len(node.inputs))):
            return Decision(self.precision, Reason.FOLLOW, f"training:{node.op_type}")
        return Decision(Precision.FP32, Reason.NOT_BETWEEN_LOW, f"training:{node.op_type}")


def is_data_input(node: ir.Node, index: int) -> bool:
    """Whether input ``index`` of ``node`` is bound to the op's float type variable."""
    rule = training_ops.rule_for(node.domain, node.op_type)
    return rule is not None and index in rule.data_inputs(len(node.inputs))


def _data_inputs_are_float(node: ir.Node, rule: training_ops.OpRule) -> bool:
    for index in rule.data_inputs(len(node.inputs)):
        value = node.inputs[index]
        if value is not None and value.dtype not in (None, ir.DataType.FLOAT):
            return False
    return True
