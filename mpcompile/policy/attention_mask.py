"""The attention-mask rule: which out-of-range constants may be clamped instead of keeping FP32.

A float constant whose only out-of-range values are huge negatives (``-1e9``, ``finfo.min``)
and that reaches a Softmax through element-wise and data-movement ops only (``MASK_PATH_OPS``,
at most ``MASK_SEARCH_DEPTH`` ops deep, each a follow or pass-through op of the policy, none
producing a graph output) is an additive attention mask. Clamping it to the low-precision limit
keeps the Softmax result (exp underflows to 0 either way), so the range rule
(``classification.NodeRules.eligibility``) lets its readers go low, and ConvertConstantsPass
clamps it when one of those Softmaxes runs in low precision.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir

from mpcompile.core.ranges import ConstantRange

# How far a huge negative constant may travel through element-wise ops to a Softmax
# and still count as an attention mask that can be clamped to the low-precision limit.
MASK_SEARCH_DEPTH = 6
# The ops a mask may pass through on its way to the Softmax (ai.onnx).
MASK_PATH_OPS = frozenset(
    {
        "Add",
        "Sub",
        "Mul",
        "Where",
        "Cast",
        "Expand",
        "Reshape",
        "Unsqueeze",
        "Squeeze",
        "Concat",
        "Tile",
        "Transpose",
        "Slice",
        "Identity",
        "Min",
        "Max",
        "Gather",
    }
)


def mask_softmaxes(
    value: ir.Value, measured: ConstantRange, follows_low: Callable[[ir.Node], bool]
) -> list[ir.Node]:
    """The Softmax nodes the constant ``value`` reaches as an additive attention mask, or ``[]``
    when it is not one. ``follows_low(node)``: whether the policy classes ``node`` follow or
    pass-through (a mask only travels through ops that follow their inputs' precision)."""
    if measured.overflowing_positive:
        return []
    frontier = [(use.node, 0) for use in value.uses()]
    seen: set[ir.Node] = set()
    softmaxes: list[ir.Node] = []
    while frontier:
        node, depth = frontier.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.domain == "" and node.op_type == "Softmax":
            softmaxes.append(node)
            continue
        if depth >= MASK_SEARCH_DEPTH or not follows_low(node) or node.op_type not in MASK_PATH_OPS:
            return []
        for output in node.outputs:
            if output.is_graph_output():
                return []
            frontier.extend((use.node, depth + 1) for use in output.uses())
    return softmaxes
