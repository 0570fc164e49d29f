"""policy/op_types.py: the typing rules (schema type variables, never-low ops, contrib typing)."""

from __future__ import annotations

import onnx_ir as ir
from pass_support import model

from mpcompile.policy import op_classes
from mpcompile.policy.op_types import CONTRIB_TYPING, NEVER_LOW, node_typing, type_variable_conflict

F16 = ir.DataType.FLOAT16


def _nodes(text: str) -> dict[str, ir.Node]:
    return {node.name: node for node in model(text).graph}


def test_schema_type_variable_picks_the_float_slots():
    nodes = _nodes(
        """
g (float[2,3] x, int64[1] shape) => (float[6] y) {
  [reshape] y = Reshape(x, shape)
}
"""
    )
    typing = node_typing(nodes["reshape"], 17, F16)
    assert typing.float_inputs == (0,) and typing.low_allowed  # the shape input keeps int64


def test_never_low_ops_are_typed_but_not_allowed_low():
    assert ("", "BitCast") in NEVER_LOW


def test_contrib_ops_are_typed_by_their_rule():
    key = (op_classes.MICROSOFT, "Attention")
    assert key in CONTRIB_TYPING
    node = ir.node("Attention", [ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT))], domain=key[0])
    node.outputs[0].dtype = ir.DataType.FLOAT
    typing = node_typing(node, 17, F16)
    assert typing is not None and typing.float_inputs == (0,) and typing.low_allowed


def test_unknown_op_has_no_typing():
    node = ir.node("Mystery", [ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT))], domain="example")
    assert node_typing(node, 17, F16) is None


def test_a_type_variable_bound_to_two_dtypes_is_a_conflict():
    nodes = _nodes(
        """
g (float[3] x, float16[3] z) => (float[3] y) {
  [add] y = Add(x, z)
}
"""
    )
    assert "bound to both" in type_variable_conflict(nodes["add"], 17, {"": 17})
