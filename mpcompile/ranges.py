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
        if isinstance(tensor, ir.ExternalTensor):
            tensor.release()


def _measure_array(array: np.ndarray, low: LowPrecisionFormat) -> ConstantRange:
    if array.size == 0:
        return ConstantRange(0.0, 0, 0, 0, 0)
    magnitude = np.abs(array)
    finite = np.isfinite(magnitude)
    max_abs = float(magnitude[finite].max()) if finite.any() else 0.0
    overflow_mask = finite & (magnitude >= low.overflow_threshold)
    overflowing = int(np.count_nonzero(overflow_mask))
    overflowing_positive = int(np.count_nonzero(overflow_mask & (array > 0)))
    flushed = int(np.count_nonzero((magnitude > 0) & (magnitude <= low.smallest_subnormal / 2)))
    subnormal = int(np.count_nonzero((magnitude > low.smallest_subnormal / 2) & (magnitude < low.tiny)))
    return ConstantRange(max_abs, overflowing, overflowing_positive, flushed, subnormal)
