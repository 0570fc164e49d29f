"""Comparing one output of a converted model against the reference (FP32) output."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from mpcompile.validate.jsonable import jsonable_float

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


@dataclasses.dataclass
class OutputComparison:
    """Error statistics of one output over all batches; truthy when it passes.

    Statistics use the elements finite in both outputs; relative errors divide by |reference|
    (a zero reference gives 0 when equal, else inf). ``mismatched`` counts elements outside
    ``atol + rtol * |reference|``. New NaN/Inf (finite in the reference) always fail.
    """

    name: str
    shape: list[int]
    dtype: str
    reference_dtype: str
    elements: int = 0
    max_abs_err: float = 0.0
    max_rel_err: float = 0.0
    mean_abs_err: float = 0.0
    rel_l2_err: float = 0.0
    cosine_similarity: float = 1.0
    abs_err_percentiles: dict[str, float] = dataclasses.field(default_factory=dict)
    nan: int = 0
    inf: int = 0
    reference_nan: int = 0
    reference_inf: int = 0
    new_nonfinite: int = 0
    top1_agreement: float | None = None
    rtol: float = 0.0
    atol: float = 0.0
    mismatched: int = 0
    passed: bool = False
    failure: str | None = None

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        for key, value in data.items():
            if isinstance(value, float):
                data[key] = jsonable_float(value)
        data["abs_err_percentiles"] = {k: jsonable_float(v) for k, v in self.abs_err_percentiles.items()}
        return data


def is_classifier_like(shape: Sequence[int]) -> bool:
    """Scores over classes: 2-D (batch, classes) or 3-D (batch, tokens, vocab), last dim > 1."""
    return len(shape) in (2, 3) and shape[-1] > 1


def compare_output(
    name: str,
    references: Sequence[np.ndarray],
    candidates: Sequence[np.ndarray],
    *,
    rtol: float,
    atol: float,
) -> OutputComparison:
    """Statistics of ``candidates`` against ``references`` (one array per batch)."""
    first_ref, first_cand = np.asarray(references[0]), np.asarray(candidates[0])
    result = OutputComparison(
        name=name,
        shape=list(first_cand.shape),
        dtype=str(first_cand.dtype),
        reference_dtype=str(first_ref.dtype),
        rtol=rtol,
        atol=atol,
    )
    for ref, cand in zip(references, candidates, strict=True):
        if np.shape(ref) != np.shape(cand):
            result.failure = (
                f"shape {list(np.shape(cand))} differs from the reference's {list(np.shape(ref))}"
            )
            return result
    ref = np.concatenate([np.asarray(r, dtype=np.float64).ravel() for r in references])
    cand = np.concatenate([np.asarray(c, dtype=np.float64).ravel() for c in candidates])
    _fill_statistics(result, ref, cand)
    if is_classifier_like(first_ref.shape) and np.issubdtype(first_ref.dtype, np.floating):
        agree = sum(
            int(np.sum(np.argmax(r, -1) == np.argmax(c, -1)))
            for r, c in zip(references, candidates, strict=True)
        )
        rows = sum(int(np.prod(np.shape(r)[:-1])) for r in references)
        result.top1_agreement = agree / rows if rows else 1.0
    _decide(result)
    return result


def _fill_statistics(result: OutputComparison, ref: np.ndarray, cand: np.ndarray) -> None:
    result.elements = int(ref.size)
    result.nan, result.inf = int(np.isnan(cand).sum()), int(np.isinf(cand).sum())
    result.reference_nan, result.reference_inf = int(np.isnan(ref).sum()), int(np.isinf(ref).sum())
    ref_finite, cand_finite = np.isfinite(ref), np.isfinite(cand)
    result.new_nonfinite = int(np.sum(ref_finite & ~cand_finite))
    both = ref_finite & cand_finite
    r, c = ref[both], cand[both]
    diff = np.abs(c - r)
    outside = diff > atol_rtol_bound(r, result.atol, result.rtol)
    # Elements non-finite in the reference must be identical (same inf sign, or NaN for NaN).
    nonfinite_ref = ~ref_finite
    same_nonfinite = (np.isnan(ref) & np.isnan(cand)) | (np.isinf(ref) & (ref == cand))
    result.mismatched = int(outside.sum() + np.sum(nonfinite_ref & ~same_nonfinite))
    if r.size == 0:
        return
    result.max_abs_err = float(diff.max())
    result.mean_abs_err = float(diff.mean())
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(r != 0, diff / np.abs(r), np.where(diff == 0, 0.0, np.inf))
    result.max_rel_err = float(rel.max())
    ref_norm, diff_norm = float(np.linalg.norm(r)), float(np.linalg.norm(c - r))
    result.rel_l2_err = diff_norm / ref_norm if ref_norm else (0.0 if diff_norm == 0 else float("inf"))
    cand_norm = float(np.linalg.norm(c))
    if ref_norm == 0 and cand_norm == 0:
        result.cosine_similarity = 1.0
    elif ref_norm == 0 or cand_norm == 0:
        result.cosine_similarity = 0.0
    else:
        result.cosine_similarity = float(np.dot(r, c) / (ref_norm * cand_norm))
    values = np.percentile(diff, PERCENTILES)
    result.abs_err_percentiles = {
        _percentile_key(p): float(v) for p, v in zip(PERCENTILES, values, strict=True)
    }


def atol_rtol_bound(reference: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    """The allowed absolute error per element: ``atol + rtol * |reference|``."""
    return atol + rtol * np.abs(reference)


def _decide(result: OutputComparison) -> None:
    reasons = []
    if result.new_nonfinite:
        reasons.append(f"{result.new_nonfinite} new NaN/Inf")
    if result.mismatched:
        reasons.append(
            f"{result.mismatched} of {result.elements} elements outside atol={result.atol:g} + rtol={result.rtol:g}·|ref|"
        )
    result.passed = not reasons
    result.failure = "; ".join(reasons) or None


def _percentile_key(percentile: float) -> str:
    return f"p{percentile:g}"
