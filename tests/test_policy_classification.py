"""policy/classification.py: the cascade's verdict for one node, each fixed one with its reason."""

from __future__ import annotations

import onnx_ir as ir
from pass_support import context, model

from mpcompile.core.plan import Decision, Reason
from mpcompile.core.precision import Precision
from mpcompile.core.ranges import ConstantRanges
from mpcompile.passes.infer_types import InferTypesPass
from mpcompile.policy import OpClass, Policy
from mpcompile.policy.classification import NodeRules, blocking_attribute

GRAPH = """
<ir_version: 8, opset_import: ["" : 17, "example.custom" : 1]>
g (float[2,4] x, int64[2] i, float[4] u) => (float[2,4] y, float[2,4] e, int64[2] j, float[4] m, float[2,4] k, float[4] v)
  <float[4,4] w = {1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16}, float[4] big = {1,1,1,1e6}> {
  [mm] y = MatMul(x, w)
  [exp] e = Exp(x)
  [neg] j = Neg(i)
  [mystery] m = example.custom.Mystery(u)
  [keep] k = Relu(x)
  [addbig] v = Add(u, big)
}
"""


def _rules(**options) -> tuple[dict[str, ir.Node], NodeRules]:
    ctx = context(**options)
    converted = model(GRAPH)
    InferTypesPass(ctx)(converted)
    ranges = ConstantRanges(ctx.low)
    rules = NodeRules(
        low=ctx.low, target=ctx.target, policy=ctx.policy, opset=17, opset_imports=converted.opset_imports,
        constant_range=ranges.of, node_overrides=ctx.node_overrides,
    )  # fmt: skip
    return {node.name: node for node in converted.graph}, rules


def test_painted_nodes_get_their_op_class_and_rule():
    nodes, rules = _rules()
    verdict = rules.verdict(nodes["mm"])
    assert not verdict.fixed and verdict.op_class == OpClass.ALLOW and verdict.rule == "policy.allow[MatMul]"
    assert rules.verdict(nodes["exp"]).op_class == OpClass.BLOCK


def test_fixed_verdicts_carry_their_reason():
    nodes, rules = _rules()
    assert rules.verdict(nodes["neg"]).decision == Decision(Precision.NONE, Reason.NO_FLOAT)
    unknown = rules.verdict(nodes["mystery"]).decision
    assert unknown.reason == Reason.UNKNOWN_OP and unknown.rule == "no schema for example.custom::Mystery"
    ranged = rules.verdict(nodes["addbig"]).decision
    assert ranged.reason == Reason.RANGE and "'big'" in ranged.rule


def test_user_block_nodes_come_before_overrides_and_both_before_the_op_class():
    kept = Decision(Precision.FP32, "auto:range", "measured")
    nodes, rules = _rules(
        policy=Policy.from_options(block_nodes=["ke+p"]), node_overrides={"mm": kept, "keep": kept}
    )
    assert rules.verdict(nodes["mm"]).decision == kept
    assert rules.verdict(nodes["keep"]).decision == Decision(
        Precision.FP32, Reason.USER_BLOCK_NODE, "user.block_nodes[ke+p]"
    )


def test_user_allow_list_wins_over_the_default_block_list():
    nodes, rules = _rules(policy=Policy.from_options(allow_ops=["Exp"]))
    verdict = rules.verdict(nodes["exp"])
    assert verdict.op_class == OpClass.ALLOW and verdict.by_user and verdict.rule == "user.allow_ops[Exp]"


def test_accumulating_attribute_blocks_the_op():
    scatter = ir.node("ScatterElements", [], attributes={"reduction": "add"})
    assert blocking_attribute(scatter) == "reduction=add"
    assert blocking_attribute(ir.node("ScatterElements", [], attributes={"reduction": "none"})) is None
