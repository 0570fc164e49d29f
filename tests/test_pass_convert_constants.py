"""ConvertConstantsPass alone: float constants read in low precision (by the plan's required
input dtypes) become low precision; shared ones get a low-precision copy; masks are clamped."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from pass_support import MATMUL_EXP, by_name, planned
from test_pass_assign_precision import MASKED_SOFTMAX

from mpcompile.irtools.names import NameAuthority
from mpcompile.passes.convert_constants import ConvertConstantsPass

F16, F32 = ir.DataType.FLOAT16, ir.DataType.FLOAT


def _convert(text: str):
    converted, ctx, plan = planned(text)
    result = ConvertConstantsPass(ctx, plan, NameAuthority(converted))(converted)
    return converted, ctx, result


def test_weight_read_only_in_low_precision_is_converted_in_place():
    converted, ctx, result = _convert(MATMUL_EXP)
    weight = converted.graph.initializers["w"]
    assert result.modified
    assert weight.dtype == F16 and weight.const_value.dtype == F16
    assert weight.const_value.numpy().dtype == np.float16
    assert ctx.stats.initializers_converted == 1 and ctx.stats.initializers_duplicated == 0


SHARED = """
g (float[2,4] x) => (float[2,4] y, float[2,4] z) <float[4,4] w = {1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16}> {
  [mm] y = MatMul(x, w)
  [mul] z = Mul(w, w)
}
"""


def test_weight_also_read_in_fp32_keeps_its_original_and_gets_a_copy():
    converted, ctx, _ = _convert(SHARED)
    nodes = by_name(converted)
    assert converted.graph.initializers["w"].dtype == F32
    copy = nodes["mm"].inputs[1]
    assert copy is not converted.graph.initializers["w"] and copy.dtype == F16
    assert copy.name in converted.graph.initializers
    assert nodes["mul"].inputs[0] is converted.graph.initializers["w"]
    assert ctx.stats.initializers_duplicated == 1


def test_attention_mask_is_clamped_to_the_fp16_limit():
    converted, ctx, _ = _convert(MASKED_SOFTMAX)
    mask = by_name(converted)["add"].inputs[1]
    values = mask.const_value.numpy().astype(np.float32)
    assert values.min() == -65504.0 and np.isfinite(values).all()
    assert ctx.stats.values_clamped == 2


def test_constant_read_only_in_fp32_is_left_alone():
    text = MATMUL_EXP.replace("[mm] h = MatMul(x, w)", "[mm] h = Add(x, x)")
    converted, _, result = _convert(text)  # w unused: nothing reads it in low precision
    assert not result.modified
    assert converted.graph.initializers["w"].dtype == F32
