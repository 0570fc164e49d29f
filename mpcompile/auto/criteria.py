"""When a converted model is accurate enough: a measure per output kind (the default), an
elementwise tolerance or a similarity metric.

* tolerance (``--rtol R --atol A``): every element satisfies
  ``|converted - reference| <= atol + rtol * |reference|`` (``numpy.allclose``'s rule, the one
  ``mpcompile validate`` uses). The reported error is the worst ratio
  ``|converted - reference| / (atol + rtol * |reference|)``: at most 1 passes.
* metric (``--metric cosine:0.9999``, ``rel-l2:1e-3``, ``max-abs:0.05``): per output, over all
  elements of all batches. ``cosine`` must reach the value; the others must not exceed it.

* the default, per output (``output_criterion``: no ``--metric``, ``--rtol`` or ``--atol``
  given): each output judged by what it is (``output_kind``, from its name, type, shape and
  producing op). **Logits** (classification or generative scores) pass with cosine >=
  ``LOGITS_COSINE`` and every row's reference top-1 class among the candidate's top ``TOP_K``
  (classes on the last axis; on axis 1 of a rank-4 segmentation map); a large logit shifted by
  1e-2 changes no decision. **Values** (regressions, embeddings, boxes, hidden states, KV
  caches) pass with a relative L2 error <= ``VALUES_REL_L2``. The error of each output is its
  measure over its own limit, so the limit is 1. An output is logits when it is float, of rank
  >= 2, and either named like scores (``LOGITS_WORDS``) or of rank 2 or 3 with a static last
  dim >= ``MIN_CLASSES`` made by a scoring op (``SCORING_OPS``: a projection, not a Concat of
  boxes and scores) under a name not in ``VALUES_WORDS``; anything else is values.

New NaN/Inf (finite in the reference) always fail. Reference elements that are not finite must
come back identical (the same inf, or NaN).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from mpcompile import errors

DEFAULT_RTOL = {"fp16": 1e-2, "bf16": 5e-2}
DEFAULT_ATOL = {"fp16": 1e-2, "bf16": 5e-2}
METRICS = ("cosine", "rel-l2", "max-abs")
PER_OUTPUT = "per-output"  # the default: a measure chosen per output (output_criterion)
LOGITS, VALUES = "logits", "values"
LOGITS_COSINE = {"fp16": 0.999, "bf16": 0.995}
VALUES_REL_L2 = {"fp16": 1e-2, "bf16": 5e-2}
TOP_K = 5
MIN_CLASSES = 1000  # a static last dim this large, made by a scoring op, not named like a value
LOGITS_WORDS = ("logit", "score", "prob")
VALUES_WORDS = ("hidden", "embed", "pool", "state", "feature", "present", "past", "key", "value", "box")
SCORING_OPS = frozenset({"MatMul", "Gemm", "Add", "Softmax", "LogSoftmax"})


class CriterionError(errors.MpcompileError):
    """A malformed ``--metric`` / ``--rtol`` / ``--atol`` combination."""

    exit_code = errors.ExitCode.USAGE


@dataclasses.dataclass(frozen=True)
class Criterion:
    """A tolerance (``metric is None``), a metric with its threshold, or the default measure per
    output (``metric == PER_OUTPUT``: each output's kind in ``outputs`` and each kind's limit)."""

    rtol: float = 1e-2
    atol: float = 1e-2
    metric: str | None = None
    threshold: float | None = None
    # PER_OUTPUT: (output name, LOGITS or VALUES), and the thresholds of each kind.
    outputs: tuple[tuple[str, str], ...] = ()
    cosine: float = LOGITS_COSINE["fp16"]
    rel_l2: float = VALUES_REL_L2["fp16"]
    top_k: int = TOP_K

    @property
    def limit(self) -> float:
        """The error value at which the criterion still passes."""
        if self.metric is None or self.metric == PER_OUTPUT:
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
            if self.metric == PER_OUTPUT:
                logits = self.kind_of(name) == LOGITS
                allowed = math.sqrt(2.0 * (1.0 - self.cosine)) if logits else self.rel_l2
            elif self.metric == "rel-l2":
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

    def kind_of(self, output: str) -> str:
        """LOGITS or VALUES for an output of a PER_OUTPUT criterion (VALUES when not listed)."""
        return self._kinds.get(output, VALUES)

    @functools.cached_property
    def _kinds(self) -> dict[str, str]:
        """``outputs`` as a dict, built once (``kind_of`` is asked per output: 10,000 outputs
        made a dict of 10,000 each time)."""
        return dict(self.outputs)

    def describe(self) -> str:
        if self.metric is None:
            return f"|y - y_fp32| <= {self.atol:g} + {self.rtol:g}·|y_fp32|"
        if self.metric == PER_OUTPUT:
            logits = [name for name, kind in self.outputs if kind == LOGITS]
            parts = []
            if logits:
                parts.append(
                    f"cosine >= {self.cosine:g} and top-1 in top-{self.top_k} for {', '.join(logits)}"
                )
            if len(logits) < len(self.outputs):
                parts.append(
                    f"rel-l2 <= {self.rel_l2:g} for {'the other outputs' if logits else 'every output'}"
                )
            return "; ".join(parts) or f"rel-l2 <= {self.rel_l2:g}"
        return f"{self.metric} {'>=' if self.metric == 'cosine' else '<='} {self.threshold:g}"

    def to_dict(self) -> dict:
        if self.metric is None:
            return {"kind": "tolerance", "rtol": self.rtol, "atol": self.atol}
        if self.metric == PER_OUTPUT:
            return {
                "kind": PER_OUTPUT,
                "outputs": dict(self.outputs),
                LOGITS: {"cosine": self.cosine, "top_k": self.top_k},
                VALUES: {"rel-l2": self.rel_l2},
            }
        return {"kind": "metric", "metric": self.metric, "threshold": self.threshold}

    @classmethod
    def from_dict(cls, data: dict) -> Criterion:
        """The criterion ``to_dict`` wrote (as saved in a model's ``--auto`` record)."""
        if data.get("kind") == PER_OUTPUT:
            return cls(
                metric=PER_OUTPUT,
                outputs=tuple(sorted(data["outputs"].items())),
                cosine=data[LOGITS]["cosine"],
                top_k=data[LOGITS]["top_k"],
                rel_l2=data[VALUES]["rel-l2"],
            )
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
            error, failure = self._output_error(ref, got, name)
            if not failure and self.metric == PER_OUTPUT and self.kind_of(name) == LOGITS:
                error, failure = _top_k_check(references, candidates, name, self.top_k, error)
            if failure:
                failures.append(f"{name}: {failure}")
            if error > worst_error or not worst_name:
                worst_name, worst_error = name, error
        passed = not failures and worst_error <= self.limit
        if not passed and not failures:
            failures.append(f"{worst_name}: error {worst_error:.4g} > limit {self.limit:.4g}")
        return CheckResult(passed, worst_error, worst_name, "; ".join(failures))

    def _output_error(self, ref: np.ndarray, got: np.ndarray, name: str = "") -> tuple[float, str]:
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
        if self.metric == PER_OUTPUT:
            if self.kind_of(name) == LOGITS:
                return (1.0 - cosine_similarity(r, g)) / (1.0 - self.cosine), ""
            return _relative_l2(r, g) / self.rel_l2, ""
        if self.metric is None:
            bound = self.atol + self.rtol * np.abs(r)
            diff = np.abs(g - r)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(bound > 0, diff / bound, np.where(diff == 0, 0.0, np.inf))
            return float(ratio.max()), ""
        if self.metric == "cosine":
            return 1.0 - cosine_similarity(r, g), ""
        if self.metric == "rel-l2":
            return _relative_l2(r, g), ""
        return float(np.max(np.abs(g - r))), ""  # max-abs


def _relative_l2(ref: np.ndarray, got: np.ndarray) -> float:
    norm = float(np.linalg.norm(ref))
    diff_norm = float(np.linalg.norm(got - ref))
    return diff_norm / norm if norm else (0.0 if diff_norm == 0 else math.inf)


def _top_k_check(
    references: Sequence[Mapping[str, np.ndarray]],
    candidates: Sequence[Mapping[str, np.ndarray]],
    name: str,
    k: int,
    error: float,
) -> tuple[float, str]:
    """Every row's (classes axis) reference top-1 class among the candidate's top ``k``: the error
    unchanged when so, else above the limit (1 + the share of rows missed) with a failure."""
    rows = missed = 0
    for ref_batch, got_batch in zip(references, candidates, strict=True):
        ref, got = np.asarray(ref_batch[name]), np.asarray(got_batch[name])
        if ref.ndim < 2 or ref.shape != got.shape or ref.size == 0:
            continue
        axis = 1 if ref.ndim == 4 else -1  # a segmentation map's classes: N x C x H x W
        classes = ref.shape[axis]
        ref_rows = np.moveaxis(ref, axis, -1).reshape(-1, classes).astype(np.float64)
        got_rows = np.moveaxis(got, axis, -1).reshape(-1, classes).astype(np.float64)
        top1 = np.argmax(ref_rows, axis=1)
        # A row's top-1 is in the candidate's top k when fewer than k classes score above it.
        above = np.sum(got_rows > got_rows[np.arange(len(top1)), top1][:, None], axis=1)
        rows += len(top1)
        missed += int(np.sum(above >= k))
    if not missed:
        return error, ""
    share = missed / rows
    return max(error, 1.0 + share), f"top-1 outside the top-{k} in {missed} of {rows} rows"


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


def output_kind(
    name: str,
    dtype_is_float: bool,
    shape: Sequence[int | str | None] | None,
    producer: str | None = None,
) -> str:
    """LOGITS or VALUES for one model output (rules in the module docstring); ``producer``: the
    op type of the node that makes it (None for a graph input passed through)."""
    if not dtype_is_float or shape is None or len(shape) < 2:
        return VALUES
    lowered = name.lower()
    if any(word in lowered for word in LOGITS_WORDS):
        return LOGITS
    last = shape[-1]
    if (
        len(shape) <= 3
        and isinstance(last, int)
        and last >= MIN_CLASSES
        and producer in SCORING_OPS
        and not any(word in lowered for word in VALUES_WORDS)
    ):
        return LOGITS
    return VALUES


def output_criterion(
    outputs: Sequence[tuple[str, bool, Sequence[int | str | None] | None, str | None]], precision: str
) -> Criterion:
    """The default criterion: a measure per output, from its ``(name, is float, shape, producer)``."""
    return Criterion(
        metric=PER_OUTPUT,
        outputs=tuple(sorted((output[0], output_kind(*output)) for output in outputs)),
        cosine=LOGITS_COSINE.get(precision, LOGITS_COSINE["fp16"]),
        rel_l2=VALUES_REL_L2.get(precision, VALUES_REL_L2["fp16"]),
    )


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
