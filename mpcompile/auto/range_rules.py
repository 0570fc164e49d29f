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
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from mpcompile.precision import LowPrecisionFormat

OVERFLOW_FRACTION = 0.5
UNDERFLOW_MASS = 1e-2
REDUCTION_DEPTH = 16384

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


@dataclasses.dataclass(frozen=True)
class RangeRules:
    """Thresholds of the range rules (see the module docstring)."""

    overflow_fraction: float = OVERFLOW_FRACTION
    underflow_mass: float = UNDERFLOW_MASS
    reduction_depth: int = REDUCTION_DEPTH

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class RangeFinding:
    """Why one node is unsafe: which rule, on which value, measured vs allowed."""

    node: str
    rule: str  # "overflow" | "underflow" | "deep-reduction"
    value: str
    measured: float
    threshold: float

    def describe(self) -> str:
        if self.rule == "overflow":
            return f"{self.value!r} reaches max |x| {self.measured:.4g} > {self.threshold:.4g}"
        if self.rule == "underflow":
            return f"{self.value!r} loses {self.measured:.2%} of its magnitude to flush-to-zero (> {self.threshold:.2%})"
        return f"reduces {int(self.measured)} elements per output (> {int(self.threshold)})"


@dataclasses.dataclass
class ValueStats:
    max_abs: float
    flushed_mass: float  # share of sum |x| in values that flush to zero


def value_stats(arrays: Sequence[np.ndarray], fmt: LowPrecisionFormat) -> ValueStats | None:
    """Max |x| and the flushed magnitude share of one value over all batches (floats only)."""
    max_abs, total, flushed = 0.0, 0.0, 0.0
    seen = False
    for array in arrays:
        array = np.asarray(array)
        if array.dtype.kind != "f" or array.size == 0:
            continue
        seen = True
        magnitude = np.abs(array.astype(np.float64))
        magnitude = magnitude[np.isfinite(magnitude)]
        if magnitude.size == 0:
            continue
        max_abs = max(max_abs, float(magnitude.max()))
        total += float(magnitude.sum())
        # Below half the smallest subnormal, round-to-nearest-even gives zero.
        flushed += float(magnitude[(magnitude > 0) & (magnitude <= fmt.smallest_subnormal / 2)].sum())
    if not seen:
        return None
    return ValueStats(max_abs, flushed / total if total > 0 else 0.0)


def find_unsafe_nodes(
    nodes: Mapping[str, ir.Node],
    candidates: Sequence[str],
    values: Mapping[str, Sequence[np.ndarray]],
    fmt: LowPrecisionFormat,
    rules: RangeRules,
    opset: int,
) -> dict[str, RangeFinding]:
    """The ``candidates`` (low-precision nodes) that a range rule keeps FP32, with the first finding."""
    cache: dict[str, ValueStats | None] = {}

    def stats(name: str) -> ValueStats | None:
        if name not in cache:
            cache[name] = value_stats(values[name], fmt) if name in values else None
        return cache[name]

    overflow_limit = rules.overflow_fraction * fmt.max
    findings: dict[str, RangeFinding] = {}
    for name in candidates:
        node = nodes[name]
        finding = _depth_finding(node, values, rules, opset)
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
        if finding is not None:
            findings[name] = finding
    return findings


def reduction_depth(node: ir.Node, values: Mapping[str, Sequence[np.ndarray]], opset: int) -> int | None:
    """Elements reduced into each output element, from the reference run's shapes; None if not a reduction."""
    if node.domain not in ("", "ai.onnx") or not node.inputs or node.inputs[0] is None:
        return None
    op = node.op_type
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
    if op == "CumSum" and len(node.inputs) > 1 and node.inputs[1] is not None:
        axis_value = node.inputs[1].const_value
        if axis_value is None:
            return max(data) if data else None
        axis = int(np.asarray(axis_value.numpy()).reshape(-1)[0])
        return data[axis % len(data)] if data else None
    return None


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


def _int_attribute(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default
