"""AssignPrecisionPass alone: it fills the plan (decisions, typings, required input dtypes,
output dtypes, masks to clamp) and changes nothing in the model."""

from __future__ import annotations

import onnx_ir as ir
from pass_support import MATMUL_EXP, by_name, context, planned

from mpcompile.core.plan import Decision, Reason
from mpcompile.core.precision import Precision
from mpcompile.policy import Policy

F16, F32 = ir.DataType.FLOAT16, ir.DataType.FLOAT


def test_allow_op_goes_low_and_block_op_stays_fp32():
    model, _, plan = planned(MATMUL_EXP)
    nodes = by_name(model)
    assert plan[nodes["mm"]] == Decision(Precision.FP16, Reason.ALLOW, "policy.allow[MatMul]")
    assert plan[nodes["exp"]] == Decision(Precision.FP32, Reason.BLOCK, "policy.block[Exp]")


def test_plan_records_the_input_dtypes_the_decisions_imply():
    model, _, plan = planned(MATMUL_EXP)
    nodes = by_name(model)
    assert [plan.required_input_dtype(nodes["mm"], i) for i in (0, 1)] == [F16, F16]
    assert plan.required_input_dtype(nodes["exp"], 0) == F32
    assert plan.required_input_dtype(nodes["exp"], 5) is None  # no such input
    assert list(plan.typing(nodes["mm"]).float_outputs) == [0]
    assert plan.output_dtypes == {model.graph.outputs[0]: F32}
    assert [graph for graph, _ in plan.graphs] == [model.graph]


def test_the_model_is_not_modified():
    model, _, _ = planned(MATMUL_EXP)
    assert [value.dtype for node in model.graph for value in node.outputs] == [F32, F32]
    assert model.graph.initializers["w"].dtype == F32
    assert all("mpcompile.precision" not in node.metadata_props for node in model.graph)


def test_node_override_is_taken_as_given_and_user_block_nodes_win():
    kept = Decision(Precision.FP32, "auto:sensitivity", "kept by the test")
    model, _, plan = planned(MATMUL_EXP, context(node_overrides={"mm": kept}))
    assert plan[by_name(model)["mm"]] == kept
    user = context(policy=Policy.from_options(block_nodes=["m."]), node_overrides={"mm": kept})
    model, _, plan = planned(MATMUL_EXP, user)
    assert plan[by_name(model)["mm"]] == Decision(
        Precision.FP32, Reason.USER_BLOCK_NODE, "user.block_nodes[m.]"
    )


MASKED_SOFTMAX = """
g (float[1,4] x) => (float[1,4] y) <float[4,4] w = {1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1}, float[1,4] mask = {0,0,-1e9,-1e9}> {
  [mm] h = MatMul(x, w)
  [add] s = Add(h, mask)
  [sm] y = Softmax(s)
}
"""


def test_attention_mask_beyond_fp16_range_is_clamped_when_its_softmax_goes_low():
    model, _, plan = planned(MASKED_SOFTMAX)
    nodes = by_name(model)
    assert plan.is_low(nodes["add"]) and plan.is_low(nodes["sm"])  # not kept FP32 for range
    assert plan.clamped_masks == {model.graph.initializers["mask"]}


def test_constant_beyond_range_without_softmax_keeps_its_reader_fp32():
    text = MASKED_SOFTMAX.replace("[sm] y = Softmax(s)", "[relu] y = Relu(s)")
    model, _, plan = planned(text)
    decision = plan[by_name(model)["add"]]
    assert decision.reason == Reason.RANGE and "mask" in decision.rule
    assert plan.clamped_masks == set()
