"""``mpcompile.targets.optimize``: ORT graph optimisation before conversion (``convert --optimize``).

Numbers are compared on ORT's CPU EP with the FP32 model: optimisation alone must keep the
function (tolerance 1e-4); optimisation followed by an FP16 conversion is compared within FP16
tolerance (CPU runs FP16 Attention/SkipLayerNormalization in FP32 behind its own Casts).
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

import models
import mpcompile
from models.builder import make_model, value_info
from mpcompile import errors
from tests.helpers import assert_close

ort = pytest.importorskip("onnxruntime", reason="--optimize runs onnxruntime")

from mpcompile.targets.optimize import (  # noqa: E402  (needs onnxruntime)
    OPTIMIZE_METADATA_KEY,
    OptimizeLevelError,
    optimize_model,
    split_multi_axis_unsqueeze,
)


def _run(model: onnx.ModelProto, feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, feeds
    )


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter((node.domain or "ai.onnx", node.op_type) for node in model.graph.node)


@pytest.fixture(scope="module")
def encoder():
    model = models.bert_encoder.build()
    return model, models.make_inputs(model), _run(model, models.make_inputs(model))


@pytest.mark.parametrize(
    ("level", "fused"),
    [
        ("basic", set()),
        ("extended", {"BiasGelu", "FusedMatMul", "FusedGemm"}),
        ("transformer", {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization", "BiasGelu"}),
    ],
)
def test_levels_fuse_and_keep_the_function(encoder, level, fused):
    model, feeds, expected = encoder
    before = model.SerializeToString()
    optimized = optimize_model(model, level, "cpu")
    assert model.SerializeToString() == before  # input untouched
    onnx.checker.check_model(optimized, full_check=True)
    contrib = {op for (domain, op) in _ops(optimized) if domain == "com.microsoft"}
    print(f"{level}: {sorted(contrib)}")
    assert contrib == fused
    note = {entry.key: entry.value for entry in optimized.metadata_props}[OPTIMIZE_METADATA_KEY]
    assert note.startswith(f"{level} (CPUExecutionProvider, onnxruntime ")
    assert {entry.domain for entry in optimized.opset_import} <= {"", "com.microsoft"}
    assert_close(expected, _run(optimized, feeds), rtol=1e-4, atol=1e-4)


def test_fusions_the_target_lacks_are_disabled(encoder):
    """Optimising on CPU for CUDA must not leave CPU-only fused ops (FusedGemm has no CUDA kernel)."""
    model, feeds, expected = encoder
    optimized = optimize_model(model, "extended", "cuda")
    assert ("com.microsoft", "FusedGemm") not in _ops(optimized)
    note = {entry.key: entry.value for entry in optimized.metadata_props}[OPTIMIZE_METADATA_KEY]
    assert "disabled for CUDAExecutionProvider: GemmActivationFusion" in note
    assert_close(expected, _run(optimized, feeds), rtol=1e-4, atol=1e-4)


def test_transformer_optimisation_then_fp16_for_cuda(encoder):
    """Fused Attention/SkipLayerNormalization end up FP16 for --target cuda and the result loads."""
    model, feeds, expected = encoder
    optimized = optimize_model(model, "transformer", "cuda")
    result = mpcompile.convert(optimized, target="cuda")
    onnx.checker.check_model(result.model, full_check=True)
    rows = [row for row in result.decisions() if row.op_type in ("Attention", "SkipLayerNormalization")]
    print(collections.Counter((row.op_type, row.precision, row.reason) for row in rows))
    assert len(rows) == 6  # 2 Attention + 4 SkipLayerNormalization
    assert all(row.precision == "fp16" for row in rows)
    assert_close(expected, _run(result.model, feeds), rtol=1e-2, atol=1e-2)


def test_path_input(tmp_path, encoder):
    model, feeds, expected = encoder
    path = tmp_path / "encoder.onnx"
    onnx.save_model(model, path)
    before = path.read_bytes()
    optimized = optimize_model(path, "basic", "cuda")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.onnx"]
    assert_close(expected, _run(optimized, feeds), rtol=1e-4, atol=1e-4)


def test_errors():
    with pytest.raises(OptimizeLevelError) as info:
        optimize_model(models.mlp.build(), "aggressive", "cpu")
    assert info.value.exit_code == errors.ExitCode.USAGE
    with pytest.raises(errors.InputNotFoundError):
        optimize_model("/nonexistent/model.onnx", "basic", "cpu")


@pytest.mark.parametrize(
    ("opset", "axes", "shape"),
    [(13, [1, 2], [2, 1, 1, 3]), (13, [-1, 0], [1, 2, 3, 1]), (11, [0, 3], [1, 2, 3, 1])],
)
def test_split_multi_axis_unsqueeze(opset, axes, shape):
    if opset >= 13:
        node = helper.make_node("Unsqueeze", ["x", "axes"], ["u"], name="unsqueeze")
        initializers = [onnx.numpy_helper.from_array(np.array(axes, dtype=np.int64), "axes")]
    else:
        node = helper.make_node("Unsqueeze", ["x"], ["u"], name="unsqueeze", axes=axes)
        initializers = []
    model = make_model(
        [node, helper.make_node("Relu", ["u"], ["y"], name="relu")],
        [value_info("x", [2, 3])],
        [value_info("y", shape)],
        initializers,
        opset=opset,
    )
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3) - 2}
    split = ir.to_proto(split_multi_axis_unsqueeze(ir.from_proto(model)))
    onnx.checker.check_model(split, full_check=True)
    assert [n.op_type for n in split.graph.node] == ["Unsqueeze", "Unsqueeze", "Relu"]
    (want,), (got,) = _run(model, feeds), _run(split, feeds)
    assert want.shape == got.shape
    np.testing.assert_array_equal(want, got)
