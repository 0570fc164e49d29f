"""The integer-cast rule: when a Cast from integers or bool to float starts a low-precision path.

Plain convert keeps such a Cast's output FP32 where nothing low-precision reads it: the Cast is
an FP32 source like a graph input. With ``measured_casts`` (``convert --auto``, main graph only)
it starts low-precision paths as a node that reads only weights does: its output may go straight
to FP16/BF16. That is exact only for small integers (up to 2048 in FP16), so --auto's range
rules (``mpcompile.analysis.range_rules``) keep FP32 every such Cast whose measured values are not
a 0/1 mask. The painter (``passes/assign_precision.py``) notes the rule as ``INTEGER_SOURCE``.
"""

from __future__ import annotations

import onnx_ir as ir

INTEGER_SOURCE = "integer source (measured_casts)"  # appended to the rule of such a Cast


def casts_integers_to_float(node: ir.Node) -> bool:
    """A Cast (or CastLike) from a non-float type to FLOAT."""
    source = node.inputs[0] if node.inputs else None
    return (
        node.domain == ""
        and node.op_type in ("Cast", "CastLike")
        and source is not None
        and source.dtype is not None
        and not source.dtype.is_floating_point()
        and node.outputs[0].dtype == ir.DataType.FLOAT
    )


def starts_low_path(node: ir.Node, *, measured_casts: bool, measured: bool) -> bool:
    """Whether ``node`` (a node without float inputs) starts low-precision paths: a Cast from
    integers to float, with ``measured_casts``, in a graph whose values --auto measured."""
    return measured and measured_casts and casts_integers_to_float(node)
