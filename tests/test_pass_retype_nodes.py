"""RetypeNodesPass alone: low-precision nodes of the plan get low-precision outputs and dtype
attributes; nothing else changes type (Casts and constants are the other steps' work)."""

from __future__ import annotations

import onnx_ir as ir
from pass_support import MATMUL_EXP, by_name, context, model, planned

from mpcompile.core.plan import Decision, PrecisionPlan, Reason
from mpcompile.core.precision import Precision
from mpcompile.passes.retype_nodes import RetypeNodesPass

F16, F32 = ir.DataType.FLOAT16, ir.DataType.FLOAT


def test_low_nodes_output_low_precision_and_fp32_nodes_keep_their_types():
    converted, ctx, plan = planned(MATMUL_EXP)
    result = RetypeNodesPass(ctx, plan)(converted)
    nodes = by_name(converted)
    assert result.modified
    assert nodes["mm"].outputs[0].dtype == F16
    assert nodes["exp"].outputs[0].dtype == F32
    assert converted.graph.inputs[0].dtype == F32  # keep_io_types
    assert converted.graph.initializers["w"].dtype == F32  # ConvertConstantsPass's job


def test_without_keep_io_types_an_input_only_low_nodes_read_goes_low():
    converted, ctx, plan = planned(MATMUL_EXP, context(fp32_io=frozenset()))
    RetypeNodesPass(ctx, plan)(converted)
    assert converted.graph.inputs[0].dtype == F16


def test_a_hand_made_plan_is_enough():
    """No assignment ran: the typing is derived from the schema, the graphs from the model."""
    converted = model(
        """
g (float[3] x) => (float[3] y) {
  [c] y = Cast <to = 1> (x)
}
"""
    )
    plan = PrecisionPlan()
    plan[by_name(converted)["c"]] = Decision(Precision.FP16, Reason.FOLLOW, "test")
    RetypeNodesPass(context(), plan)(converted)
    cast = by_name(converted)["c"]
    assert cast.outputs[0].dtype == F16
    assert cast.attributes["to"].as_int() == F16.value  # the dtype-carrying attribute follows


def test_nothing_low_changes_nothing():
    converted, ctx, plan = planned(
        MATMUL_EXP, context(node_overrides={"mm": Decision(Precision.FP32, "x", "")})
    )
    assert not RetypeNodesPass(ctx, plan)(converted).modified
    assert [v.dtype for n in converted.graph for v in n.outputs] == [F32, F32]
