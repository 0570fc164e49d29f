"""Estimated floating-point operations per node, from inferred static shapes.

Counts are for one inference and one pass through each subgraph (a Loop body is counted
once). A multiply-add is two FLOPs.

* MatMul / Gemm / FusedMatMul: ``2·M·K·N`` per batch (+ ``M·N`` for Gemm's bias);
* Conv: ``2 · output elements · (C_in/group · kernel size)`` (+ output elements for a bias);
* ConvTranspose: ``2 · input elements · (C_out/group · kernel size)``;
* Attention (ai.onnx, com.microsoft MultiHeadAttention / Attention):
  ``2·B·S_q·S_kv·(D_qk + D_v)`` plus the input projection of com.microsoft Attention;
* data-movement ops (Reshape, Transpose, Gather, Concat ...) and Casts cost 0 (Cast traffic is
  reported separately, in bytes);
* every other op: the element count of its largest input or output.

When a needed shape is not static, the estimate is ``None`` ("unknown").
"""

from __future__ import annotations

import math

import onnx_ir as ir

from mpcompile.evaluate.shapes import element_count, static_shape

# Ops that only move or describe data: no arithmetic.
ZERO_COST_OPS = frozenset(
    {
        "Reshape",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "Identity",
        "Shape",
        "Size",
        "Constant",
        "ConstantOfShape",
        "Transpose",
        "Gather",
        "GatherElements",
        "GatherND",
        "Slice",
        "Concat",
        "Split",
        "Expand",
        "Tile",
        "Pad",
        "If",
        "Loop",
        "Scan",
        "Dropout",
        "DepthToSpace",
        "SpaceToDepth",
        "Cast",  # conversion cost is reported as bytes moved through Casts
        "CastLike",
    }
)

METHOD_SHAPE = "shape"  # from the op's arithmetic
METHOD_ELEMENTS = "elements"  # element count
METHOD_ZERO = "zero"  # data movement
METHOD_UNKNOWN = "unknown"  # shapes not static


def estimate_flops(node: ir.Node) -> tuple[int | None, str]:
    """Return (FLOPs or None, method) for one node with inferred shapes."""
    op = node.op_type
    if node.domain in ("", "ai.onnx") and op in ZERO_COST_OPS:
        return 0, METHOD_ZERO
    estimator = _SHAPE_ESTIMATORS.get((_domain(node.domain), op))
    if estimator is not None:
        flops = estimator(node)
        return (flops, METHOD_SHAPE) if flops is not None else (None, METHOD_UNKNOWN)
    counts = [element_count(v) for v in [*node.inputs, *node.outputs] if v is not None]
    if not counts or any(c is None for c in counts):
        return None, METHOD_UNKNOWN
    return max(counts), METHOD_ELEMENTS  # type: ignore[type-var]


def _domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index else None


def _matmul(node: ir.Node) -> int | None:
    a, out = static_shape(_input(node, 0)), static_shape(node.outputs[0])
    if a is None or out is None or not a:
        return None
    return 2 * math.prod(out) * a[-1]


def _gemm(node: ir.Node) -> int | None:
    a, out = static_shape(_input(node, 0)), static_shape(node.outputs[0])
    if a is None or out is None or len(a) != 2:
        return None
    trans_a = node.attributes.get("transA")
    k = a[0] if trans_a is not None and trans_a.as_int() else a[1]
    flops = 2 * math.prod(out) * k
    if _input(node, 2) is not None:
        flops += math.prod(out)
    return flops


def _conv(node: ir.Node) -> int | None:
    weight, out = static_shape(_input(node, 1)), static_shape(node.outputs[0])
    if weight is None or out is None:
        return None
    out_elements = math.prod(out)
    flops = 2 * out_elements * math.prod(weight[1:])
    if _input(node, 2) is not None:
        flops += out_elements
    return flops


def _conv_transpose(node: ir.Node) -> int | None:
    x, weight = static_shape(_input(node, 0)), static_shape(_input(node, 1))
    if x is None or weight is None:
        return None
    flops = 2 * math.prod(x) * math.prod(weight[1:])
    if _input(node, 2) is not None:
        out = static_shape(node.outputs[0])
        if out is None:
            return None
        flops += math.prod(out)
    return flops


def _heads_layout(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(batch, sequence, total head width) of a 3-D [B, S, D] or 4-D [B, H, S, d] tensor."""
    if len(shape) == 4:
        return shape[0], shape[2], shape[1] * shape[3]
    return shape[0], shape[1], shape[2]


def _attention_core(q: tuple[int, ...], k: tuple[int, ...], v: tuple[int, ...]) -> int | None:
    if len(q) not in (3, 4) or len(k) not in (3, 4) or len(v) not in (3, 4):
        return None
    batch, seq_q, width_qk = _heads_layout(q)
    _, seq_kv, _ = _heads_layout(k)
    _, _, width_v = _heads_layout(v)
    return 2 * batch * seq_q * seq_kv * (width_qk + width_v)


def _attention(node: ir.Node) -> int | None:
    """ai.onnx Attention (opset 23) and com.microsoft MultiHeadAttention: Q, K, V inputs."""
    q, k, v = (static_shape(_input(node, i)) for i in range(3))
    if q is None or k is None or v is None:
        return None
    return _attention_core(q, k, v)


def _ms_attention(node: ir.Node) -> int | None:
    """com.microsoft Attention: X[B,S,In] · W[In, 3·D] projection, then attention over D."""
    x, weight = static_shape(_input(node, 0)), static_shape(_input(node, 1))
    if x is None or weight is None or len(x) != 3 or len(weight) != 2:
        return None
    batch, seq, _ = x
    projection = 2 * batch * seq * weight[0] * weight[1]
    width = weight[1] // 3
    return projection + 2 * batch * seq * seq * 2 * width


_SHAPE_ESTIMATORS = {
    ("", "MatMul"): _matmul,
    ("", "MatMulInteger"): _matmul,
    ("com.microsoft", "FusedMatMul"): _matmul,
    ("", "Gemm"): _gemm,
    ("", "Conv"): _conv,
    ("com.microsoft", "FusedConv"): _conv,
    ("", "ConvTranspose"): _conv_transpose,
    ("", "Attention"): _attention,
    ("com.microsoft", "MultiHeadAttention"): _attention,
    ("com.microsoft", "Attention"): _ms_attention,
}

# Ops whose FLOPs come from their arithmetic (matrix products, convolutions, attention): the
# "heavy" FLOPs a precision choice is judged by (``analysis.flop_share``).
HEAVY_OPS = frozenset(_SHAPE_ESTIMATORS)
