"""Every models/ model and every light_* model-zoo graph in the onnx wheel converts (issue 2).

Accuracy is measured on ONNX Runtime's CPU EP: it runs FP16 nodes without FP16 kernels
in FP32 and may drop Cast pairs, so these numbers understate true FP16 error.
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import models
import mpcompile
from tests.helpers import run

# Tolerances relative to each output's largest magnitude (atol = REL_ATOL * max|fp32|),
# plus rtol, per model. FP16 has an 11-bit significand (~4.9e-4 relative rounding).
TOLERANCES: dict[str, tuple[float, float]] = {name: (1e-2, 1e-2) for name in models.ZOO}
TOLERANCES.update(
    {"bert_encoder": (2e-2, 2e-2), "gpt_block": (2e-2, 2e-2), "regression_mask_finfo_min": (2e-2, 2e-2)}
)


def relative_error(expected: np.ndarray, actual: np.ndarray) -> float:
    scale = float(np.max(np.abs(expected))) or 1.0
    return float(np.max(np.abs(expected.astype(np.float64) - actual.astype(np.float64)))) / scale


@pytest.mark.parametrize("name", sorted(models.ZOO))
def test_zoo_model_converts_and_matches_fp32(name):
    model = models.build(name)
    result = mpcompile.convert(model, allow_qdq=(name == "qdq"))
    onnx.checker.check_model(result.model, full_check=True)
    feeds = models.make_inputs(model)
    expected, actual = run(model, feeds), run(result.model, feeds)
    rtol, rel_atol = TOLERANCES[name]
    for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
        assert want.dtype == got.dtype and want.shape == got.shape
        if want.dtype.kind != "f":
            np.testing.assert_array_equal(got, want)
            continue
        error = relative_error(want, got)
        print(
            f"{name} output {index}: max error {error:.2e} of max|fp32| (tolerance rtol {rtol}, atol {rel_atol} x max|fp32|)"
        )
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rel_atol * (float(np.max(np.abs(want))) or 1.0))


@pytest.mark.parametrize("name", sorted(models.ZOO))
def test_zoo_conversion_is_deterministic(name):
    options = {"allow_qdq": name == "qdq"}
    first = mpcompile.convert(models.build(name), **options).model.SerializeToString()
    second = mpcompile.convert(models.build(name), **options).model.SerializeToString()
    assert first == second


def test_qdq_model_is_refused_by_default_and_quantized_paths_untouched():
    with pytest.raises(mpcompile.errors.QdqModelError):
        mpcompile.convert(models.build("qdq"))
    result = mpcompile.convert(models.build("qdq"), allow_qdq=True)
    qdq_rows = [
        row
        for row in result.decisions()
        if row.op_type in ("QuantizeLinear", "DequantizeLinear", "Conv", "MatMul")
    ]
    assert qdq_rows and all(row.precision == "fp32" for row in qdq_rows)


LIGHT_DIR = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(LIGHT_DIR.glob("light_*.onnx"))


def test_light_models_present():
    assert len(LIGHT_MODELS) == 9, f"expected the nine light_* models in {LIGHT_DIR}"


@pytest.mark.parametrize("path", LIGHT_MODELS, ids=lambda p: p.stem)
def test_light_model_converts_loads_and_runs(path, tmp_path):
    output = tmp_path / "converted.onnx"
    result = mpcompile.convert_file(path, output)
    assert result.stats.nodes_by_precision["fp16"] > 0
    converted = onnx.load(output)
    onnx.checker.check_model(converted, full_check=True)
    feeds = {}
    for value in ir.load(str(path)).graph.inputs:
        if value.is_initializer():
            continue
        shape = [dim if isinstance(dim, int) else 1 for dim in value.shape]
        feeds[value.name] = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    outputs = run(converted, feeds)
    assert all(np.isfinite(out).all() for out in outputs)
