"""Small, safe mutations of IR values."""

from __future__ import annotations

import onnx_ir as ir


def set_dtype(value: ir.Value, dtype: ir.DataType | None) -> None:
    """Give ``value`` a new element type without mutating a type object it may share.

    ``ir.Model.clone()`` shares type objects between the copies, so assigning
    ``value.dtype`` would also retype the original model; assigning a fresh
    ``TensorType`` does not.
    """
    value.type = None if dtype is None else ir.TensorType(dtype)
