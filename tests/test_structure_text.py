"""The load check that refuses string fields holding bytes that are not UTF-8 (``io/structure.py``).

protobuf reads such a proto2 string back as ``bytes``; onnx-ir then fails writing the model. The
check parses the model again as proto3 messages (which validate UTF-8), and where that finds
something, walks the fields to name it; without proto3 messages it walks every field.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mpcompile import errors
from mpcompile.io import structure

MARK = "@MARK@"  # replaced in the serialized bytes by bytes that are not UTF-8, same length
BAD = b"\xff\xfe\xfdMK@"


def _model(**names: str) -> onnx.ModelProto:
    """A small model with an If subgraph, a local function and metadata; ``names`` put MARK into
    one of its string fields."""
    get = lambda key, default: names.get(key, default)  # noqa: E731
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), get("initializer", "W"))
    branch_weight = numpy_helper.from_array(np.ones(4, np.float32), get("branch_initializer", "B"))
    then_branch = helper.make_graph(
        [helper.make_node("Add", ["y", get("branch_initializer", "B")], ["t"], name=get("branch_node", "badd"))],
        "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])], [branch_weight],
    )  # fmt: skip
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["y"], ["e"])],
        "else", [], [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])],
    )  # fmt: skip
    nodes = [
        helper.make_node("MatMul", ["x", get("initializer", "W")], ["y"], name=get("node", "mm")),
        helper.make_node("ReduceSum", ["y"], ["s"], keepdims=0, name="sum"),
        helper.make_node("Cast", ["s"], ["c"], to=TensorProto.BOOL),
        helper.make_node("If", ["c"], ["z"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Scale", ["z"], ["out"], domain="local", name=get("call", "call")),
    ]
    graph = helper.make_graph(
        nodes, get("graph", "g"),
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
        [weight], doc_string=get("doc", ""),
    )  # fmt: skip
    function = helper.make_function(
        "local", "Scale", ["a"], ["b"],
        [helper.make_node("Identity", ["a"], ["b"], name=get("function_node", "fid"))],
        [helper.make_opsetid("", 17)],
    )  # fmt: skip
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        functions=[function],
        producer_name=get("producer", "test"),
    )
    helper.set_model_props(model, {"key": get("metadata", "value")})
    return model


def _with_bad_bytes(model: onnx.ModelProto) -> onnx.ModelProto:
    data = model.SerializeToString()
    assert data.count(MARK.encode()) >= 1
    return onnx.ModelProto.FromString(data.replace(MARK.encode(), BAD))


PLACES = (
    "node", "graph", "doc", "initializer", "branch_node", "branch_initializer",
    "call", "function_node", "producer", "metadata",
)  # fmt: skip


@pytest.fixture(params=["proto3 parse", "field walk"])
def check(request, monkeypatch):
    if request.param == "field walk":
        monkeypatch.setattr(structure, "_strict_messages", lambda: None)
    return structure.check_structure


def test_a_clean_model_passes(check):
    model = _model()
    onnx.checker.check_model(model)
    check(model)
    assert structure._may_hold_non_text(model) is False or structure._strict_messages() is None


@pytest.mark.parametrize("place", PLACES)
def test_bytes_that_are_not_utf8_are_refused_with_the_field_named(check, place):
    model = _with_bad_bytes(_model(**{place: MARK}))
    with pytest.raises(errors.InvalidModelError, match="holds bytes that are not UTF-8 text"):
        check(model)


def test_the_proto3_messages_are_built():
    assert structure._strict_messages() is not None
