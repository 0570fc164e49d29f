"""Models that onnx's full check refuses but its plain check and ONNX Runtime accept are converted
with a note, and their output passes the same checks plus an ORT load.

The models restate the shape of onnxruntime's own float16 tests (test_float16.py): Resize nodes
that double the spatial size while the graph output declares the size of a single Resize, so
strict shape inference reports "Inferred shape and existing shape differ". Numbers: the converted
model's outputs (run on ORT's CPU provider and under the FP16-faithful judge) match the FP32 run
within 1e-2 of the largest |output|.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import mpcompile
from mpcompile.errors import ExitCode
from mpcompile.evaluate import faithful

ort = pytest.importorskip("onnxruntime", reason="lenient input must load in onnxruntime")

TOLERANCE = 1e-2  # of the largest |FP32 output|


def _resizes(count: int = 3, declared: int = 8, with_conv: bool = False) -> onnx.ModelProto:
    """x[1, 2, 4, 4] -> (Conv) -> ``count`` nearest Resizes (x2 each); y declared [1, 2, declared, declared]."""
    nodes, initializers, previous = [], [], "x"
    if with_conv:
        rng = np.random.default_rng(0)
        initializers.append(
            numpy_helper.from_array(rng.standard_normal((2, 2, 3, 3)).astype(np.float32), "w")
        )
        nodes.append(helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]))
        previous = "c"
    for index in range(count):
        output = "y" if index == count - 1 else f"r{index}"
        nodes.append(
            helper.make_node("Resize", [previous, f"roi{index}", f"scales{index}"], [output], mode="nearest")
        )
        initializers += [
            numpy_helper.from_array(np.zeros(0, np.float32), f"roi{index}"),
            numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), f"scales{index}"),
        ]
        previous = output
    if with_conv:  # a MatMul after the Resizes, so the Resizes lie between low-precision ops
        initializers.append(numpy_helper.from_array(np.eye(32, dtype=np.float32), "eye"))
        nodes[-1].output[0] = "resized"
        nodes.append(helper.make_node("MatMul", ["resized", "eye"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "resize_test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, declared, declared])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _full_check_error(model: onnx.ModelProto) -> str | None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return str(exc)
    return None


def _run(model: onnx.ModelProto, feeds) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, feeds
    )


@pytest.mark.parametrize("with_conv", [False, True])
def test_declared_shapes_contradicting_inference_convert_with_a_note(with_conv):
    model = _resizes(with_conv=with_conv)
    assert "differ" in (_full_check_error(model) or "")
    onnx.checker.check_model(model)  # the plain check passes
    result = mpcompile.convert(model)
    assert any(
        "fails onnx.checker's full check" in note and "loads in ONNX Runtime" in note for note in result.notes
    )
    converted = result.model
    onnx.checker.check_model(converted)  # at least the checks the input passes, plus an ORT load:
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32)}
    (expected,) = _run(model, feeds)
    (plain,) = _run(converted, feeds)
    judged = faithful.run(converted, feeds)["y"]
    scale = float(np.abs(expected).max())
    assert expected.shape == (1, 2, 32, 32)
    assert np.max(np.abs(plain.astype(np.float32) - expected)) <= TOLERANCE * scale
    assert np.max(np.abs(np.asarray(judged, np.float32) - expected)) <= TOLERANCE * scale
    if with_conv:  # typed through the contradiction: the Conv, Resizes and MatMul go FP16
        precisions = {row.op_type: row.precision for row in result.decisions() if row.op_type != "Cast"}
        assert precisions == {"Conv": "fp16", "Resize": "fp16", "MatMul": "fp16"}


def test_cli_prints_and_json_carries_the_note(run_cli, tmp_path):
    source = tmp_path / "resize3.onnx"
    onnx.save(_resizes(with_conv=True), source)
    result = run_cli("convert", source, "-o", tmp_path / "out.onnx", "--json")
    assert result.exit_code == 0, result.stderr
    notes = json.loads(result.stdout)["notes"]
    assert any("fails onnx.checker's full check" in note for note in notes)
    ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])


def test_a_declared_type_contradicting_inference_stays_refused(run_cli, tmp_path):
    # The output is declared int64 while MatMul makes float: ORT refuses it too, so no leniency.
    model = _resizes(count=1, declared=8, with_conv=True)
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
    source = tmp_path / "bad.onnx"
    onnx.save(model, source)
    result = run_cli("convert", source, "-o", tmp_path / "out.onnx")
    assert result.exit_code == ExitCode.INVALID_MODEL
    assert "bound to both FLOAT and INT64" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists()


def test_a_model_failing_the_plain_check_stays_refused(run_cli, tmp_path):
    model = _resizes()
    model.graph.node[0].input[0] = "undefined"
    source = tmp_path / "bad.onnx"
    onnx.save(model, source)
    result = run_cli("convert", source, "-o", tmp_path / "out.onnx")
    assert result.exit_code == ExitCode.INVALID_MODEL
