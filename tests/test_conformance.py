"""ONNX backend node tests through mpcompile and onnxconverter-common (see tools/conformance.py).

The whole suite runs once per session (about a minute on 2 cores) and its summary is printed
even without ``-s``. The node tests come from the onnx 1.22.0 wheel, downloaded and cached
under .cache/onnx-node-tests on first use.
"""

from __future__ import annotations

import contextlib
import fnmatch

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tools import conformance

pytestmark = pytest.mark.slow  # ONNX's backend node-test suite: unpacks the onnx 1.22.0 wheel's node tests

REQUIRED_RATE = 0.99


@pytest.fixture(scope="session")
def suite(request: pytest.FixtureRequest) -> conformance.SuiteResult:
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        node_dir = conformance.ensure_node_tests()
        result = conformance.run_suite(node_dir, workers=2)
        print("\n" + conformance.summary_text(result))
    return result


def _require(suite: conformance.SuiteResult, converter: str) -> None:
    if converter not in suite.converters:
        pytest.skip(f"{converter} not run: {suite.skipped_converters.get(converter)}")


def test_enough_tests_are_eligible(suite: conformance.SuiteResult) -> None:
    # 1765 node tests in the 1.22.0 wheel, about 1230 eligible with onnxruntime 1.32: a sharp
    # drop means the download, the loader or the eligibility check broke.
    assert len(suite.results) > 1500
    assert len(suite.eligible) > 1000


def test_stress_run_with_every_op_allowed(suite: conformance.SuiteResult) -> None:
    """Every op of each test on the allow list: most tests then really compute in FP16."""
    _require(suite, "mpcompile:any:allow-all")
    assert suite.passed_low("mpcompile:any:allow-all") > 1000
    if "onnxconverter-common" in suite.converters:
        assert suite.rate("mpcompile:any:allow-all") > suite.rate("onnxconverter-common")


def test_onnxconverter_common_baseline_ran(suite: conformance.SuiteResult) -> None:
    _require(suite, "onnxconverter-common")
    assert suite.passed("onnxconverter-common") > 0


@pytest.mark.parametrize("converter", ["mpcompile:any", "mpcompile:cuda"])
def test_conformance_rate(suite: conformance.SuiteResult, converter: str) -> None:
    _require(suite, converter)
    failures = conformance.failure_lines(suite, converter)
    rate = suite.rate(converter)
    assert rate >= REQUIRED_RATE, f"{converter}: {100 * rate:.2f} % < 99 %:\n" + "\n".join(failures)
    if "onnxconverter-common" in suite.converters:
        assert rate > suite.rate("onnxconverter-common")


@pytest.mark.parametrize("converter", ["mpcompile:any", "mpcompile:cuda", "mpcompile:any:allow-all"])
def test_every_failure_is_explained(suite: conformance.SuiteResult, converter: str) -> None:
    _require(suite, converter)
    unexplained = [
        line
        for result, line in zip(
            suite.failures(converter), conformance.failure_lines(suite, converter), strict=True
        )
        if conformance.explanation(result.name, result.outcomes[converter]) == "UNEXPLAINED"
    ]
    assert not unexplained, "failures missing from KNOWN_FAILURES:\n" + "\n".join(unexplained)


def test_known_failures_are_still_failing(suite: conformance.SuiteResult) -> None:
    """An explanation whose tests all pass now is stale and must go."""
    _require(suite, "mpcompile:any")
    failing = {
        result.name
        for converter in suite.converters
        if converter.startswith("mpcompile")
        for result in suite.failures(converter)
    }
    stale = [p for p in conformance.KNOWN_FAILURES if not any(fnmatch.fnmatchcase(n, p) for n in failing)]
    assert not stale


# ---------------------------------------------------------------- the harness's own pieces


def test_compare_scales_atol_with_magnitude() -> None:
    expected = np.array([1000.0, 0.0], dtype=np.float32)
    assert conformance.compare(expected, expected + np.float32(0.9), 1e-2, 1e-3) is None
    assert conformance.compare(expected, np.array([1000.0, 2.0], np.float32), 1e-2, 1e-3) is not None


def test_compare_requires_exact_integers_and_same_dtype() -> None:
    expected = np.array([1, 2, 3], dtype=np.int64)
    assert conformance.compare(expected, expected.copy(), 1e-2, 1e-3) is None
    assert "differ" in conformance.compare(expected, np.array([1, 2, 4]), 1e-2, 1e-3)
    assert "dtype" in conformance.compare(np.ones(2, np.float32), np.ones(2, np.float16), 1e-2, 1e-3)


def test_compare_treats_nan_and_inf_exactly() -> None:
    expected = np.array([np.nan, np.inf, 1.0], dtype=np.float32)
    assert conformance.compare(expected, expected.copy(), 1e-2, 1e-3) is None
    assert conformance.compare(expected, np.array([np.nan, 1.0, 1.0], np.float32), 1e-2, 1e-3)
    overflowed = np.array([np.nan, np.inf, np.inf], np.float32)
    assert "inf" in conformance.compare(expected, overflowed, 1e-2, 1e-3)


def test_has_float32_sees_constants_and_cast_targets() -> None:
    ints = helper.make_tensor_value_info("x", TensorProto.INT64, [2])
    out = helper.make_tensor_value_info("y", TensorProto.INT64, [2])
    plain = helper.make_model(helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "g", [ints], [out]))
    assert not conformance.has_float32(plain)
    nodes = [
        helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["f"], ["y"], to=TensorProto.INT64),
    ]
    via_cast = helper.make_model(helper.make_graph(nodes, "g", [ints], [out]))
    assert conformance.has_float32(via_cast)


def test_cache_is_reused(suite: conformance.SuiteResult) -> None:
    messages: list[str] = []
    conformance.ensure_node_tests(log=messages.append)
    assert messages and "cached" in messages[0]


def test_main_op_names_the_op_under_test() -> None:
    assert conformance.main_op("test_layer_normalization_2d_axis0_expanded", ["Add", "Sqrt"]) == (
        "LayerNormalization"
    )
    assert conformance.main_op("test_relu", ["Relu"]) == "Relu"
    assert onnx.defs.has("CastLike")
    assert conformance.main_op("test_castlike_FLOAT_to_FLOAT16_expanded", ["Cast", "X"]) == "CastLike"
