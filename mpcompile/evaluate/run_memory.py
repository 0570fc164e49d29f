"""How much memory a run that keeps every intermediate needs, estimated from shapes alone.

``--auto``'s reference run and ``report --numerics`` expose every main-graph value, so they hold
all of them at once: the estimate is the sum of the sizes of the inputs and of every node output
whose shape onnx shape inference makes static for the chosen input shapes. It is checked against
``mpcompile.evaluate.memory_limit`` before anything runs, so a model asking for a 20 GB
intermediate is refused in one line instead of exhausting the machine. Values whose shape stays
unknown count zero. A run holds each value more than once (ONNX Runtime's arena, the numpy copy
it returns, a candidate's run beside the reference), so the sum is multiplied by
``RUN_OVERHEAD``, measured: a Relu chain on 1.6 GB inputs peaked at about 3x the sum of its values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import onnx_ir as ir

from mpcompile.evaluate import memory_limit
from mpcompile.evaluate.shapes import infer_shapes, static_shape

RUN_OVERHEAD = 3


def values_bytes(model: ir.Model) -> int:
    """``RUN_OVERHEAD`` times the bytes of the main graph's inputs and node outputs that have a
    static shape and a dtype."""
    values = [*model.graph.inputs, *(value for node in model.graph for value in node.outputs)]
    return RUN_OVERHEAD * sum(_value_bytes(value) for value in values)


def run_bytes(model: ir.Model, input_shapes: Mapping[str, Sequence[int]]) -> int:
    """The estimate for ``model`` fed arrays of ``input_shapes`` (``model`` is not modified)."""
    probe = model.clone()
    for value in probe.graph.inputs:
        if value.name in input_shapes:
            value.shape = ir.Shape(list(input_shapes[value.name]))
    for node in probe.graph:  # forget the exporter's symbolic shapes: inference gives the real ones
        for value in node.outputs:
            if value not in probe.graph.outputs:
                value.shape = None
    infer_shapes(probe)
    return values_bytes(probe)


def check_run_fits(model: ir.Model, input_shapes: Mapping[str, Sequence[int]], what: str) -> None:
    """Refuse (``TooLargeError``, exit 17) a run whose estimate is above the memory limit."""
    if memory_limit.memory_limit() is None:
        return
    memory_limit.check_fits(run_bytes(model, input_shapes), what)


def _value_bytes(value: ir.Value) -> int:
    shape = static_shape(value)
    if shape is None or value.dtype is None:
        return 0
    try:
        itemsize = value.dtype.itemsize
    except (AttributeError, TypeError, ValueError):
        return 0
    return math.prod(max(dim, 0) for dim in shape) * math.ceil(itemsize)
