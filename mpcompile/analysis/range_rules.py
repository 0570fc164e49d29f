"""Range rules: nodes the FP32 reference run shows to be unsafe in low precision, kept FP32 up front.

From one FP32 run with every main-graph intermediate exposed (all batches), a node that would
run in low precision stays FP32 (reason ``auto:range``) when any of its floating-point inputs
or outputs (initializers excepted: the core's ``range`` rule handles constants):

* **overflow headroom**: reaches ``max |x| > OVERFLOW_FRACTION · max`` of the low-precision type
  (0.5 · 65504 = 32752 for FP16). Values that large overflow at the next Add or Mul of two of
  them, and any larger input than the sample's would overflow at once;
* **underflow**: loses more than ``UNDERFLOW_MASS`` (1 %) of its total magnitude
  ``sum |x|`` to values that flush to zero in the low-precision type (values below about
  6e-8 in FP16); a share of tiny values that carry no weight (Softmax tails) does not count;
* **deep reduction**: reduces more than ``REDUCTION_DEPTH`` (16384) elements into each output
  (Reduce*, Softmax/LogSoftmax/Hardmax along the axis, LayerNormalization/RMSNormalization
  over the normalized axes, InstanceNormalization/GroupNormalization and global pooling over
  the spatial axes, CumSum along the axis). Kernels that accumulate in low precision (some
  TensorRT tactics, FP16 atomics) lose all accuracy beyond 2**11 terms; ORT's CUDA kernels
  accumulate in FP32, so this rule is a guard, not a measurement. MatMul/Gemm/Conv are left
  out: their kernels accumulate in FP32 everywhere.

* **integer casts**: a Cast from integers to float (a candidate under ``--auto``,
  ``ConvertOptions.measured_casts``) whose measured inputs are not all 0 or 1. A 0/1 mask is
  exact in any float type; ids, positions and counts are exact in FP16 only up to 2048, and one
  sample says little about their range on other inputs. Casts from bool always pass.

One more rule predicts error rather than range trouble, so it needs the tolerance:

* **cancellation** (Add, Sub, Sum): a sum amplifies the relative rounding error of its inputs
  by ``sum |a| + |b|`` over ``|a ± b|``. Over the reference run's elements, weighted by
  magnitude, the amplification is ``A = Σ(|a| + |b|) / Σ|a ± b|`` (the magnitude-weighted mean
  of the elementwise factor). With inputs stored in low precision the sum carries a relative
  error of ``e = Σ(|δa| + |δb|) / Σ|a ± b|``, ``δx`` being the rounding error of storing ``x``
  in the type, computed from the reference values (at most ``u·A``, unit roundoff ``u``:
  ``2**-11`` for FP16, ``2**-8`` for BF16; 0 for values the type holds exactly, such as masks).
  The node stays FP32 when ``A >= AMPLIFICATION_FLOOR`` (8: a sum that loses fewer than three
  bits is ordinary rounding, which the search measures) and ``e > CANCELLATION_SHARE`` (0.5)
  times the tolerance's relative error budget (``Criterion.relative_budget``): amplified
  rounding alone would use more than half of what the outputs may lose. The low-precision
  nodes producing its inputs stay FP32 with it (rule ``cancellation-input``): the error
  amplified is their outputs' rounding, so keeping only the sum FP32 would not help.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from mpcompile.core.precision import LowPrecisionFormat
from mpcompile.core.ranges import constant_tensor

OVERFLOW_FRACTION = 0.5
UNDERFLOW_MASS = 1e-2
REDUCTION_DEPTH = 16384
CANCELLATION_SHARE = 0.5
AMPLIFICATION_FLOOR = 8.0
CANCELLATION_OPS = frozenset({"Add", "Sub", "Sum"})

REDUCE_OPS = frozenset(
    {
        "ReduceSum",
        "ReduceMean",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceSumSquare",
    }
)
AXIS_OPS = frozenset({"Softmax", "LogSoftmax", "Hardmax"})
NORMALIZED_TAIL_OPS = frozenset({"LayerNormalization", "RMSNormalization"})
SPATIAL_OPS = frozenset({"InstanceNormalization", "GroupNormalization", "GlobalAveragePool", "GlobalLpPool"})
# Every op ``reduction_depth`` measures: any other is no reduction.
DEPTH_OPS = (
    REDUCE_OPS
    | AXIS_OPS
    | NORMALIZED_TAIL_OPS
    | SPATIAL_OPS
    | {"LpNormalization", "MeanVarianceNormalization", "LpPool", "LRN", "CumSum"}
)
# Ops whose kernels accumulate a sum that is none of their outputs (see ``accumulator_max``).
ACCUMULATOR_OPS = frozenset(
    {"ReduceMean", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "LpNormalization", "LpPool", "GlobalLpPool"}
    | {"MeanVarianceNormalization", "LRN"}
)


@dataclasses.dataclass(frozen=True)
class RangeRules:
    """Thresholds of the range rules (see the module docstring)."""

    overflow_fraction: float = OVERFLOW_FRACTION
    underflow_mass: float = UNDERFLOW_MASS
    reduction_depth: int = REDUCTION_DEPTH
    cancellation_share: float = CANCELLATION_SHARE  # math.inf turns the cancellation rule off
    amplification_floor: float = AMPLIFICATION_FLOOR

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class RangeFinding:
    """Why one node is unsafe: which rule, on which value, measured vs allowed."""

    node: str
    rule: str  # "overflow" | "underflow" | "deep-reduction" | "accumulator" | "integer-cast" |
    # "cancellation" | "cancellation-input"
    value: str  # the value measured; for "cancellation-input", the cancelling node
    measured: float  # for "cancellation": the predicted relative error e
    threshold: float
    amplification: float = 0.0  # A, for the cancellation rules
    detail: str = ""  # "accumulator": what the kernel accumulates; "integer-cast": how many values

    def describe(self) -> str:
        if self.rule == "accumulator":
            return (
                f"accumulates {self.detail} reaching {self.measured:.4g} > {self.threshold:.4g} "
                "(overflows a low-precision accumulator)"
            )
        if self.rule == "cancellation":
            return (
                f"cancellation amplifies input rounding {self.amplification:.3g}x "
                f"(sum |inputs| / sum |output|): predicted relative error {self.measured:.3g} > {self.threshold:.3g} allowed"
            )
        if self.rule == "cancellation-input":
            return (
                f"feeds {self.value}, whose cancellation amplifies this output's rounding "
                f"{self.amplification:.3g}x"
            )
        if self.rule == "integer-cast":
            return (
                f"{self.value!r} casts integers beyond a 0/1 mask ({self.detail}, max |x| {self.measured:.6g}): "
                f"ids, positions or counts, exact in low precision only up to {int(self.threshold)}"
            )
        if self.rule == "overflow":
            return f"{self.value!r} reaches max |x| {self.measured:.4g} > {self.threshold:.4g}"
        if self.rule == "underflow":
            return f"{self.value!r} loses {self.measured:.2%} of its magnitude to flush-to-zero (> {self.threshold:.2%})"
        return f"reduces {int(self.measured)} elements per output (> {int(self.threshold)})"


@dataclasses.dataclass
class ValueStats:
    max_abs: float
    flushed_mass: float  # share of sum |x| in values that flush to zero


def value_stats(
    arrays: Sequence[np.ndarray], fmt: LowPrecisionFormat, *, flushed: bool = True
) -> ValueStats | None:
    """Max |x| and the flushed magnitude share of one value over all batches (floats only).

    ``flushed=False``: the share is not needed (the underflow rule is off) and left 0, so a
    batch whose values are all finite costs one pass over it in its own dtype."""
    max_abs, total, flushed_sum = 0.0, 0.0, 0.0
    seen = False
    for array in arrays:
        array = np.asarray(array)
        if array.dtype.kind != "f" or array.size == 0:
            continue
        seen = True
        if not flushed:
            largest = float(np.max(np.abs(array)))
            if math.isfinite(largest):  # else the finite values' max, below
                max_abs = max(max_abs, largest)
                continue
        magnitude = np.abs(array.astype(np.float64))
        magnitude = magnitude[np.isfinite(magnitude)]
        if magnitude.size == 0:
            continue
        max_abs = max(max_abs, float(magnitude.max()))
        total += float(magnitude.sum())
        # Below half the smallest subnormal, round-to-nearest-even gives zero.
        flushed_sum += float(magnitude[(magnitude > 0) & (magnitude <= fmt.smallest_subnormal / 2)].sum())
    if not seen:
        return None
    return ValueStats(max_abs, flushed_sum / total if total > 0 else 0.0)


def find_unsafe_nodes(
    nodes: Mapping[str, ir.Node],
    candidates: Sequence[str],
    values: Mapping[str, Sequence[np.ndarray]],
    fmt: LowPrecisionFormat,
    rules: RangeRules,
    opset: int,
    relative_budget: float = math.inf,
) -> dict[str, RangeFinding]:
    """The ``candidates`` (low-precision nodes) that a range rule keeps FP32, with the first finding.

    ``relative_budget``: the relative output error the tolerance allows
    (``Criterion.relative_budget``); the cancellation rule needs it (inf: off)."""
    cache: dict[str, ValueStats | None] = {}
    flushed = rules.underflow_mass < math.inf  # the underflow rule reads it

    def stats(name: str) -> ValueStats | None:
        if name not in cache:
            cache[name] = value_stats(values[name], fmt, flushed=flushed) if name in values else None
        return cache[name]

    overflow_limit = rules.overflow_fraction * fmt.max
    findings: dict[str, RangeFinding] = {}
    for name in candidates:
        node = nodes[name]
        finding = (
            _depth_finding(node, values, rules, opset)
            or _accumulator_finding(node, values, opset, overflow_limit)
            or _integer_cast_finding(node, values, fmt)
        )
        touched = [v for v in (*node.inputs, *node.outputs) if v is not None and v.name]
        for value in touched:
            if finding is not None:
                break
            if value.is_initializer() or value.const_value is not None:
                continue
            measured = stats(value.name)
            if measured is None:
                continue
            if measured.max_abs > overflow_limit:
                finding = RangeFinding(name, "overflow", value.name, measured.max_abs, overflow_limit)
            elif measured.flushed_mass > rules.underflow_mass:
                finding = RangeFinding(
                    name, "underflow", value.name, measured.flushed_mass, rules.underflow_mass
                )
        if finding is None:
            finding = _cancellation_finding(node, values, fmt, rules, relative_budget)
        if finding is not None:
            findings[name] = finding
    _add_cancellation_inputs(nodes, set(candidates), findings)
    return findings


def _integer_cast_finding(
    node: ir.Node, values: Mapping[str, Sequence[np.ndarray]], fmt: LowPrecisionFormat
) -> RangeFinding | None:
    """A Cast from integers whose measured values are not all 0 or 1 (bool sources always pass).

    0/1 masks are exact in any float type, whatever the inputs. Other integers (ids, positions,
    counts) are exact in FP16 only up to 2048 and in BF16 up to 256, and the sample measured says
    little about their range on other inputs (a sequence of 16 against one of 4096), so they stay
    FP32."""
    if node.domain != "" or node.op_type not in ("Cast", "CastLike") or not node.inputs:
        return None
    sources = values.get(node.inputs[0].name or "", ())
    if not sources or any(np.asarray(array).dtype.kind not in "iu" for array in sources):
        return None  # bool (0/1 by type) or not an integer source
    others, largest = 0, 0.0
    for array in sources:
        array = np.asarray(array)
        others += int(np.count_nonzero((array != 0) & (array != 1)))
        if array.size:
            largest = max(largest, float(np.abs(array.astype(np.float64)).max()))
    if not others:
        return None
    exact_up_to = 2.0 ** (fmt.mantissa_bits + 1)  # 2048 for FP16, 256 for BF16
    return RangeFinding(
        node.name or "", "integer-cast", node.outputs[0].name, largest, exact_up_to,
        detail=f"{others} value(s) other than 0/1",
    )  # fmt: skip


def unit_roundoff(fmt: LowPrecisionFormat) -> float:
    """Largest relative rounding error of the type: 2**-11 for FP16, 2**-8 for BF16."""
    return 2.0 ** -(fmt.mantissa_bits + 1)


def cancellation(
    node: ir.Node, values: Mapping[str, Sequence[np.ndarray]], fmt: LowPrecisionFormat
) -> tuple[float, float] | None:
    """``(A, e)`` of an Add/Sub/Sum over all batches, inputs broadcast to the output:
    the amplification ``A = Σ(|a| + |b|) / Σ|a ± b|`` and the predicted relative error
    ``e = Σ(|δa| + |δb|) / Σ|a ± b|``, where ``δx`` is the rounding error of storing ``x`` in
    ``fmt`` (at most ``u·A``; 0 for inputs the type holds exactly, such as 0/1 masks).
    None when a value is missing or the output is all zeros."""
    output = node.outputs[0] if node.outputs else None
    if output is None or not values.get(output.name):
        return None
    batches = values[output.name]
    inputs: list[Sequence[np.ndarray]] = []
    for value in node.inputs:
        if value is None:
            return None
        if values.get(value.name) and len(values[value.name]) == len(batches):
            inputs.append(values[value.name])
        elif (tensor := constant_tensor(value)) is not None:
            inputs.append([tensor.numpy()] * len(batches))
        else:
            return None
    total_in, total_rounding, total_out = 0.0, 0.0, 0.0
    for index, result in enumerate(batches):
        result = np.asarray(result)
        if result.dtype.kind != "f":
            return None
        magnitude = np.zeros(result.shape, np.float64)
        rounding = np.zeros(result.shape, np.float64)
        for arrays in inputs:
            array = np.asarray(arrays[index])
            if array.dtype.kind != "f":
                return None
            exact = array.astype(np.float64)
            with np.errstate(over="ignore", invalid="ignore"):
                stored = array.astype(fmt.numpy_dtype).astype(np.float64)
            magnitude = magnitude + np.abs(exact)
            rounding = rounding + np.abs(stored - exact)
        if magnitude.shape != result.shape:
            return None
        finite = np.isfinite(magnitude) & np.isfinite(rounding) & np.isfinite(result)
        total_in += float(magnitude[finite].sum())
        total_rounding += float(rounding[finite].sum())
        total_out += float(np.abs(result[finite].astype(np.float64)).sum())
    if total_out == 0:
        return None
    return total_in / total_out, total_rounding / total_out


def _cancellation_finding(
    node: ir.Node,
    values: Mapping[str, Sequence[np.ndarray]],
    fmt: LowPrecisionFormat,
    rules: RangeRules,
    relative_budget: float,
) -> RangeFinding | None:
    if node.domain not in ("", "ai.onnx") or node.op_type not in CANCELLATION_OPS:
        return None
    threshold = rules.cancellation_share * relative_budget
    if not math.isfinite(threshold):
        return None
    measured = cancellation(node, values, fmt)
    if measured is None:
        return None
    factor, predicted = measured
    if factor < rules.amplification_floor or predicted <= threshold:
        return None
    return RangeFinding(node.name or "", "cancellation", node.outputs[0].name, predicted, threshold, factor)


def _add_cancellation_inputs(
    nodes: Mapping[str, ir.Node], candidates: set[str], findings: dict[str, RangeFinding]
) -> None:
    """The low-precision producers of a cancelling node's inputs stay FP32 with it."""
    for name, finding in list(findings.items()):
        if finding.rule != "cancellation":
            continue
        for value in nodes[name].inputs:
            producer = value.producer() if value is not None else None
            if producer is None or producer.name not in candidates or producer.name in findings:
                continue
            findings[producer.name] = RangeFinding(
                producer.name, "cancellation-input", name, finding.measured, finding.threshold,
                finding.amplification,
            )  # fmt: skip


def reduction_depth(node: ir.Node, values: Mapping[str, Sequence[np.ndarray]], opset: int) -> int | None:
    """Elements reduced into each output element, from the reference run's shapes; None if not a reduction."""
    op = node.op_type
    if op not in DEPTH_OPS or node.domain not in ("", "ai.onnx") or not node.inputs or node.inputs[0] is None:
        return None
    data = _shape(node.inputs[0], values)
    if data is None:
        return None
    if op in REDUCE_OPS:
        out = _shape(node.outputs[0], values)
        if out is None:
            return None
        return math.prod(data) // max(1, math.prod(out))
    if op in AXIS_OPS:
        # Softmax-13 and later normalize along one axis (default -1); earlier opsets flatten from ``axis``.
        one_axis = opset >= 13
        axis = _int_attribute(node, "axis", -1 if one_axis else 1)
        if not data:
            return None
        axis %= len(data)
        return data[axis] if one_axis else math.prod(data[axis:])
    if op in NORMALIZED_TAIL_OPS:
        axis = _int_attribute(node, "axis", -1)
        return math.prod(data[axis % len(data) :]) if data else None
    if op in SPATIAL_OPS:
        return math.prod(data[2:]) if len(data) > 2 else None
    if op == "LpNormalization":
        return data[_int_attribute(node, "axis", -1) % len(data)] if data else None
    if op == "MeanVarianceNormalization":
        axes = _mvn_axes(node, len(data))
        return math.prod(data[a] for a in axes) if axes else None
    if op == "LpPool":
        return math.prod(_ints_attribute(node, "kernel_shape", ())) or None
    if op == "LRN":
        return _int_attribute(node, "size", 1)
    if op == "CumSum" and len(node.inputs) > 1 and node.inputs[1] is not None:
        axis_value = node.inputs[1].const_value
        if axis_value is None:
            return max(data) if data else None
        axis = int(np.asarray(axis_value.numpy()).reshape(-1)[0])
        return data[axis % len(data)] if data else None
    return None


def accumulator_max(
    node: ir.Node, values: Mapping[str, Sequence[np.ndarray]], opset: int
) -> tuple[float, str] | None:
    """Largest |sum| a kernel of ``node`` accumulates that is none of its outputs, over all batches,
    and what it is; None for other ops or missing values. ReduceMean sums before dividing, ReduceL2
    and the Lp ops sum |x|^p before the root, ReduceLogSum(Exp) sum x (exp x) before the log,
    MeanVarianceNormalization and LRN sum squares. Kernels that accumulate in FP32 (ORT's CUDA
    reductions) do not overflow there; like the deep-reduction rule, this guards the others."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx") or op not in ACCUMULATOR_OPS or not node.inputs:
        return None
    source = (
        node.inputs[0] if op in ("LpNormalization", "MeanVarianceNormalization", "LRN") else node.outputs[0]
    )
    if source is None or not values.get(source.name):
        return None
    largest = 0.0
    for array in values[source.name]:
        signed = np.asarray(array, dtype=np.float64)
        if signed.size == 0:
            continue
        if op in ("ReduceLogSum", "ReduceLogSumExp"):  # the sum is exp(y); y < 0 for sums below 1
            largest = max(largest, math.exp(min(float(signed.max()), 709.0)))
            continue
        with np.errstate(over="ignore"):
            largest = max(largest, _accumulated(node, op, np.abs(signed), values, opset))
    p = _int_attribute(node, "p", 2)
    what = {
        "ReduceMean": "the sum before the mean",
        "ReduceL2": "the sum of squares",
        "ReduceLogSum": "the sum before the log",
        "ReduceLogSumExp": "the sum of exp (without max subtraction)",
        "LpNormalization": f"the sum of |x|^{p}",
        "LpPool": f"the sum of |x|^{p}",
        "GlobalLpPool": f"the sum of |x|^{p}",
        "MeanVarianceNormalization": "the sum of squares",
        "LRN": "the sum of squares over its window",
    }[op]
    return largest, what


def _accumulated(
    node: ir.Node, op: str, x: np.ndarray, values: Mapping[str, Sequence[np.ndarray]], opset: int
) -> float:
    """Max |accumulator| for one batch; ``x`` is |input| (Lp/MVN/LRN) or |output| (ReduceMean,
    ReduceL2, LpPool, GlobalLpPool)."""
    if op == "ReduceMean":
        return float(x.max()) * (reduction_depth(node, values, opset) or 1)
    if op == "ReduceL2":
        return float(x.max()) ** 2
    p = _int_attribute(node, "p", 2)
    if op in ("LpPool", "GlobalLpPool"):
        return float(x.max()) ** p
    if op == "LpNormalization":
        return float(np.sum(x**p, axis=_int_attribute(node, "axis", -1) % x.ndim).max())
    if op == "MeanVarianceNormalization":
        axes = _mvn_axes(node, x.ndim)
        return float(np.sum(x**2, axis=axes).max()) if axes else 0.0
    # LRN: square_sum over channels [c - floor((size-1)/2), c + ceil((size-1)/2)]
    size = _int_attribute(node, "size", 1)
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    squares = np.moveaxis(x**2, 1, -1) if x.ndim > 1 else x**2
    padded = np.concatenate([np.zeros((*squares.shape[:-1], 1)), np.cumsum(squares, axis=-1)], axis=-1)
    channels = squares.shape[-1]
    upper = np.minimum(np.arange(channels) + after + 1, channels)
    lower = np.maximum(np.arange(channels) - before, 0)
    return float((padded[..., upper] - padded[..., lower]).max())


def _accumulator_finding(
    node: ir.Node, values: Mapping[str, Sequence[np.ndarray]], opset: int, limit: float
) -> RangeFinding | None:
    measured = accumulator_max(node, values, opset)
    if measured is None or measured[0] <= limit:
        return None
    largest, what = measured
    value = node.inputs[0].name if node.inputs[0] is not None else ""
    return RangeFinding(node.name or "", "accumulator", value, largest, limit, detail=what)


def _depth_finding(
    node: ir.Node, values: Mapping[str, Sequence[np.ndarray]], rules: RangeRules, opset: int
) -> RangeFinding | None:
    depth = reduction_depth(node, values, opset)
    if depth is not None and depth > rules.reduction_depth:
        value = node.inputs[0].name if node.inputs[0] is not None else ""
        return RangeFinding(node.name or "", "deep-reduction", value, depth, rules.reduction_depth)
    return None


def _shape(value: ir.Value | None, values: Mapping[str, Sequence[np.ndarray]]) -> tuple[int, ...] | None:
    if value is None:
        return None
    if values.get(value.name):
        return tuple(np.shape(values[value.name][0]))
    if value.const_value is not None:
        return tuple(value.const_value.shape.numpy())
    return None


def _mvn_axes(node: ir.Node, rank: int) -> tuple[int, ...]:
    """MeanVarianceNormalization's axes (default 0, 2, 3), normalized; () if one is out of range."""
    axes = _ints_attribute(node, "axes", (0, 2, 3))
    if not rank or any(not -rank <= axis < rank for axis in axes):
        return ()
    return tuple(sorted({axis % rank for axis in axes}))


def _ints_attribute(node: ir.Node, name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    attr = node.attributes.get(name)
    return tuple(attr.as_ints()) if attr is not None else default


def _int_attribute(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default
