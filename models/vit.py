"""A ViT-style encoder as exported from PyTorch: patch Conv, class token, pre-norm residual blocks.

Patch embedding (Conv with stride = patch, Reshape, Transpose), a class token Concat'ed in front,
learned position embeddings Added, then pre-norm blocks ``x + attn(LN(x))`` and
``x + mlp(LN(x))`` with LayerNormalization (the ONNX op), attention written out with
MatMul/Reshape/Transpose/Softmax (no mask) and an Erf GELU, and a final LayerNorm + Gemm head on
the class token. Pre-norm is what makes ORT's SkipLayerNormalization use its fourth output (the
residual sum ``input + skip``): the next block reads it.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir

from models.builder import FLOAT, GraphBuilder


def build(
    image_size: int = 32,
    patch: int = 8,
    layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    mlp: int = 64,
    num_classes: int = 10,
    opset: int = 17,
) -> onnx.ModelProto:
    """The encoder as an ``onnx.ModelProto`` (input ``pixel_values[batch, 3, H, W]``, output ``logits``)."""
    g = GraphBuilder("vit")
    tokens = (image_size // patch) ** 2 + 1
    head_dim = hidden // heads
    x = g.input("pixel_values", FLOAT, ["batch", 3, image_size, image_size])
    split_heads = g.const("const.split_heads", [0, 0, heads, head_dim], dtype=np.int64)
    merge_heads = g.const("const.merge_heads", [0, 0, hidden], dtype=np.int64)
    with g.scope("embeddings"):
        w = g.weight("patch.weight", [hidden, 3, patch, patch], scale=0.1)
        h = g.op("Conv", [x, w, g.weight("patch.bias", [hidden])], {"strides": [patch, patch]})
        h = g.op("Reshape", [h, g.const("flat", [0, hidden, -1], dtype=np.int64)])
        h = g.op("Transpose", [h], {"perm": [0, 2, 1]})
        batch = g.op("Shape", [x], {"start": 0, "end": 1})
        cls_shape = g.op("Concat", [batch, g.const("cls_tail", [1, hidden], dtype=np.int64)], {"axis": 0})
        cls = g.op("Expand", [g.weight("cls_token", [1, 1, hidden], scale=0.5), cls_shape])
        h = g.op("Concat", [cls, h], {"axis": 1})
        h = g.op("Add", [h, g.weight("position_embeddings", [1, tokens, hidden], scale=0.5)])
    for layer in range(layers):
        with g.scope(f"layer{layer}"):
            with g.scope("attention"):
                n = _layer_norm(g, h, hidden)
                q, k, v = (
                    g.op(
                        "Transpose",
                        [g.op("Reshape", [_linear(g, name, n, hidden, hidden), split_heads])],
                        {"perm": perm},
                    )
                    for name, perm in (
                        ("query", [0, 2, 1, 3]),
                        ("key", [0, 2, 3, 1]),
                        ("value", [0, 2, 1, 3]),
                    )
                )
                scale = g.const("scale", 1.0 / math.sqrt(head_dim), dtype=np.float32)
                scores = g.op("Mul", [g.op("MatMul", [q, k]), scale])
                probs = g.op("Softmax", [scores], {"axis": -1})
                context = g.op("Transpose", [g.op("MatMul", [probs, v])], {"perm": [0, 2, 1, 3]})
                context = g.op("Reshape", [context, merge_heads])
                h = g.op("Add", [h, _linear(g, "output", context, hidden, hidden)])
            with g.scope("mlp"):
                n = _layer_norm(g, h, hidden)
                m = _gelu_erf(g, _linear(g, "fc1", n, hidden, mlp))
                h = g.op("Add", [h, _linear(g, "fc2", m, mlp, hidden)])
    with g.scope("head"):
        h = _layer_norm(g, h, hidden)
        first = g.op("Gather", [h, g.const("zero", 0, dtype=np.int64)], {"axis": 1})
        w = g.weight("weight", [num_classes, hidden], scale=0.2)
        logits = g.op("Gemm", [first, w, g.weight("bias", [num_classes])], {"transB": 1})
    g.output(logits, FLOAT, ["batch", num_classes], "logits")
    return g.model(opset, doc=f"ViT-style encoder: layers={layers} hidden={hidden} heads={heads}")


def _linear(g: GraphBuilder, name: str, x: ir.Value, n_in: int, n_out: int) -> ir.Value:
    with g.scope(name):
        h = g.op("MatMul", [x, g.weight("weight", [n_in, n_out], scale=1.0 / math.sqrt(n_in))])
        return g.op("Add", [h, g.weight("bias", [n_out])])


def _layer_norm(g: GraphBuilder, x: ir.Value, hidden: int) -> ir.Value:
    with g.scope("LayerNorm"):
        rng = np.random.default_rng(len(g.scoped("weight")))
        gamma = g.const("weight", 1.0 + 0.1 * rng.standard_normal(hidden), dtype=np.float32)
        return g.op(
            "LayerNormalization",
            [x, gamma, g.weight("bias", [hidden], scale=0.1)],
            {"axis": -1, "epsilon": 1e-6},
        )


def _gelu_erf(g: GraphBuilder, x: ir.Value) -> ir.Value:
    """GELU as PyTorch exports it: x * 0.5 * (1 + erf(x / sqrt(2)))."""
    with g.scope("gelu"):
        erf = g.op("Erf", [g.op("Div", [x, g.const("sqrt2", math.sqrt(2.0), dtype=np.float32)])])
        one = g.const("one", 1.0, dtype=np.float32)
        return g.op(
            "Mul", [g.op("Mul", [x, g.op("Add", [erf, one])]), g.const("half", 0.5, dtype=np.float32)]
        )
