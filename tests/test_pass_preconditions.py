"""The preconditions of a conversion are passes' ``requires``: OptimizePass, OrtLoadablePass and
AssignPrecisionPass alone, and the Pipeline raising the user error a ``requires`` finds as itself."""

from __future__ import annotations

import onnx_ir as ir
import pytest
from pass_support import MATMUL_EXP, context, model

import models
from mpcompile import convert, errors
from mpcompile.core.pipeline import Pipeline
from mpcompile.core.plan import PrecisionPlan
from mpcompile.passes.assign_precision import AssignPrecisionPass
from mpcompile.passes.optimize import OptimizePass
from mpcompile.passes.ort_loadable import OrtLoadablePass

OPSET_7 = '<ir_version: 8, opset_import: ["" : 7]>\n' + MATMUL_EXP

QDQ = """
g (float[2,4] x) => (float[2,4] y) <float s = {0.5}, uint8 z = {0}> {
  [q] xq = QuantizeLinear(x, s, z)
  [dq] y = DequantizeLinear(xq, s, z)
}
"""

TWO_NAMED_MM = """
g (float[2,4] x) => (float[2,4] y) <float[4,4] w = {1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16}> {
  [mm] h = MatMul(x, w)
  [mm] y = MatMul(h, w)
}
"""

CUSTOM = """
<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
g (float[2,4] x) => (float[2,4] y) {
  [scramble] y = com.example.Scramble(x)
}
"""


def test_assign_precision_requires_the_opset_of_the_low_cast():
    with pytest.raises(ir.passes.PreconditionError) as raised:
        AssignPrecisionPass(context("bf16"))(model(OPSET_7))
    assert isinstance(raised.value.__cause__, errors.UnsupportedOpsetError)
    # fp16's Cast exists at opset 7: the same model is accepted
    AssignPrecisionPass(context("fp16"))(model(OPSET_7))


def test_the_pipeline_raises_a_requires_user_error_as_itself():
    pipeline = Pipeline([AssignPrecisionPass(context("bf16"))])
    with pytest.raises(errors.UnsupportedOpsetError, match=r"bf16 needs ai\.onnx opset >= 13"):
        pipeline(model(OPSET_7))


def test_assign_precision_requires_allow_qdq_for_a_qdq_model():
    with pytest.raises(errors.QdqModelError, match="--allow-qdq"):
        Pipeline([AssignPrecisionPass(context())])(model(QDQ))
    plan = PrecisionPlan()
    Pipeline([AssignPrecisionPass(context(allow_qdq=True), plan)])(model(QDQ))
    assert sorted(node.name for node, _ in plan.items()) == ["dq", "q"]


def test_ort_loadable_refuses_a_custom_op_unless_allowed():
    with pytest.raises(errors.InvalidModelError, match=r"com\.example::Scramble"):
        Pipeline([OrtLoadablePass(context())])(model(CUSTOM))
    ctx = context(allow_custom_ops=True)
    assert not OrtLoadablePass(ctx)(model(CUSTOM)).modified


def test_ort_loadable_makes_node_names_unique_with_a_note():
    ctx = context()
    converted = model(TWO_NAMED_MM)
    assert OrtLoadablePass(ctx)(converted).modified
    assert [node.name for node in converted.graph] == ["mm", "mm_1"]
    assert ctx.notes and "'mm' -> 'mm_1'" in ctx.notes[0]


def test_optimize_pass_returns_a_new_model_and_leaves_its_input():
    ctx = context(optimize="basic")
    original = model(MATMUL_EXP)
    before = ir.to_proto(original).SerializeToString()
    result = OptimizePass(ctx)(original)
    assert result.model is not original and result.modified
    assert ir.to_proto(original).SerializeToString() == before
    assert "mpcompile.optimize" in result.model.metadata_props
    assert ctx.notes and ctx.notes[0].startswith("--optimize basic")
    assert [node.op_type for node in result.model.graph] == ["MatMul", "Exp"]


def test_optimize_is_the_first_pass_of_a_conversion():
    result = convert(models.mlp.build(), optimize="basic", target="cpu", static=True)
    assert list(result.stats.pass_seconds)[:3] == ["OptimizePass", "OrtLoadablePass", "InferTypesPass"]
    assert result.notes[0].startswith("--optimize basic")
    # without --static, the range run measures the graph as optimised and named
    result = convert(models.mlp.build(), optimize="basic", target="cpu")
    passes = ["OptimizePass", "OrtLoadablePass", "RangeRunPass", "InferTypesPass"]
    assert list(result.stats.pass_seconds)[:4] == passes
