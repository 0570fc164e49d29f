"""InsertCastsPass alone: every input whose dtype is not the one the plan requires reads a
Cast; graph outputs get their planned dtype back under their public name."""

from __future__ import annotations

import onnx_ir as ir
from pass_support import MATMUL_EXP, by_name, planned

from mpcompile.core.casts import CastFactory
from mpcompile.irtools.names import NameAuthority
from mpcompile.passes.insert_casts import InsertCastsPass
from mpcompile.passes.retype_nodes import RetypeNodesPass

F16, F32 = ir.DataType.FLOAT16, ir.DataType.FLOAT


def _cast_to(value: ir.Value) -> ir.DataType | None:
    producer = value.producer()
    if producer is None or producer.op_type != "Cast":
        return None
    return ir.DataType(producer.attributes["to"].as_int())


def test_inputs_that_do_not_have_the_required_dtype_read_a_cast():
    converted, ctx, plan = planned(MATMUL_EXP)  # nothing retyped yet: x and w are FP32
    result = InsertCastsPass(ctx, plan, CastFactory(NameAuthority(converted)))(converted)
    nodes = by_name(converted)
    assert result.modified and ctx.stats.casts_inserted == 2
    assert [_cast_to(value) for value in nodes["mm"].inputs] == [F16, F16]
    assert _cast_to(nodes["exp"].inputs[0]) is None  # required FP32, is FP32


def test_after_retyping_fp32_readers_of_low_values_get_a_cast_back():
    converted, ctx, plan = planned(MATMUL_EXP)
    RetypeNodesPass(ctx, plan)(converted)
    InsertCastsPass(ctx, plan, CastFactory(NameAuthority(converted)))(converted)
    assert _cast_to(by_name(converted)["exp"].inputs[0]) == F32


def test_a_graph_output_made_low_is_cast_back_under_its_name():
    text = MATMUL_EXP.replace("[exp] y = Exp(h)", "[relu] y = Relu(h)")
    converted, ctx, plan = planned(text)
    RetypeNodesPass(ctx, plan)(converted)
    assert by_name(converted)["relu"].outputs[0].dtype == F16
    InsertCastsPass(ctx, plan, CastFactory(NameAuthority(converted)))(converted)
    output = converted.graph.outputs[0]
    assert output.name == "y" and output.dtype == F32 and _cast_to(output) == F32
    assert by_name(converted)["relu"].outputs[0].name != "y"
