"""Small helpers over IR values: safe mutations and forward walks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import onnx_ir as ir


def set_dtype(value: ir.Value, dtype: ir.DataType | None) -> None:
    """Give ``value`` a new element type without mutating a type object it may share.

    ``ir.Model.clone()`` shares type objects between the copies, so assigning
    ``value.dtype`` would also retype the original model; assigning a fresh
    ``TensorType`` does not.
    """
    value.type = None if dtype is None else ir.TensorType(dtype)


def forward_uses(start: Iterable[ir.Value], follow: Callable[[Any], bool]) -> Iterator[Any]:
    """Every use (``node``, ``idx``) of the ``start`` values and, where ``follow(use)`` accepts a
    use, of that node's outputs in turn: a forward walk that visits each value once."""
    pending, seen = list(start), set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for use in current.uses():
            yield use
            if follow(use):
                pending.extend(use.node.outputs)
