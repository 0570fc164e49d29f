"""VerifyPass alone: a type-variable conflict or a changed graph interface is an internal error."""

from __future__ import annotations

import onnx_ir as ir
import pytest
from pass_support import MATMUL_EXP, context, model

from mpcompile.passes.verify import VerifyPass, io_signature


def test_a_consistent_model_passes():
    converted = model(MATMUL_EXP)
    assert not VerifyPass(context(), io_signature(converted))(converted).modified


def test_inputs_of_one_type_variable_with_two_dtypes_fail():
    converted = model(
        """
g (float[3] x, float16[3] z) => (float[3] y) {
  [add] y = Add(x, z)
}
"""
    )
    with pytest.raises(ir.passes.InvariantError, match="bound to both"):
        VerifyPass(context())(converted)


def test_a_changed_graph_output_dtype_fails():
    converted = model(MATMUL_EXP)
    signature = io_signature(converted)
    converted.graph.outputs[0].dtype = ir.DataType.FLOAT16
    converted.graph.node(1).outputs[0].dtype = ir.DataType.FLOAT16
    with pytest.raises(ir.passes.InvariantError, match="graph inputs/outputs changed"):
        VerifyPass(context(), signature)(converted)
