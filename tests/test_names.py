"""``mpcompile.irtools.names.NameAuthority``: the one source of generated names."""

from __future__ import annotations

import onnx_ir as ir

from mpcompile.core.casts import NameAuthority as CoreNameAuthority
from mpcompile.evaluate.faithful import build_faithful_model
from mpcompile.irtools.names import NameAuthority

MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
agraph (float16[2] x) => (float16[2] y) {
    y__unrounded = Relu(x)
    y = Neg(y__unrounded)
}
"""


def test_a_free_base_is_returned_as_it_is_and_a_taken_one_numbered():
    model = ir.from_onnx_text(MODEL)
    names = NameAuthority(model)
    assert names.unique("z") == "z"
    assert names.unique("z") == "z_1"
    assert names.unique("x") == "x_1"  # a graph input
    assert names.unique("y__unrounded") == "y__unrounded_1"  # a node output


def test_the_core_uses_the_same_authority():
    assert CoreNameAuthority is NameAuthority


def test_faithful_rounding_names_do_not_collide_with_the_models():
    evaluation, _declared = build_faithful_model(ir.from_onnx_text(MODEL))
    names = [value.name for node in evaluation.graph for value in node.outputs]
    assert len(names) == len(set(names))
    assert "y" in names and "y__unrounded_1" in names


def test_an_authority_made_without_a_model_reads_the_first_one_it_is_bound_to():
    names = NameAuthority()  # as build_pipeline makes it: --optimize hands the passes a new model
    names.bind(ir.from_onnx_text(MODEL))
    names.bind(ir.from_onnx_text(MODEL.replace("y__unrounded", "other")))  # bound already: ignored
    assert names.unique("y__unrounded") == "y__unrounded_1"
    assert names.unique("other") == "other"
