"""Regression tests for the known failures of today's FP16 converters (issue 2).

Numbers are measured on ONNX Runtime's CPU EP, which runs FP16 nodes lacking an FP16
kernel in FP32 behind its own Casts: CPU results understate FP16 error.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import models
import mpcompile
from models import regressions
from models.builder import make_model, value_info, weight
from mpcompile.core.plan import Reason
from tests.helpers import assert_close, initializer, run


def convert_and_check(model: onnx.ModelProto, **options) -> mpcompile.ConvertResult:
    result = mpcompile.convert(model, **options)
    onnx.checker.check_model(result.model, full_check=True)
    return result


def decisions(result) -> list:
    return result.decisions()


def by_op(result, op_type: str) -> list:
    return [row for row in result.decisions() if row.op_type == op_type]


def test_existing_cast_to_float_inside_fp16_region_is_absorbed():
    model = regressions.existing_cast()
    result = convert_and_check(model)
    converted = ir.from_proto(result.model)
    original_casts = [
        node
        for node in converted.graph
        if node.op_type == "Cast" and node.metadata_props.get("mpcompile.reason") != "cast"
    ]
    assert original_casts == [], "the Cast(to=FLOAT) inside the FP16 region should fold away"
    assert {row.precision for row in by_op(result, "Relu")} == {"fp16"}
    feeds = models.make_inputs(model)
    assert_close(run(model, feeds), run(result.model, feeds), rtol=1e-2, atol=1e-2)


def test_initializer_shared_by_blocked_and_allowed_nodes_is_duplicated():
    model = regressions.shared_initializer()
    result = convert_and_check(model)
    types = {tensor.name: tensor.data_type for tensor in result.model.graph.initializer}
    assert types["W"] == TensorProto.FLOAT  # still read by the blocked Pow
    assert types["W_fp16"] == TensorProto.FLOAT16  # read by the MatMul
    assert result.stats.initializers_duplicated == 1
    feeds = models.make_inputs(model)
    assert_close(run(model, feeds), run(result.model, feeds), rtol=1e-2, atol=1e-2)


def test_initializers_listed_as_graph_inputs_stay_consistent():
    model = regressions.initializers_as_inputs()
    result = convert_and_check(model)
    inputs = {value.name: value.type.tensor_type.elem_type for value in result.model.graph.input}
    assert inputs == {"x": TensorProto.FLOAT, "W": TensorProto.FLOAT, "B": TensorProto.FLOAT}
    assert initializer(result.model, "W").data_type == TensorProto.FLOAT
    feeds = models.make_inputs(model)
    assert_close(run(model, feeds), run(result.model, feeds), rtol=1e-2, atol=1e-2)
    assert result.model.ir_version == 3  # kept: initializers are inputs by design there


def test_resize_scales_keep_float32():
    model = regressions.resize_scales()
    result = convert_and_check(model)
    assert {row.precision for row in by_op(result, "Resize")} == {"fp16"}
    assert initializer(result.model, "scales").data_type == TensorProto.FLOAT
    feeds = models.make_inputs(model)
    assert_close(run(model, feeds), run(result.model, feeds), rtol=1e-2, atol=2e-2)


def test_random_normal_like_dtype_stays_consistent():
    model = regressions.random_normal_like()
    result = convert_and_check(model)
    (node,) = [node for node in result.model.graph.node if node.op_type == "RandomNormalLike"]
    dtype = next(attr.i for attr in node.attribute if attr.name == "dtype")
    assert dtype == TensorProto.FLOAT  # blocked: samples drawn in FP32, then cast
    feeds = models.make_inputs(model)
    assert_close(run(model, feeds), run(result.model, feeds), rtol=1e-2, atol=1e-2)


def test_random_normal_like_without_dtype_is_pinned_when_its_input_goes_low():
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
        helper.make_node("RandomNormalLike", ["h"], ["noise"], name="rnl", scale=1e-6),
        helper.make_node("MatMul", ["h", "W"], ["y1"], name="mm2"),
        helper.make_node("Add", ["y1", "noise"], ["y"], name="add"),
    ]
    model = make_model(nodes, [value_info("x", [2, 4])], [value_info("y", [2, 4])], [weight("W", [4, 4])])
    result = convert_and_check(model)
    (node,) = [node for node in result.model.graph.node if node.op_type == "RandomNormalLike"]
    assert {attr.name: attr.i for attr in node.attribute}["dtype"] == TensorProto.FLOAT


def test_blocked_node_inside_if_branch():
    model = regressions.blocked_in_if()
    result = convert_and_check(model)
    rows = {row.op_type: row for row in result.decisions() if row.graph == "then_branch"}
    assert rows["Exp"].precision == "fp32" and rows["Exp"].reason == Reason.BLOCK
    # The branch's MatMul reads the Exp's output, which may exceed FP16 range: it stays FP32
    # (range protection propagates, mpcompile/policy/range_propagation.py).
    assert rows["MatMul"].precision == "fp32" and rows["MatMul"].reason == Reason.RANGE_PROPAGATED
    for use_exp in (True, False):
        feeds = {**models.make_inputs(model), "use_exp": np.array(use_exp)}
        assert_close(run(model, feeds), run(result.model, feeds), rtol=1e-2, atol=1e-2)


def test_unnamed_nodes_get_unique_names_for_new_nodes():
    model = regressions.unnamed_nodes()
    result = convert_and_check(model)
    names = [node.name for node in result.model.graph.node if node.name]
    assert len(names) == len(set(names)) > 0
    outputs = [name for node in result.model.graph.node for name in node.output]
    assert len(outputs) == len(set(outputs))
    feeds = models.make_inputs(model)
    assert_close(run(model, feeds), run(result.model, feeds), rtol=1e-2, atol=1e-2)


def test_weight_of_20000_survives_in_fp16():
    # Mul is allowed here so the 20000 constant itself is converted.
    model = regressions.large_weight()
    result = convert_and_check(model, allow_ops=["Mul"])
    gain = numpy_helper.to_array(initializer(result.model, "gain"))
    assert gain.dtype == np.float16
    assert np.all(gain == 20000.0)
    feeds = models.make_inputs(model)
    assert_close(run(model, feeds), run(result.model, feeds), rtol=1e-2, atol=20.0)


@pytest.mark.parametrize("opset", [9, 14])
def test_batchnorm_variance_1e8_stays_finite(opset):
    model = regressions.bn_large_variance(opset=opset)
    result = convert_and_check(model)
    (bn,) = by_op(result, "BatchNormalization")
    if opset == 9:  # mean/var share T with X: the node must stay FP32
        assert (bn.precision, bn.reason) == ("fp32", Reason.RANGE)
    else:  # opset 14 binds mean/var to U: they keep FP32 while X goes low
        assert bn.precision == "fp16"
        assert initializer(result.model, "bn.var").data_type == TensorProto.FLOAT
    feeds = models.make_inputs(model)
    expected, actual = run(model, feeds), run(result.model, feeds)
    assert np.isfinite(actual[0]).all()
    scale = float(np.abs(expected[0]).max())
    assert_close(expected, actual, rtol=2e-2, atol=2e-2 * scale)


def test_attention_mask_of_finfo_min_is_clamped_not_inf():
    model = regressions.mask_finfo_min()
    result = convert_and_check(model)
    assert result.stats.values_clamped >= 1
    for tensor in result.model.graph.initializer:
        array = numpy_helper.to_array(tensor).astype(np.float64)
        assert np.all(np.abs(array) <= 65504), f"{tensor.name} still holds values beyond FP16 range"
    feeds = models.make_inputs(model)
    expected, actual = run(model, feeds), run(result.model, feeds)
    assert all(np.isfinite(out).all() for out in actual)
    assert_close(expected, actual, rtol=2e-2, atol=2e-2)


def test_topological_order_after_conversion():
    for name in ("bert_encoder", "control_flow", "regression_unnamed_nodes"):
        result = mpcompile.convert(models.build(name))
        for graph in ir.from_proto(result.model).graphs():
            produced = {value.name for value in (*graph.inputs, *graph.initializers.values())}
            for node in graph:
                for value in node.inputs:
                    if value is not None and value.producer() is not None and value.producer().graph is graph:
                        assert value.name in produced, (
                            f"{name}: {node.name} reads {value.name} before it is produced"
                        )
                produced.update(value.name for value in node.outputs)


def test_constant_node_shared_by_fp16_and_fp32_consumers():
    nodes = [
        helper.make_node(
            "Constant",
            [],
            ["c"],
            name="const",
            value=numpy_helper.from_array(np.full((4, 4), 0.5, np.float32)),
        ),
        helper.make_node("MatMul", ["x", "c"], ["h"], name="mm"),
        helper.make_node("Exp", ["c"], ["e"], name="exp"),
        helper.make_node("Add", ["h", "e"], ["y"], name="add"),
    ]
    model = make_model(nodes, [value_info("x", [4, 4])], [value_info("y", [4, 4])])
    result = convert_and_check(model)
    constants = [node for node in result.model.graph.node if node.op_type == "Constant"]
    assert len(constants) == 2  # the FP32 original for Exp and an FP16 copy for MatMul
    feeds = {"x": np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)}
    assert_close(run(model, feeds), run(result.model, feeds), rtol=1e-2, atol=1e-2)
