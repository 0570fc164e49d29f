"""ApplyPrecisionPass alone: the plan made real (retype, constants, Casts), and the pass
manager runs its three steps one by one."""

from __future__ import annotations

import onnx_ir as ir
from pass_support import MATMUL_EXP, by_name, planned

from mpcompile.core.pipeline import Pipeline
from mpcompile.irtools.names import NameAuthority
from mpcompile.passes.apply_precision import ApplyPrecisionPass

F16, F32 = ir.DataType.FLOAT16, ir.DataType.FLOAT


def test_applies_the_plan_with_a_cast_at_each_boundary():
    converted, ctx, plan = planned(MATMUL_EXP)
    ApplyPrecisionPass(ctx, plan, NameAuthority(converted))(converted)
    nodes = by_name(converted)
    casts = [node for node in converted.graph if node.op_type == "Cast"]
    assert nodes["mm"].outputs[0].dtype == F16
    assert converted.graph.initializers["w"].dtype == F16
    assert [ir.DataType(node.attributes["to"].as_int()) for node in casts] == [F16, F32]
    assert nodes["exp"].inputs[0].producer() is casts[1]
    assert [value.dtype for value in (*converted.graph.inputs, *converted.graph.outputs)] == [F32, F32]
    converted.graph.sort()  # still a DAG


def test_the_pipeline_times_each_step():
    converted, ctx, plan = planned(MATMUL_EXP)
    pipeline = Pipeline([ApplyPrecisionPass(ctx, plan, NameAuthority(converted))])
    pipeline(converted)
    assert list(pipeline.seconds) == ["RetypeNodesPass", "ConvertConstantsPass", "InsertCastsPass"]
