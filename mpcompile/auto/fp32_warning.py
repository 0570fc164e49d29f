"""The warning for an ``--auto`` answer that keeps most of the heavy arithmetic in FP32.

A search can end with exit 0 and most MatMul/Gemm/Conv FLOPs FP32, which gains little over the
FP32 model. More than ``FP32_SHARE_LIMIT`` (half) of the heavy FLOPs (``analysis.flop_share``)
kept FP32 gets one warning line naming the reasons that keep them and what to try.
"""

from __future__ import annotations

import onnx_ir as ir

from mpcompile.analysis.flop_share import has_fp32_heavy_nodes, heavy_flops, heavy_fp32_reasons
from mpcompile.auto.criteria import Criterion
from mpcompile.auto.reasons import AUTO_RANGE, AUTO_SENSITIVITY

FP32_SHARE_LIMIT = 0.5
_SHOWN_REASONS = 3


def fp32_heavy_warning(model: ir.Model, criterion: Criterion, *, budget_spent: bool) -> str | None:
    """The warning for the converted ``model`` when more than half of its heavy FLOPs are FP32,
    else None. ``budget_spent``: the search stopped because the budget ran out. A model without
    FP32 heavy nodes has no such FLOPs: it is not copied and shape-inferred to count them."""
    if not has_fp32_heavy_nodes(model):
        return None
    heavy = heavy_flops(model)
    if heavy.low + heavy.fp32 == 0 or heavy.fp32_share <= FP32_SHARE_LIMIT:
        return None
    total = heavy.low + heavy.fp32
    reasons = heavy_fp32_reasons(model)
    listed = ", ".join(
        f"{reason} {count / total:.1%}" for reason, count in list(reasons.items())[:_SHOWN_REASONS]
    )
    top = next(iter(reasons), "")
    return (
        f"--auto keeps {heavy.fp32_share:.1%} of the heavy FLOPs (MatMul/Gemm/Conv/attention) in FP32 "
        f"({listed}): {_why(top, criterion, budget_spent)}"
    )


def _why(reason: str, criterion: Criterion, budget_spent: bool) -> str:
    if reason == AUTO_SENSITIVITY:
        text = f"the outputs miss {criterion.describe()} with them in low precision"
        if criterion.metric is None:
            text += (
                "; a per-element tolerance is strict where outputs are large, "
                "--metric cosine:0.999 judges each output as a whole"
            )
        if budget_spent:
            text += "; the search spent its whole budget (a larger --budget may free more)"
        return text
    if reason == AUTO_RANGE:
        return (
            "their FP32 reference values overflow or underflow FP16 on these inputs; "
            "representative --inputs may show smaller ranges"
        )
    if reason.startswith("no-kernel:"):
        return "the target's execution provider has no low-precision kernel for them (see --target)"
    if reason.startswith("user-") or reason in ("block", "block-propagated"):
        return "the policy keeps them FP32 (block lists, --block-op, --block-node)"
    return f"their precision decision is {reason!r} (`mpcompile report` lists the nodes)"
