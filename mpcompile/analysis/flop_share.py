"""How much of a converted model's heavy arithmetic runs in low precision, and the note when a
conversion mode leaves more of it FP32 than a plain conversion does.

Heavy FLOPs are those of ``flops.HEAVY_OPS`` (MatMul, Gemm, Conv, attention and their fused
forms), counted as ``mpcompile report`` counts them: symbolic input dims resolved as the report
does by default, then onnx shape inference. A node's precision is its stamped decision.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import onnx_ir as ir

from mpcompile.analysis import flops as flops_mod
from mpcompile.analysis.audit import derive_precision
from mpcompile.core.plan import Decision, read_decision
from mpcompile.evaluate.shapes import ShapeSpec, infer_shapes, resolve_input_shapes
from mpcompile.irtools.graphs import model_graphs

# A mode's FP32 share may exceed plain convert's by this much before it is noted: folding
# BatchNormalization into a Conv adds the bias FLOPs, which moves shares by far less.
SHARE_TOLERANCE = 0.005
_LOW = ("fp16", "bf16")


@dataclasses.dataclass(frozen=True)
class HeavyFlops:
    """Heavy FLOPs of one converted model by precision; ``fp32_unknown``: FP32 heavy nodes
    without static shapes (after an op onnx's inference stops at, such as ``FusedConv``)."""

    low: int
    fp32: int
    fp32_unknown: int

    @property
    def fp32_share(self) -> float:
        total = self.low + self.fp32
        return self.fp32 / total if total else 0.0


def heavy_flops(model: ir.Model) -> HeavyFlops:
    """The heavy FLOPs of a converted ``model`` by precision (the model is not modified)."""
    low = fp32 = fp32_unknown = 0
    for precision, count, _reason in _heavy_nodes(model):
        if count is None:
            fp32_unknown += precision == "fp32"
        elif precision in _LOW:
            low += count
        elif precision == "fp32":
            fp32 += count
    return HeavyFlops(low, fp32, fp32_unknown)


def heavy_fp32_reasons(model: ir.Model) -> dict[str, int]:
    """FLOPs of the FP32 heavy nodes of a converted ``model`` by their stamped reason code
    (``unknown`` where none is stamped), largest first."""
    by_reason: dict[str, int] = {}
    for precision, count, reason in _heavy_nodes(model):
        if precision == "fp32" and count:
            by_reason[reason] = by_reason.get(reason, 0) + count
    return dict(sorted(by_reason.items(), key=lambda item: (-item[1], item[0])))


def _heavy_nodes(model: ir.Model) -> Iterator[tuple[str, int | None, str]]:
    """(precision, FLOPs or None, reason) of each heavy node, shapes resolved as the report does."""
    work = model.clone()
    resolve_input_shapes(work, ShapeSpec.parse(None))
    infer_shapes(work)
    for graph in model_graphs(work):
        for node in graph:
            if not is_heavy(node):
                continue
            decision = read_decision(node)
            count, _method = flops_mod.estimate_flops(node)
            yield _precision(node, decision), count, decision.reason if decision is not None else "unknown"


def is_heavy(node: ir.Node) -> bool:
    """Whether ``node`` is one whose FLOPs count as heavy (``flops.HEAVY_OPS``)."""
    return (node.domain if node.domain != "ai.onnx" else "", node.op_type) in flops_mod.HEAVY_OPS


def _precision(node: ir.Node, decision: Decision | None) -> str:
    """``fp32``, ``fp16``, ... : the node's stamped ``decision``, else what its dtypes say."""
    return decision.precision.value if decision is not None else derive_precision(node)


def has_fp32_heavy_nodes(model: ir.Model) -> bool:
    """Whether a heavy node of any graph runs in FP32 (no copy, no shape inference): without
    one, ``heavy_flops(model).fp32`` is 0."""
    return any(
        is_heavy(node) and _precision(node, read_decision(node)) == "fp32"
        for graph in model_graphs(model)
        for node in graph
    )


def more_fp32_note(mode: str, converted: HeavyFlops, plain: HeavyFlops) -> str | None:
    """The note for a ``mode`` whose conversion keeps more heavy FLOPs FP32 than plain convert's.

    Nothing to compare when plain convert runs no heavy FLOPs in low precision (``--target cpu``
    for FP16). FP32 heavy nodes whose FLOPs are unknown count against the mode when it has more
    of them than plain convert.
    """
    if plain.low == 0:
        return None
    more_unknown = converted.fp32_unknown > plain.fp32_unknown
    if converted.fp32_share <= plain.fp32_share + SHARE_TOLERANCE and not more_unknown:
        return None
    unknown = (
        f" plus {converted.fp32_unknown} FP32 heavy node(s) whose FLOPs are unknown"
        f" (plain convert: {plain.fp32_unknown})"
        if more_unknown
        else ""
    )
    return (
        f"{mode} leaves more heavy FLOPs (MatMul/Gemm/Conv/attention) in FP32 than a plain conversion: "
        f"{converted.fp32_share:.1%} of them vs {plain.fp32_share:.1%}{unknown}; "
        "`mpcompile report` on the output lists the FP32 nodes and their reasons"
    )
