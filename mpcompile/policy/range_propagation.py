"""Range protection propagates: which values may lie beyond the low-precision range.

A node kept FP32 because its output may overflow the low-precision format protects nothing if
its consumer casts that output straight back (openwakeword's melspectrogram: ``Pow`` kept FP32,
its ~1e10 output cast to FP16 for the mel MatMul, 40 % Inf/NaN). So such a value stays FP32 into
its consumers (reason ``range-propagated``) until an op brings it back into range.

Seeds (``seeds_range``): nodes whose outputs may exceed the low-precision range, and that run in
FP32 for that reason:

* a node kept FP32 because a constant input is out of range (reason ``range``), unless it
  brings values into range itself (a Div by 1e6);
* a blocked op that grows magnitudes (``GROWING_OPS``: Exp, Pow, Cosh, Sinh, ReduceSumSquare);
  ``Pow`` only when its exponent is not a constant of magnitude <= 1 (a root or an inverse does
  not overflow). Under ``--auto`` these ops are measured instead (their range rules check every
  consumer's inputs), so only the nodes of a graph they still block seed.

Every float consumer of a seed, and of those consumers in turn, stays FP32. The walk stops after
a node that brings values back into range (``brings_into_range``); that node itself reads the
large value and stays FP32 too:

* normalisations (``NORMALISING_OPS``): LayerNormalization, RMS/Simplified, Group, Instance,
  Lp, MeanVarianceNormalization and ORT's fused forms; their outputs are scaled by the input's
  own spread. ReduceMean is *not* one: the mean of values near 1e10 is near 1e10; the
  decomposed normalisations stop at their Sqrt/Reciprocal/Div instead;
* Softmax, LogSoftmax, Hardmax (outputs in [0, 1] or log-probabilities);
* logarithms (Log, ReduceLogSum, ReduceLogSumExp): log(3.4e38) is 88;
* Sqrt: it undoes the square of the common x^2 -> mean -> sqrt chains (a square of an FP16 value
  is at most 4.3e9, whose root is back in range);
* Reciprocal: 1/x of a large x is small (its own risk, tiny inputs, is the block rule's);
* bounded functions (``BOUNDED_OPS``): Sigmoid, Tanh, Erf, Sign, Softsign, HardSigmoid, Sin, Cos,
  Atan;
* a Div whose divisor carries the large value (x / sum(x), the decomposed Softmax) or is a
  constant of magnitude >= ``SCALE_BOUND`` (2^15) everywhere: the square of an int16-scale value
  (<= 2^30) divided by it is <= 2^15, in FP16 range; the int16 full-scale normalisation x / 32768
  is one;
* a Mul by a constant of magnitude <= 1 / ``SCALE_BOUND`` everywhere;
* a Clip whose min and max are constants within the format's range.

The walk visits each node once: linear in the graph's size, and deterministic (graph order).
Only formats with a narrower range than FP32 need it (FP16; BF16 has FP32's exponent range).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from mpcompile.core import ranges
from mpcompile.core.precision import LowPrecisionFormat

ONNX = ""
MICROSOFT = "com.microsoft"

GROWING_OPS: frozenset[tuple[str, str]] = frozenset(
    (ONNX, op) for op in ("Exp", "Pow", "Cosh", "Sinh", "ReduceSumSquare")
)

NORMALISING_OPS: frozenset[tuple[str, str]] = frozenset(
    {
        (ONNX, op)
        for op in (
            "LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization",
            "GroupNormalization", "InstanceNormalization", "LpNormalization",
            "MeanVarianceNormalization",
        )
    }
    | {
        (MICROSOFT, op)
        for op in (
            "LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
            "SkipSimplifiedLayerNormalization", "GroupNorm", "SkipGroupNorm",
        )
    }
)  # fmt: skip

BOUNDED_OPS: frozenset[tuple[str, str]] = frozenset(
    (ONNX, op)
    for op in (
        "Softmax", "LogSoftmax", "Hardmax", "Log", "ReduceLogSum", "ReduceLogSumExp", "Sqrt",
        "Reciprocal", "Sigmoid", "Tanh", "Erf", "Sign", "Softsign", "HardSigmoid", "Sin", "Cos",
        "Atan",
    )
)  # fmt: skip


# Div by at least this constant, or Mul by at most its inverse, brings values back (see above).
SCALE_BOUND = 2.0**15


def needed(low: LowPrecisionFormat) -> bool:
    """Whether the format's range is narrower than FP32's (FP16: yes; BF16: no)."""
    return low.max < float(np.finfo(np.float32).max) / 2


def grows_range(node: ir.Node) -> bool:
    """Whether a blocked ``node`` may produce values beyond the low-precision range."""
    key = (node.domain, node.op_type)
    if key not in GROWING_OPS:
        return False
    if key == (ONNX, "Pow") and len(node.inputs) > 1 and node.inputs[1] is not None:
        exponent = _constant_array(node.inputs[1])
        if exponent is not None and exponent.size and float(np.max(np.abs(exponent))) <= 1.0:
            return False
    return True


def brings_into_range(node: ir.Node, carrier: Callable[[int], bool], low: LowPrecisionFormat) -> bool:
    """Whether ``node``'s outputs are back in range although some inputs are not.

    ``carrier(index)``: whether input ``index`` carries a value that may be out of range.
    """
    key = (node.domain, node.op_type)
    if key in NORMALISING_OPS or key in BOUNDED_OPS:
        return True
    inputs = node.inputs
    if key == (ONNX, "Div") and len(inputs) == 2:
        if carrier(1):
            return True
        divisor = _constant_array(inputs[1]) if inputs[1] is not None else None
        return divisor is not None and divisor.size > 0 and float(np.min(np.abs(divisor))) >= SCALE_BOUND
    if key == (ONNX, "Mul") and len(inputs) == 2:
        for index in (0, 1):
            factor = _constant_array(inputs[index]) if inputs[index] is not None else None
            if (
                factor is not None
                and not carrier(index)
                and factor.size > 0
                and float(np.max(np.abs(factor))) <= 1.0 / SCALE_BOUND
            ):
                return True
        return False
    if key == (ONNX, "Clip"):
        bounds = [_constant_array(value) if value is not None else None for value in inputs[1:3]]
        return len(bounds) == 2 and all(
            bound is not None and bound.size > 0 and float(np.max(np.abs(bound))) <= low.max
            for bound in bounds
        )
    return False


# Larger constants are weights, not scale factors or bounds: not read (keeps the walk cheap).
_MAX_CONSTANT_SIZE = 4096


def _constant_array(value: ir.Value) -> np.ndarray | None:
    tensor = ranges.constant_tensor(value)
    if tensor is None or value.is_graph_input() or tensor.size > _MAX_CONSTANT_SIZE:
        return None
    array = tensor.numpy()
    return array if np.issubdtype(array.dtype, np.number) else None
