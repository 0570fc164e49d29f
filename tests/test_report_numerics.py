"""--numerics: FP32 ranges, FP16 overflow/underflow shares, per-node error and its attribution.

All runs use onnxruntime's CPU EP through mpcompile.evaluate.faithful (FP16 outputs rounded at
every node boundary), compared with the FP32 run of the original.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mpcompile.core.precision import BF16, FP16
from mpcompile.report import build_report
from mpcompile.report.numerics import normalized_error, range_stats
from tests.report_models import planted_model

pytest.importorskip("onnxruntime", reason="--numerics runs onnxruntime")

# FP16 storage of O(1..20) values: ~2^-11 relative rounding per node, a few nodes deep.
FP16_TOLERANCE = 1e-2


def convert_elsewhere(model):
    from onnxconverter_common import float16

    return float16.convert_float_to_float16(model, keep_io_types=True)


def test_range_stats_classifies_fp16_overflow_and_underflow():
    x = np.array([7e4, 1e-6, 1e-9, 1.0, 0.0, -65520.0, 65519.0, -3e-8], np.float32)
    stats = range_stats(x, FP16)
    assert stats["max_abs"] == pytest.approx(7e4)
    assert stats["overflow_share"] == 2 / 8  # 7e4 and -65520 round to inf; 65519 rounds to 65504
    assert stats["subnormal_share"] == 2 / 8  # 1e-6 and -3e-8 (smallest subnormal ~6e-8, rounds up)
    assert stats["zero_share"] == 1 / 8  # 1e-9
    assert range_stats(np.array([1e38, 1e-39], np.float32), BF16)["overflow_share"] == 0.0


def test_normalized_error():
    ref = np.array([1.0, -2.0, 4.0], np.float32)
    assert normalized_error(ref.astype(np.float16), ref) == (0.0, 0.0)
    err_abs, err_rel = normalized_error(np.array([1.0, -2.0, 5.0], np.float16), ref)
    assert (err_abs, err_rel) == (1.0, 0.25)
    assert normalized_error(np.array([np.inf, -2.0, 4.0], np.float16), ref) == (math.inf, math.inf)


def test_planted_overflow_is_flagged_and_gets_the_error():
    original = planted_model(factor=8e3)
    audit = build_report(convert_elsewhere(original), original=original, numerics=True, shapes=["batch=8"])
    nodes = {n.name: n for n in audit.nodes}
    planted = nodes["planted"].numerics
    assert planted["max_abs"] >= 6.5504e4  # FP32 activations above the FP16 range (about 1e5)
    assert planted["overflow_share"] > 0
    assert planted["error_rel"] == math.inf and planted["error_introduced"] == math.inf
    # Upstream nodes are fine; downstream nodes inherit the error but do not introduce it.
    assert nodes["proj"].numerics["error_rel"] < FP16_TOLERANCE
    assert nodes["act"].numerics["overflow_share"] == 0
    assert nodes["rescale"].numerics["error_rel"] == math.inf
    assert nodes["rescale"].numerics["error_introduced"] == 0
    assert nodes["head"].numerics["error_introduced"] == 0
    summary = audit.numerics
    assert [n["name"] for n in summary["overflow_nodes"]] == ["planted"]
    assert summary["error_sources"][0]["name"] == "planted"
    assert summary["output_errors"]["y"]["error_rel"] == math.inf
    assert "measured on CPU" in summary["evaluation"]


def test_no_error_source_when_the_model_fits_fp16():
    original = planted_model(factor=10.0)
    audit = build_report(convert_elsewhere(original), original=original, numerics=True, shapes=["batch=8"])
    assert audit.numerics["overflow_nodes"] == []
    assert audit.numerics["error_sources"] == []
    assert audit.numerics["output_errors"]["y"]["error_rel"] < FP16_TOLERANCE
    for node in audit.nodes:
        if node.numerics and node.numerics["error_rel"] is not None:
            assert node.numerics["error_rel"] < FP16_TOLERANCE, node.name


def test_numerics_without_original_reports_ranges_only():
    audit = build_report(planted_model(factor=8e3), numerics=True, shapes=["batch=8"])
    planted = {n.name: n for n in audit.nodes}["planted"].numerics
    assert planted["overflow_share"] > 0 and planted["error_rel"] is None
    assert audit.numerics["reference"] == "audited model" and audit.numerics["evaluation"] is None


def test_inputs_file_sets_shapes_and_values(tmp_path):
    original = planted_model(factor=8e3)
    path = tmp_path / "feeds.npz"
    np.savez(path, x=np.full((3, 16), 0.01, np.float32))  # tiny inputs: no overflow anywhere
    audit = build_report(convert_elsewhere(original), original=original, numerics=True, inputs=path)
    assert audit.assumed_dims == {}
    assert {n.name: n for n in audit.nodes}["proj"].flops == 2 * 3 * 16 * 16
    assert audit.numerics["overflow_nodes"] == []
    assert audit.numerics["inputs"] == str(path)


def test_inputs_file_missing_an_input_is_a_usage_error(tmp_path):
    from mpcompile.errors import ExitCode, MpcompileError

    path = tmp_path / "feeds.npz"
    np.savez(path, other=np.zeros((1, 16), np.float32))
    with pytest.raises(MpcompileError) as info:
        build_report(planted_model(), numerics=True, inputs=path)
    assert info.value.exit_code == ExitCode.USAGE
