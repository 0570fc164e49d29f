"""InferTypesPass alone: untyped intermediates get dtypes; values it cannot type are counted."""

from __future__ import annotations

import onnx_ir as ir
from pass_support import context, model

from mpcompile.passes.infer_types import InferTypesPass


def test_intermediates_are_typed():
    converted = model(
        """
g (float[2,4] x) => (float[2,4] y) {
  h = Relu(x)
  y = Neg(h)
}
"""
    )
    assert converted.graph.node(0).outputs[0].dtype is None
    ctx = context()
    assert InferTypesPass(ctx)(converted).modified
    assert converted.graph.node(0).outputs[0].dtype == ir.DataType.FLOAT
    assert ctx.stats.untyped_values == 0


def test_values_of_unknown_ops_stay_untyped_and_are_counted():
    converted = model(
        """
<ir_version: 8, opset_import: ["" : 17, "example.custom" : 1]>
g (float[2] x) => (float[2] y) {
  h = example.custom.Mystery(x)
  y = Relu(h)
}
"""
    )
    ctx = context()
    InferTypesPass(ctx)(converted)
    assert converted.graph.node(0).outputs[0].dtype is None
    assert ctx.stats.untyped_values >= 1
