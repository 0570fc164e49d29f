"""Plain convert's range run (mpcompile/passes/range_run.py): --auto's range rules on one FP32 run
of generated inputs keep FP32 the nodes whose values leave FP16 range (reason range-measured), so
plain convert no longer hands Inf/NaN to FP16 readers (issue 22: timm efficientvit_b0's linear
attention, openwakeword's melspectrogram). Every numeric check compares the FP16-faithful run of
the conversion with the FP32 run of the original."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

import mpcompile
from models.builder import make_model, value_info
from mpcompile.cli import cli
from mpcompile.core.plan import Reason
from mpcompile.evaluate import faithful
from tests.helpers import metadata, node_by_name

TOKENS, DIM = 256, 16
FRAME, BINS, MELS = 64, 33, 16


def linear_attention() -> onnx.ModelProto:
    """timm efficientvit's ReLU linear attention: q @ (kᵀv) / (q @ Σk). Over 256 tokens the
    numerator and denominator reach ~1e5 on N(0,1) inputs (beyond FP16's 65504); their ratio
    does not."""
    rng = np.random.default_rng(0)

    def weight(name: str) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal((DIM, DIM)) * 1.5).astype(np.float32), name)

    initializers = [
        *(weight(name) for name in ("wq", "wk", "wv", "wo")),
        numpy_helper.from_array(np.array([1], np.int64), "token_axis"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q0"], name="q_proj"),
        helper.make_node("Relu", ["q0"], ["q"], name="q_relu"),
        helper.make_node("MatMul", ["x", "wk"], ["k0"], name="k_proj"),
        helper.make_node("Relu", ["k0"], ["k"], name="k_relu"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], name="k_t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["kt", "v"], ["kv"], name="kv"),
        helper.make_node("MatMul", ["q", "kv"], ["num"], name="q_kv"),
        helper.make_node("ReduceSum", ["k", "token_axis"], ["ksum"], name="k_sum", keepdims=1),
        helper.make_node("Transpose", ["ksum"], ["ksum_t"], name="ksum_t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "ksum_t"], ["den0"], name="q_ksum"),
        helper.make_node("Add", ["den0", "eps"], ["den"], name="den_eps"),
        helper.make_node("Div", ["num", "den"], ["att"], name="normalise"),
        helper.make_node("MatMul", ["att", "wo"], ["y"], name="out_proj"),
    ]
    return make_model(
        nodes, [value_info("x", [1, TOKENS, DIM])], [value_info("y", [1, TOKENS, DIM])], initializers
    )


def melspectrogram_int16_scale() -> onnx.ModelProto:
    """A spectrogram front end that brings audio to int16 scale itself (gain 1000) and squares
    the STFT with a Mul (no Pow for the static rules to see): the power reaches ~1e7."""
    n = np.arange(FRAME)
    k = np.arange(BINS)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / FRAME)
    dft = np.concatenate([np.cos(2 * np.pi * k * n / FRAME), -np.sin(2 * np.pi * k * n / FRAME)]) * window
    mel = np.abs(np.random.default_rng(1).standard_normal((2 * BINS, MELS))) / BINS
    head = np.random.default_rng(2).standard_normal((MELS, 8)) / 4
    initializers = [
        numpy_helper.from_array(np.array(1000.0, np.float32), "gain"),
        numpy_helper.from_array(dft.T.astype(np.float32), "dft"),
        numpy_helper.from_array(mel.astype(np.float32), "mel"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
        numpy_helper.from_array(head.astype(np.float32), "head"),
    ]
    nodes = [
        helper.make_node("Mul", ["audio", "gain"], ["frames"], name="to_int16_scale"),
        helper.make_node("MatMul", ["frames", "dft"], ["spec"], name="stft"),
        helper.make_node("Mul", ["spec", "spec"], ["power"], name="square"),
        helper.make_node("MatMul", ["power", "mel"], ["melspec"], name="mel"),
        helper.make_node("Add", ["melspec", "eps"], ["shifted"], name="eps_add"),
        helper.make_node("Log", ["shifted"], ["logmel"], name="log"),
        helper.make_node("MatMul", ["logmel", "head"], ["y"], name="head"),
    ]
    return make_model(nodes, [value_info("audio", [10, FRAME])], [value_info("y", [10, 8])], initializers)


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    value = model.graph.input[0]
    shape = [dim.dim_value for dim in value.type.tensor_type.shape.dim]
    return {value.name: np.random.default_rng(7).standard_normal(shape).astype(np.float32)}


CASES = {
    "linear_attention": (linear_attention, {"q_kv", "q_ksum", "normalise"}),
    "melspectrogram": (melspectrogram_int16_scale, {"square", "mel"}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_static_convert_gives_inf_or_nan_and_the_range_run_makes_it_finite(case):
    build, kept = CASES[case]
    model = build()
    feeds = _feeds(model)
    reference = faithful.run_reference(model, feeds)["y"].astype(np.float64)
    assert np.isfinite(reference).all()

    static = mpcompile.convert(model, static=True)
    assert not np.isfinite(faithful.run(static.model, feeds)["y"].astype(np.float64)).all()

    result = mpcompile.convert(model)
    got = faithful.run(result.model, feeds)["y"].astype(np.float64)
    assert np.isfinite(got).all()
    # Tolerance: 2 % of the output's largest magnitude (the other MatMuls stay FP16).
    np.testing.assert_allclose(got, reference, rtol=0, atol=2e-2 * np.abs(reference).max())
    for name in kept:
        stamped = metadata(node_by_name(result.model, name))
        assert stamped["mpcompile.precision"] == "fp32"
        assert stamped["mpcompile.reason"] == Reason.RANGE_MEASURED
        assert stamped["mpcompile.rule"].startswith("overflow: ")
    assert kept <= set(result.summary()["range_measured"])
    assert any("range-measured" in note and "--static skips it" in note for note in result.notes)
    # Nodes the run finds in range keep their static decision.
    assert (
        metadata(node_by_name(result.model, "head" if case == "melspectrogram" else "q_proj"))[
            "mpcompile.precision"
        ]
        == "fp16"
    )


def test_a_model_in_range_converts_as_static_does():
    model = linear_attention()
    for weight in model.graph.initializer:
        if weight.name.startswith("w"):
            array = numpy_helper.to_array(weight) / 8
            weight.CopyFrom(numpy_helper.from_array(array.astype(np.float32), weight.name))
    plain, static = mpcompile.convert(model), mpcompile.convert(model, static=True)
    assert plain.model.SerializeToString() == static.model.SerializeToString()
    assert plain.notes == static.notes and plain.summary()["range_measured"] == {}


def test_an_additive_attention_mask_is_no_overflow():
    """A runtime mask ``(1 - mask) * finfo.min`` added to attention scores is beyond FP16 range
    only below zero and reaches a Softmax: the range run leaves it to the static rules (the Add
    and Softmax stay FP16, as before), and the FP16-faithful output matches FP32 (atol 1e-2:
    probabilities in [0, 1])."""
    import models

    model = models.ZOO["regression_mask_finfo_min"]()
    plain, static = mpcompile.convert(model), mpcompile.convert(model, static=True)
    assert plain.model.SerializeToString() == static.model.SerializeToString()
    assert plain.summary()["range_measured"] == {}
    import onnx_ir as ir

    from mpcompile.evaluate.inputs import generate_inputs

    feeds = generate_inputs(ir.from_proto(model), seed=3)[0]  # 0/1 masks, as the range run's
    assert any(not array.all() for array in feeds.values() if array.dtype != np.float32)  # masked keys
    reference = faithful.run_reference(model, feeds)
    got = faithful.run(plain.model, feeds)
    for name, want in reference.items():
        np.testing.assert_allclose(got[name].astype(np.float64), want.astype(np.float64), rtol=0, atol=1e-2)


def test_without_onnxruntime_it_is_skipped_with_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    result = mpcompile.convert(linear_attention())
    assert "range run skipped (static rules only): onnxruntime is not installed" in result.notes
    assert result.summary()["range_measured"] == {}


def test_inputs_that_cannot_be_generated_fall_back_to_static_with_a_note():
    """A model ORT rejects on every generated input: a Reshape to a size no input size gives."""
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
        helper.make_node("MatMul", ["r", "w"], ["y"], name="mm"),
    ]
    initializers = [
        numpy_helper.from_array(np.array([7, 3], np.int64), "shape"),
        numpy_helper.from_array(np.ones((3, 3), np.float32), "w"),
    ]
    model = make_model(nodes, [value_info("x", ["n", 5])], [value_info("y", [7, 3])], initializers)
    result = mpcompile.convert(model)
    assert any(note.startswith("range run skipped (static rules only): ") for note in result.notes)
    static = mpcompile.convert(model, static=True)
    assert result.model.SerializeToString() == static.model.SerializeToString()


def test_cli_static_flag_and_json(tmp_path):
    source = tmp_path / "attention.onnx"
    onnx.save(linear_attention(), source)
    runner = CliRunner()
    plain = runner.invoke(cli, ["convert", str(source), "-o", str(tmp_path / "plain.onnx"), "--json"])
    assert plain.exit_code == 0, plain.output
    document = json.loads(plain.output)
    assert document["reasons"][Reason.RANGE_MEASURED] >= 3
    assert "q_kv" in document["range_measured"]
    static = runner.invoke(
        cli, ["convert", str(source), "-o", str(tmp_path / "static.onnx"), "--json", "--static"]
    )
    assert static.exit_code == 0, static.output
    assert json.loads(static.output)["range_measured"] == {}
    report = runner.invoke(cli, ["report", str(tmp_path / "plain.onnx"), "--format", "json"])
    assert report.exit_code == 0, report.output
    assert Reason.RANGE_MEASURED in report.output
