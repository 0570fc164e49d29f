"""Only onnxruntime's errors become user errors; a bug in mpcompile stays an internal error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

pytest.importorskip("onnxruntime")

from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from mpcompile import errors
from mpcompile.evaluate import faithful
from mpcompile.evaluate.ort_session import is_onnxruntime_error, make_session
from mpcompile.report import build_report
from mpcompile.report.numerics import NumericsError
from mpcompile.targets.optimize import levels, optimize_model
from mpcompile.targets.optimize import ort_session as optimize_session


def _relu_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _caught(function) -> BaseException:
    try:
        function()
    except Exception as exc:  # the exception itself, traceback included
        return exc
    raise AssertionError("nothing raised")


def _our_bug():
    raise ValueError("a bug of ours")


def test_the_predicate_tells_onnxruntime_from_us():
    import onnxruntime

    refused = _caught(lambda: onnxruntime.InferenceSession(b"not a model"))
    assert is_onnxruntime_error(refused)
    session = onnxruntime.InferenceSession(_relu_model().SerializeToString())
    wrong_feed = _caught(lambda: session.run(None, {"x": np.zeros((5,), np.float32)}))
    assert is_onnxruntime_error(wrong_feed)
    assert is_onnxruntime_error(ort_state.Fail("raised anywhere, still onnxruntime's class"))
    assert not is_onnxruntime_error(_caught(_our_bug))
    assert not is_onnxruntime_error(ValueError("never raised"))


def test_a_model_onnxruntime_refuses_is_a_user_error():
    with pytest.raises(errors.InvalidModelError, match="onnxruntime cannot load"):
        make_session(b"not a model", ["CPUExecutionProvider"])


def test_a_bug_while_making_a_session_is_not_a_user_error(monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *args, **kwargs: _our_bug())
    with pytest.raises(ValueError, match="a bug of ours"):
        make_session(_relu_model().SerializeToString(), ["CPUExecutionProvider"])


def test_report_numerics_turn_only_onnxruntime_failures_into_a_user_error(monkeypatch):
    def refused(*args, **kwargs):
        raise ort_state.InvalidArgument("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : planted")

    monkeypatch.setattr(faithful, "run", refused)
    monkeypatch.setattr(faithful, "run_reference", refused)
    with pytest.raises(NumericsError, match="planted"):
        build_report(_relu_model(), numerics=True)
    monkeypatch.setattr(faithful, "run", lambda *args, **kwargs: _our_bug())
    monkeypatch.setattr(faithful, "run_reference", lambda *args, **kwargs: _our_bug())
    with pytest.raises(ValueError, match="a bug of ours"):
        build_report(_relu_model(), numerics=True)


def test_optimize_turns_only_onnxruntime_failures_into_a_user_error(monkeypatch):
    def refused(*args, **kwargs):
        raise ort_state.Fail("[ONNXRuntimeError] : 1 : FAIL : planted")

    monkeypatch.setattr(optimize_session, "optimize_with_session", refused)
    with pytest.raises(errors.InvalidModelError, match="planted"):
        optimize_model(_relu_model(), "basic", "cpu")
    monkeypatch.setattr(optimize_session, "optimize_with_session", lambda *args, **kwargs: _our_bug())
    with pytest.raises(ValueError, match="a bug of ours"):
        optimize_model(_relu_model(), "basic", "cpu")


def test_a_bug_in_the_transformer_optimiser_call_is_not_a_fusion_failure(monkeypatch):
    from onnxruntime.transformers import optimizer

    monkeypatch.setattr(optimizer, "optimize_model", lambda *args, **kwargs: _our_bug())
    settings = levels.FusionSettings(model_type="bert", num_heads=0, hidden_size=0, use_gpu=False)
    with pytest.raises(ValueError, match="a bug of ours"):
        levels.fuse_transformer(_relu_model(), settings)
