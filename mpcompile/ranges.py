"""Value-range facts about constants, for range checks and conversion statistics."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from mpcompile.precision import LowPrecisionFormat


@dataclasses.dataclass(frozen=True)
class ConstantRange:
    """Range of a float constant measured against a low-precision format."""

    max_abs: float  # largest finite magnitude
    overflowing: int  # finite values that would round to +-inf
    overflowing_positive: int
    flushed_to_zero: int  # nonzero values that would round to zero
    subnormal: int  # values that would become subnormal

    @property
    def in_range(self) -> bool:
        return self.overflowing == 0


def constant_tensor(value: ir.Value) -> ir.TensorProtocol | None:
    """The tensor behind an initializer value or a Constant node's output, if any."""
    if value.const_value is not None:
        return value.const_value
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain == "":
        attr = producer.attributes.get("value")
        if attr is not None and attr.type == ir.AttributeType.TENSOR:
            return attr.as_tensor()
    return None


def measure(tensor: ir.TensorProtocol, low: LowPrecisionFormat) -> ConstantRange:
    """Scan a float tensor once; external tensors are released afterwards."""
    array = np.asarray(tensor.numpy(), dtype=np.float32).reshape(-1)
    try:
        return _measure_array(array, low)
    finally:
        del array  # a view of the mapped file: unmapping while it lives raises BufferError
        if isinstance(tensor, ir.ExternalTensor):
            tensor.release()


def _measure_array(array: np.ndarray, low: LowPrecisionFormat) -> ConstantRange:
    if array.size == 0:
        return ConstantRange(0.0, 0, 0, 0, 0)
    magnitude = np.abs(array)
    max_abs = float(magnitude.max())
    if not np.isfinite(max_abs):  # inf or nan present: measure the finite values only
        finite = magnitude[np.isfinite(magnitude)]
        max_abs = float(finite.max()) if finite.size else 0.0
    overflowing = overflowing_positive = 0
    if max_abs >= low.overflow_threshold:  # rare: count only when something overflows
        overflow_mask = np.isfinite(magnitude) & (magnitude >= low.overflow_threshold)
        overflowing = int(np.count_nonzero(overflow_mask))
        overflowing_positive = int(np.count_nonzero(overflow_mask & (array > 0)))
    flushed = subnormal = 0
    below_normal = magnitude[magnitude < low.tiny]  # usually few values: count on the subset
    if below_normal.size:
        nonzero = below_normal[below_normal > 0]
        flushed = int(np.count_nonzero(nonzero <= low.smallest_subnormal / 2))
        subnormal = int(nonzero.size) - flushed
    return ConstantRange(max_abs, overflowing, overflowing_positive, flushed, subnormal)
