"""policy/dtype_attributes.py: which attribute carries a node's output dtype."""

from __future__ import annotations

import onnx_ir as ir

from mpcompile.policy.dtype_attributes import LIKE_OPS, dtype_attribute


def test_each_kind_names_its_attribute():
    assert dtype_attribute(ir.node("Cast", [])) == "to"
    assert dtype_attribute(ir.node("RandomNormal", [])) == "dtype"
    assert dtype_attribute(ir.node("HannWindow", [])) == "output_datatype"
    assert dtype_attribute(ir.node("Relu", [])) is None
    assert dtype_attribute(ir.node("Cast", [], domain="com.example")) is None


def test_like_ops_carry_a_dtype_attribute_too():
    assert all(dtype_attribute(ir.node(op, [])) == "dtype" for op in LIKE_OPS)
