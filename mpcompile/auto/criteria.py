"""When a converted model is accurate enough: an elementwise tolerance or a similarity metric.

* tolerance (``--rtol R --atol A``): every element satisfies
  ``|converted - reference| <= atol + rtol * |reference|`` (``numpy.allclose``'s rule, the one
  ``mpcompile validate`` uses). The reported error is the worst ratio
  ``|converted - reference| / (atol + rtol * |reference|)``: at most 1 passes.
* metric (``--metric cosine:0.9999``, ``rel-l2:1e-3``, ``max-abs:0.05``): per output, over all
  elements of all batches. ``cosine`` must reach the value; the others must not exceed it.

New NaN/Inf (finite in the reference) always fail. Reference elements that are not finite must
come back identical (the same inf, or NaN).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from mpcompile import errors

DEFAULT_RTOL = {"fp16": 1e-2, "bf16": 5e-2}
DEFAULT_ATOL = {"fp16": 1e-2, "bf16": 5e-2}
METRICS = ("cosine", "rel-l2", "max-abs")


class CriterionError(errors.MpcompileError):
    """A malformed ``--metric`` / ``--rtol`` / ``--atol`` combination."""

    exit_code = errors.ExitCode.USAGE


@dataclasses.dataclass(frozen=True)
class Criterion:
    """A tolerance (``metric is None``) or a metric with its threshold."""

    rtol: float = 1e-2
    atol: float = 1e-2
    metric: str | None = None
    threshold: float | None = None

    @property
    def limit(self) -> float:
        """The error value at which the criterion still passes."""
        if self.metric is None:
            return 1.0
        if self.metric == "cosine":
            return 1.0 - float(self.threshold)  # error = 1 - cosine
        return float(self.threshold)

    def relative_budget(self, references: Sequence[Mapping[str, np.ndarray]]) -> float:
        """The relative error (to the outputs' mean magnitude) the criterion roughly allows, for
        rules that predict error (the cancellation rule); the strictest output decides.

        Tolerance: ``rtol + atol / mean|y|``; ``rel-l2``: the threshold; ``cosine``:
        ``sqrt(2·(1 - threshold))`` (an error orthogonal to y of relative size e gives
        ``1 - cosine ≈ e²/2``); ``max-abs``: ``threshold / mean|y|``. inf when no output has a
        finite nonzero mean magnitude."""
        budget = math.inf
        for name in references[0] if references else ():
            ref = np.concatenate([_flat(batch[name]) for batch in references])
            ref = np.abs(ref[np.isfinite(ref)])
            scale = float(ref.mean()) if ref.size else 0.0
            if self.metric == "rel-l2":
                allowed = float(self.threshold)
            elif self.metric == "cosine":
                allowed = math.sqrt(2.0 * (1.0 - float(self.threshold)))
            elif scale <= 0:
                continue
            elif self.metric == "max-abs":
                allowed = float(self.threshold) / scale
            else:
                allowed = self.rtol + self.atol / scale
            budget = min(budget, allowed)
        return budget

    def describe(self) -> str:
        if self.metric is None:
            return f"|y - y_fp32| <= {self.atol:g} + {self.rtol:g}·|y_fp32|"
        return f"{self.metric} {'>=' if self.metric == 'cosine' else '<='} {self.threshold:g}"

    def to_dict(self) -> dict:
        if self.metric is None:
            return {"kind": "tolerance", "rtol": self.rtol, "atol": self.atol}
        return {"kind": "metric", "metric": self.metric, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, data: dict) -> Criterion:
        """The criterion ``to_dict`` wrote (as saved in a model's ``--auto`` record)."""
        if data.get("kind") == "metric":
            return cls(metric=data["metric"], threshold=data["threshold"])
        return cls(rtol=data["rtol"], atol=data["atol"])

    def check(
        self, references: Sequence[Mapping[str, np.ndarray]], candidates: Sequence[Mapping[str, np.ndarray]]
    ) -> CheckResult:
        """Compare every reference output with the candidate's (one mapping per batch)."""
        worst_name, worst_error = "", 0.0
        failures = []
        for name in references[0]:
            ref = np.concatenate([_flat(batch[name]) for batch in references])
            got = np.concatenate([_flat(batch[name]) for batch in candidates])
            error, failure = self._output_error(ref, got)
            if failure:
                failures.append(f"{name}: {failure}")
            if error > worst_error or not worst_name:
                worst_name, worst_error = name, error
        passed = not failures and worst_error <= self.limit
        if not passed and not failures:
            failures.append(f"{worst_name}: error {worst_error:.4g} > limit {self.limit:.4g}")
        return CheckResult(passed, worst_error, worst_name, "; ".join(failures))

    def _output_error(self, ref: np.ndarray, got: np.ndarray) -> tuple[float, str]:
        if ref.shape != got.shape:
            return math.inf, f"shape {got.shape} differs from the reference's {ref.shape}"
        ref_finite, got_finite = np.isfinite(ref), np.isfinite(got)
        new_nonfinite = int(np.sum(ref_finite & ~got_finite))
        same_nonfinite = (np.isnan(ref) & np.isnan(got)) | (np.isinf(ref) & (ref == got))
        changed_nonfinite = int(np.sum(~ref_finite & ~same_nonfinite))
        if new_nonfinite or changed_nonfinite:
            return math.inf, f"{new_nonfinite + changed_nonfinite} new or changed NaN/Inf"
        r, g = ref[ref_finite], got[ref_finite]
        if r.size == 0:
            return 0.0, ""
        if self.metric is None:
            bound = self.atol + self.rtol * np.abs(r)
            diff = np.abs(g - r)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(bound > 0, diff / bound, np.where(diff == 0, 0.0, np.inf))
            return float(ratio.max()), ""
        if self.metric == "cosine":
            return 1.0 - cosine_similarity(r, g), ""
        if self.metric == "rel-l2":
            norm = float(np.linalg.norm(r))
            diff_norm = float(np.linalg.norm(g - r))
            return (diff_norm / norm if norm else (0.0 if diff_norm == 0 else math.inf)), ""
        return float(np.max(np.abs(g - r))), ""  # max-abs


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """Outcome of one comparison; truthy when it passes."""

    passed: bool
    error: float  # worst output's error, comparable to Criterion.limit
    worst_output: str
    failure: str = ""

    def __bool__(self) -> bool:
        return self.passed


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    norm_a, norm_b = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if norm_a == 0 and norm_b == 0:
        return 1.0
    if norm_a == 0 or norm_b == 0:
        return 0.0
    return float(np.dot(a, b) / (norm_a * norm_b))


def make_criterion(
    *,
    rtol: float | None = None,
    atol: float | None = None,
    metric: str | None = None,
    precision: str = "fp16",
) -> Criterion:
    """A criterion from the user's options; the defaults of ``precision`` fill what is missing."""
    if metric is not None:
        if rtol is not None or atol is not None:
            raise CriterionError("--metric and --rtol/--atol exclude each other; give one of them")
        name, threshold = parse_metric(metric)
        return Criterion(metric=name, threshold=threshold)
    rtol = DEFAULT_RTOL.get(precision, 1e-2) if rtol is None else rtol
    atol = DEFAULT_ATOL.get(precision, 1e-2) if atol is None else atol
    for option, value in (("--rtol", rtol), ("--atol", atol)):
        if not math.isfinite(value) or value < 0:
            raise CriterionError(f"{option} {value}: must be a non-negative number")
    if rtol == 0 and atol == 0:
        raise CriterionError("--rtol and --atol are both 0: no low-precision model can meet that")
    return Criterion(rtol=float(rtol), atol=float(atol))


def parse_metric(text: str) -> tuple[str, float]:
    """``cosine:0.9999`` -> ("cosine", 0.9999)."""
    name, sep, value = text.strip().partition(":")
    name = name.strip().lower().replace("_", "-")
    if not sep or name not in METRICS:
        raise CriterionError(f"--metric {text!r}: expected one of {', '.join(m + ':VALUE' for m in METRICS)}")
    try:
        threshold = float(value)
    except ValueError:
        raise CriterionError(f"--metric {text!r}: {value!r} is not a number") from None
    if not math.isfinite(threshold) or threshold < 0 or (name == "cosine" and threshold > 1):
        raise CriterionError(f"--metric {text!r}: out of range")
    return name, threshold


def _flat(array: np.ndarray) -> np.ndarray:
    return np.asarray(array).astype(np.float64, copy=False).ravel()
