"""Range protection propagates (mpcompile/policy/range_propagation.py): a value that a node kept
FP32 for range reasons may push out of FP16 range stays FP32 in its readers until an op brings
it back into range (issue 22, openwakeword's melspectrogram)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from pass_support import by_name, planned

import mpcompile
from models.builder import make_model, value_info
from mpcompile.core.plan import Reason
from mpcompile.core.precision import Precision
from mpcompile.evaluate import faithful
from mpcompile.policy import range_propagation
from tests.helpers import metadata, node_by_name

FRAME, BINS, MELS, OUT = 64, 33, 16, 8


def melspectrogram() -> onnx.ModelProto:
    """frames -> STFT-like MatMul (windowed DFT, real and imaginary parts) -> Pow(2) (power
    spectrum) -> mel MatMul -> Add(eps) -> Log -> a MatMul after it (the model's next layer)."""
    n = np.arange(FRAME)
    k = np.arange(BINS)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / FRAME)
    dft = np.concatenate([np.cos(2 * np.pi * k * n / FRAME), -np.sin(2 * np.pi * k * n / FRAME)]) * window
    mel = np.abs(np.random.default_rng(1).standard_normal((2 * BINS, MELS))) / BINS
    head = np.random.default_rng(2).standard_normal((MELS, OUT)) / 4
    initializers = [
        numpy_helper.from_array(dft.T.astype(np.float32), "dft"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(mel.astype(np.float32), "mel"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
        numpy_helper.from_array(head.astype(np.float32), "head"),
    ]
    nodes = [
        helper.make_node("MatMul", ["frames", "dft"], ["spec"], name="stft"),
        helper.make_node("Pow", ["spec", "two"], ["power"], name="pow"),
        helper.make_node("MatMul", ["power", "mel"], ["melspec"], name="mel"),
        helper.make_node("Add", ["melspec", "eps"], ["shifted"], name="eps_add"),
        helper.make_node("Log", ["shifted"], ["logmel"], name="log"),
        helper.make_node("MatMul", ["logmel", "head"], ["y"], name="head"),
    ]
    return make_model(nodes, [value_info("frames", [10, FRAME])], [value_info("y", [10, OUT])], initializers)


def int16_scale_frames() -> np.ndarray:
    """Audio frames at int16 scale (std 1000 of a 32767 full scale), as openwakeword feeds them."""
    return (np.random.default_rng(0).standard_normal((10, FRAME)) * 1000).astype(np.float32)


def test_melspectrogram_chain_stays_fp32_up_to_the_log_and_is_finite():
    model = melspectrogram()
    feeds = {"frames": int16_scale_frames()}
    reference = faithful.run_reference(model, feeds, intermediates=["spec", "power", "y"])
    # The premise: the STFT output fits FP16, its square does not.
    assert np.abs(reference["spec"]).max() < 65504 < np.abs(reference["power"]).max()

    converted = mpcompile.convert(model).model
    reasons = {node.name: metadata(node_by_name(converted, node.name)) for node in model.graph.node}
    assert reasons["stft"]["mpcompile.precision"] == "fp16"
    assert reasons["pow"]["mpcompile.reason"] == Reason.BLOCK
    for name in ("mel", "eps_add"):
        assert reasons[name]["mpcompile.precision"] == "fp32"
        assert reasons[name]["mpcompile.reason"] == Reason.RANGE_PROPAGATED
        assert "(from 'pow')" in reasons[name]["mpcompile.rule"]
    assert reasons["log"]["mpcompile.reason"] == Reason.BLOCK
    assert reasons["head"]["mpcompile.precision"] == "fp16"  # the Log brought values back

    got = faithful.run(converted, feeds)["y"].astype(np.float64)
    want = reference["y"].astype(np.float64)
    assert np.isfinite(got).all()
    # Tolerance: 1e-2 of the output's largest magnitude (FP16 STFT and head MatMuls).
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-2 * np.abs(want).max())


def test_without_propagation_the_same_graph_gives_inf_or_nan(monkeypatch):
    """What the rule fixes: the old plan casts Pow's output back to FP16 for the mel MatMul."""
    monkeypatch.setattr(range_propagation, "needed", lambda low: False)
    converted = mpcompile.convert(melspectrogram()).model
    assert metadata(node_by_name(converted, "mel"))["mpcompile.precision"] == "fp16"
    got = faithful.run(converted, {"frames": int16_scale_frames()})["y"]
    assert not np.isfinite(got.astype(np.float64)).all()


def test_bf16_has_fp32_range_and_does_not_propagate():
    converted = mpcompile.convert(melspectrogram(), precision="bf16").model
    assert metadata(node_by_name(converted, "mel"))["mpcompile.reason"] == Reason.ALLOW


GRAPH = """
g (float[2,4] x) => (float[2,4] y) <float[4,4] w = {1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1}, float p = {%s}, float c = {%s}> {
  [mm1] a = MatMul(x, w)
  [pow] b = Pow(a, p)
  [t] bt = Transpose(b)
  [t2] bb = Transpose(bt)
  [stop] d = %s
  [mm2] y = MatMul(d, w)
}
"""


@pytest.mark.parametrize(
    ("stop", "constant", "brought_back"),
    [
        ("Softmax(bb)", "1", True),
        ("Sqrt(bb)", "1", True),
        ("LayerNormalization(bb, c)", "1", True),
        ("Div(bb, c)", "32768", True),
        ("Div(bb, c)", "1e6", True),  # kept FP32 itself (reason range), but it does not seed
        ("Div(bb, c)", "10", False),
        ("Mul(bb, c)", "1e-5", True),
        ("Mul(bb, c)", "0.5", False),
        ("Clip(bb, c, c)", "100", True),
        ("Relu(bb)", "1", False),
    ],
)
def test_the_walk_stops_after_an_op_that_brings_values_back(stop, constant, brought_back):
    model, _, plan = planned(GRAPH % ("2", constant, stop))
    nodes = by_name(model)
    assert plan[nodes["mm1"]].precision == Precision.FP16
    for name in ("t", "t2", "stop"):  # they read the large value: FP32 (range- or block-propagated)
        assert plan[nodes[name]].precision == Precision.FP32
    # Block propagation (step 3) denies the chain when it leads to a follow op; that label wins.
    assert plan[nodes["t"]].reason in (Reason.BLOCK_PROPAGATED, Reason.RANGE_PROPAGATED)
    if brought_back:
        assert plan[nodes["mm2"]].precision == Precision.FP16
    else:
        assert plan[nodes["mm2"]].reason == Reason.RANGE_PROPAGATED


def test_a_root_does_not_seed_and_nothing_changes_without_a_seed():
    model, _, plan = planned(GRAPH % ("0.5", "1", "Relu(bb)"))
    nodes = by_name(model)
    assert plan[nodes["mm2"]].reason == Reason.ALLOW
    assert all(decision.reason != Reason.RANGE_PROPAGATED for _, decision in plan.items())


def test_a_node_kept_for_an_out_of_range_constant_seeds():
    text = """
g (float[2,4] x) => (float[2,4] y) <float[4,4] w = {1,0,0,0,0,1,0,0,0,0,1,0,0,0,0,1}, float big = {1e6}> {
  [mm1] a = MatMul(x, w)
  [scale] b = Mul(a, big)
  [mm2] c = MatMul(b, w)
  [log] d = Log(c)
  [mm3] y = MatMul(d, w)
}
"""
    model, _, plan = planned(text)
    nodes = by_name(model)
    assert plan[nodes["scale"]].reason == Reason.RANGE
    assert plan[nodes["mm2"]].reason == Reason.RANGE_PROPAGATED
    assert "'b'" in plan[nodes["mm2"]].rule and "'scale'" in plan[nodes["mm2"]].rule
    assert plan[nodes["mm3"]].reason == Reason.ALLOW


def test_the_rule_is_deterministic():
    text = GRAPH % ("3", "1", "Relu(bb)")
    first = [(n.name, d) for n, d in planned(text)[2].items()]
    assert first == [(n.name, d) for n, d in planned(text)[2].items()]
