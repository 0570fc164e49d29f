"""Precisions a node can be assigned and the numeric limits of the low-precision types."""

from __future__ import annotations

import dataclasses
import enum
import math

import ml_dtypes
import numpy as np
import onnx_ir as ir


class Precision(str, enum.Enum):
    """The precision a node computes in, as stamped into ``mpcompile.precision``."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    NONE = "n/a"  # the node touches no floating-point data

    @property
    def dtype(self) -> ir.DataType:
        return _PRECISION_DTYPE[self]

    @property
    def is_low(self) -> bool:
        return self in (Precision.FP16, Precision.BF16)

    @classmethod
    def of_dtype(cls, dtype: ir.DataType | None) -> Precision:
        for precision, candidate in _PRECISION_DTYPE.items():
            if candidate == dtype:
                return precision
        return cls.NONE


_PRECISION_DTYPE = {
    Precision.FP32: ir.DataType.FLOAT,
    Precision.FP16: ir.DataType.FLOAT16,
    Precision.BF16: ir.DataType.BFLOAT16,
    Precision.NONE: ir.DataType.UNDEFINED,
}


@dataclasses.dataclass(frozen=True)
class LowPrecisionFormat:
    """Numeric facts about a low-precision type, used for range checks and conversion."""

    precision: Precision
    numpy_dtype: np.dtype
    max: float  # largest finite value
    tiny: float  # smallest positive normal
    smallest_subnormal: float
    mantissa_bits: int
    min_opset: int  # first ai.onnx opset whose Cast accepts the type

    @property
    def dtype(self) -> ir.DataType:
        return self.precision.dtype

    @property
    def overflow_threshold(self) -> float:
        """Magnitudes at or above this round to infinity (round-to-nearest-even)."""
        spacing_at_max = 2.0 ** (math.floor(math.log2(self.max)) - self.mantissa_bits)
        return self.max + spacing_at_max / 2


def _format(precision: Precision, numpy_dtype, min_opset: int) -> LowPrecisionFormat:
    info = ml_dtypes.finfo(numpy_dtype)
    return LowPrecisionFormat(
        precision=precision,
        numpy_dtype=np.dtype(numpy_dtype),
        max=float(info.max),
        tiny=float(info.tiny),
        smallest_subnormal=float(info.smallest_subnormal),
        mantissa_bits=int(info.nmant),
        min_opset=min_opset,
    )


FP16 = _format(Precision.FP16, np.float16, min_opset=6)
BF16 = _format(Precision.BF16, ml_dtypes.bfloat16, min_opset=13)

LOW_PRECISION_FORMATS = {"fp16": FP16, "bf16": BF16}
DEFAULT_LOW_PRECISION = "fp16"


def low_precision_format(name: str) -> LowPrecisionFormat:
    """Return the format for ``"fp16"`` or ``"bf16"``."""
    try:
        return LOW_PRECISION_FORMATS[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown precision {name!r}; expected one of {sorted(LOW_PRECISION_FORMATS)}"
        ) from None
