"""Comparator statistics against numpy on known arrays, tolerances and their parsing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mpcompile.validate.compare import PERCENTILES, compare_output, is_classifier_like
from mpcompile.validate.tolerances import Tolerance, ToleranceError, parse_tolerance_options


def test_statistics_match_numpy():
    ref = np.array([[1.0, -2.0, 0.0, 4.0], [0.5, 3.0, -1.0, 2.0]], np.float32)
    cand = np.array([[1.1, -2.0, 0.5, 3.0], [0.5, 3.3, -1.2, 2.0]], np.float32)
    result = compare_output("out", [ref], [cand], rtol=0.0, atol=1.0)
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    diff = np.abs(c - r)
    assert result.elements == 8
    assert result.max_abs_err == pytest.approx(diff.max())
    assert result.mean_abs_err == pytest.approx(diff.mean())
    assert result.max_rel_err == math.inf  # reference 0, candidate 0.5
    assert result.rel_l2_err == pytest.approx(np.linalg.norm(c - r) / np.linalg.norm(r))
    assert result.cosine_similarity == pytest.approx(
        np.dot(r.ravel(), c.ravel()) / (np.linalg.norm(r) * np.linalg.norm(c))
    )
    for p in PERCENTILES:
        assert result.abs_err_percentiles[f"p{p:g}"] == pytest.approx(np.percentile(diff, p))
    assert result.top1_agreement == 1.0  # argmax 3 and 1 in both
    assert result.passed and bool(result)


def test_top1_agreement_counts_rows():
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], np.float32)
    cand = np.array([[0.2, 0.8], [0.4, 0.6], [0.3, 0.7]], np.float32)
    result = compare_output("logits", [ref], [cand], rtol=0, atol=1)
    assert result.top1_agreement == pytest.approx(2 / 3)
    assert is_classifier_like((2, 10)) and is_classifier_like((1, 16, 100))
    assert (
        not is_classifier_like((10,))
        and not is_classifier_like((4, 1))
        and not is_classifier_like((1, 3, 4, 4))
    )


def test_relative_error_with_exact_zero_reference():
    result = compare_output("y", [np.array([0.0, 2.0])], [np.array([0.0, 2.2])], rtol=0.2, atol=0)
    assert result.max_rel_err == pytest.approx(0.1)
    assert result.passed


def test_tolerance_bound_counts_mismatches():
    ref = np.array([1.0, 10.0, 100.0])
    cand = np.array([1.05, 10.5, 101.0])
    # bound = atol + rtol * |ref| = 0.01 + 0.01 * [1, 10, 100] = [0.02, 0.11, 1.01]
    result = compare_output("y", [ref], [cand], rtol=0.01, atol=0.01)
    assert result.mismatched == 2 and not result
    assert "2 of 3 elements" in result.failure


def test_new_nonfinite_values_fail_and_existing_ones_pass():
    ref = np.array([1.0, np.inf, np.nan, 2.0], np.float32)
    same = np.array([1.0, np.inf, np.nan, 2.0], np.float32)
    result = compare_output("y", [ref], [same], rtol=0, atol=0)
    assert result.passed and result.reference_inf == 1 and result.reference_nan == 1
    new = np.array([np.inf, np.inf, np.nan, np.nan], np.float32)
    result = compare_output("y", [ref], [new], rtol=1, atol=1)
    assert result.new_nonfinite == 2 and result.nan == 2 and result.inf == 2
    assert not result and "2 new NaN/Inf" in result.failure
    flipped = np.array([1.0, -np.inf, np.nan, 2.0], np.float32)
    assert not compare_output("y", [ref], [flipped], rtol=1, atol=1)


def test_shape_mismatch_fails():
    result = compare_output("y", [np.zeros((2, 3))], [np.zeros((3, 2))], rtol=1, atol=1)
    assert not result and "shape" in result.failure


def test_several_batches_are_pooled():
    refs = [np.array([[1.0, 2.0]]), np.array([[3.0, 0.0]])]
    cands = [np.array([[1.0, 2.5]]), np.array([[2.0, 0.0]])]
    result = compare_output("y", refs, cands, rtol=0, atol=10)
    assert result.elements == 4
    assert result.max_abs_err == 1.0 and result.mean_abs_err == pytest.approx(1.5 / 4)
    assert result.top1_agreement == 1.0


def test_result_serializes_non_finite_values_as_strings():
    result = compare_output("y", [np.array([0.0, 1.0])], [np.array([1.0, 1.0])], rtol=0, atol=0)
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["max_rel_err"] == "inf" and data["passed"] is False


def test_parse_tolerance_options():
    tolerance = parse_tolerance_options(["1e-3", "logits:1e-2", "probs:0.5,hidden:2"], option="--atol")
    assert tolerance.default == 1e-3
    assert tolerance.for_output("logits") == 1e-2 and tolerance.for_output("probs") == 0.5
    assert tolerance.for_output("hidden") == 2 and tolerance.for_output("other") == 1e-3
    assert parse_tolerance_options(["a:b:0.1"], option="--atol").per_output == {"a:b": 0.1}  # last ':' splits
    unresolved = parse_tolerance_options(["x:1"], option="--rtol")
    assert unresolved.default is None
    assert Tolerance.coerce(unresolved, 0.25, "--rtol").for_output("y") == 0.25
    for bad in ["abc", "x:", ":1", "-1", "nan"]:
        with pytest.raises(ToleranceError):
            parse_tolerance_options([bad], option="--atol")


def test_tolerance_coerce_and_name_check():
    assert Tolerance.coerce(None, 0.1, "--atol").for_output("y") == 0.1
    assert Tolerance.coerce(0.3, 0.1, "--atol").for_output("y") == 0.3
    mapped = Tolerance.coerce({"": 0.2, "logits": 1.0}, 0.1, "--atol")
    assert mapped.for_output("y") == 0.2 and mapped.for_output("logits") == 1.0
    with pytest.raises(ToleranceError, match="names no output"):
        mapped.check_names(["y"], "--atol")
