"""A BERT-style encoder as exported from PyTorch: the graph shape converters meet most often.

Embeddings (word + position, both via Gather), LayerNormalization (the ONNX op), multi-head
attention written out with MatMul/Reshape/Transpose/Div/Softmax and an additive mask
``(1 - mask) * mask_value``, an Erf-based GELU (Div, Erf, Add, Mul, Mul) and residuals.
Outputs ``last_hidden_state[batch, sequence, hidden]`` and ``pooler_output[batch, hidden]``.

``build()`` gives the tiny default (2 layers, hidden 64) as an ``onnx.ModelProto``; ``build_ir()``
gives an ``onnx_ir.Model`` whose weights can be generated lazily at save time, for the large
benchmark sizes (base 12x768, large 24x1024, xl 24x1536 with external data).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from models.builder import FLOAT, INT64, GraphBuilder

# The additive-mask constant PyTorch exports of Hugging Face models use: torch.finfo(float32).min.
FINFO_MIN_MASK = float(np.finfo(np.float32).min)  # -3.4028235e38
CLASSIC_MASK = -10000.0
MIN_OPSET = 17  # LayerNormalization is an ONNX op from opset 17


def build(**options: Any) -> onnx.ModelProto:
    """The encoder as an ``onnx.ModelProto`` with embedded weights (keep it under 2 GB).

    Takes the keyword arguments of :func:`build_ir` (its defaults are the tiny test encoder).
    """
    return ir.to_proto(build_ir(**options))


def build_ir(
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    ffn: int = 256,
    vocab: int = 1000,
    max_seq: int = 128,
    opset: int = 17,
    dynamic: bool = True,
    finfo_mask: bool = False,
    interleave_blocked: bool = False,
    seed: int = 0,
    lazy_weights: bool = False,
    blocked_ops: tuple[str, ...] = ("Pow",),
) -> ir.Model:
    """The encoder as an ``onnx_ir.Model``.

    ``finfo_mask`` uses -3.4028235e38 as the mask constant (Hugging Face's ``finfo.min``) instead
    of -10000. ``interleave_blocked`` puts a ``Pow(x, 1)`` (a precision-blocked op that leaves
    values unchanged) after every projection, so allowed and blocked ops alternate.
    ``lazy_weights`` generates each weight only when the model is serialized.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"bert_encoder needs opset >= {MIN_OPSET} (LayerNormalization), got {opset}")
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    if unknown := set(blocked_ops) - {"Pow", "Max"}:
        raise ValueError(f"blocked_ops: unsupported {sorted(unknown)}; use Pow and/or Max")
    g = GraphBuilder("bert_encoder", seed=seed)
    batch, seq = ("batch", "sequence") if dynamic else (1, max_seq)
    input_ids = g.input("input_ids", INT64, [batch, seq])
    attention_mask = g.input("attention_mask", INT64, [batch, seq])
    c = _Constants(g, hidden, heads, finfo_mask)
    lazy = lazy_weights

    with g.scope("embeddings"):
        words = g.op(
            "Gather", [g.weight("word_embeddings", [vocab, hidden], lazy=lazy), input_ids], {"axis": 0}
        )
        seq_len = g.op("Shape", [input_ids], {"start": 1, "end": 2})
        position_ids = g.op(
            "Slice",
            [g.const("position_ids", np.arange(max_seq, dtype=np.int64)[None, :]), c.zero, seq_len, c.one],
        )
        positions = g.op(
            "Gather", [g.weight("position_embeddings", [max_seq, hidden], lazy=lazy), position_ids]
        )
        x = _layer_norm(g, g.op("Add", [words, positions]), hidden)

    with g.scope("mask"):
        mask = g.op("Unsqueeze", [attention_mask, c.axes_1_2])
        mask = g.op("Cast", [mask], {"to": FLOAT})
        mask = g.op("Sub", [c.one_f, mask])
        additive_mask = g.op("Mul", [mask, c.mask_value])

    def projection(name: str, h: ir.Value, n_in: int, n_out: int) -> ir.Value:
        with g.scope(name):
            h = g.op("MatMul", [h, g.weight("weight", [n_in, n_out], lazy=lazy)])
            h = g.op("Add", [h, g.weight("bias", [n_out], lazy=lazy)])
            if interleave_blocked:
                for op in blocked_ops:
                    h = g.op("Pow", [h, c.one_f]) if op == "Pow" else g.op(op, [h, h])
        return h

    for layer in range(layers):
        with g.scope(f"layer{layer}"):
            with g.scope("attention"):
                q = g.op(
                    "Transpose",
                    [g.op("Reshape", [projection("query", x, hidden, hidden), c.split_heads])],
                    {"perm": [0, 2, 1, 3]},
                )
                k = g.op(
                    "Transpose",
                    [g.op("Reshape", [projection("key", x, hidden, hidden), c.split_heads])],
                    {"perm": [0, 2, 3, 1]},
                )
                v = g.op(
                    "Transpose",
                    [g.op("Reshape", [projection("value", x, hidden, hidden), c.split_heads])],
                    {"perm": [0, 2, 1, 3]},
                )
                scores = g.op("Div", [g.op("MatMul", [q, k]), c.sqrt_head_dim])
                probs = g.op("Softmax", [g.op("Add", [scores, additive_mask])], {"axis": -1})
                context = g.op("Transpose", [g.op("MatMul", [probs, v])], {"perm": [0, 2, 1, 3]})
                context = g.op("Reshape", [context, c.merge_heads])
                attn = projection("output", context, hidden, hidden)
                x = _layer_norm(g, g.op("Add", [attn, x]), hidden)
            with g.scope("ffn"):
                h = projection("intermediate", x, hidden, ffn)
                h = _gelu_erf(g, h, c)
                h = projection("output", h, ffn, hidden)
                x = _layer_norm(g, g.op("Add", [h, x]), hidden)

    g.output(x, FLOAT, [batch, seq, hidden], "last_hidden_state")
    with g.scope("pooler"):
        first = g.op("Gather", [x, c.zero_scalar], {"axis": 1})
        w = g.weight("dense.weight", [hidden, hidden], lazy=lazy)
        pooled = g.op(
            "Tanh", [g.op("Gemm", [first, w, g.weight("dense.bias", [hidden], lazy=lazy)], {"transB": 1})]
        )
    g.output(pooled, FLOAT, [batch, hidden], "pooler_output")
    doc = f"BERT-style encoder: layers={layers} hidden={hidden} heads={heads} ffn={ffn} vocab={vocab}"
    return g.ir_model(opset, doc=doc)


class _Constants:
    """Shape and scalar constants shared by all layers."""

    def __init__(self, g: GraphBuilder, hidden: int, heads: int, finfo_mask: bool) -> None:
        head_dim = hidden // heads
        self.zero = g.const("const.zero", [0], dtype=np.int64)
        self.one = g.const("const.one", [1], dtype=np.int64)
        self.zero_scalar = g.const("const.zero_scalar", 0, dtype=np.int64)
        self.axes_1_2 = g.const("const.axes_1_2", [1, 2], dtype=np.int64)
        self.split_heads = g.const("const.split_heads", [0, 0, heads, head_dim], dtype=np.int64)
        self.merge_heads = g.const("const.merge_heads", [0, 0, hidden], dtype=np.int64)
        self.one_f = g.const("const.one_f", 1.0, dtype=np.float32)
        self.half = g.const("const.half", 0.5, dtype=np.float32)
        self.sqrt2 = g.const("const.sqrt2", math.sqrt(2.0), dtype=np.float32)
        self.sqrt_head_dim = g.const("const.sqrt_head_dim", math.sqrt(head_dim), dtype=np.float32)
        mask_value = FINFO_MIN_MASK if finfo_mask else CLASSIC_MASK
        self.mask_value = g.const("const.mask_value", mask_value, dtype=np.float32)


def _layer_norm(g: GraphBuilder, x: ir.Value, hidden: int) -> ir.Value:
    with g.scope("LayerNorm"):
        gamma = g.const("weight", np.ones(hidden, dtype=np.float32))
        beta = g.const("bias", np.zeros(hidden, dtype=np.float32))
        return g.op("LayerNormalization", [x, gamma, beta], {"axis": -1, "epsilon": 1e-12})


def _gelu_erf(g: GraphBuilder, x: ir.Value, c: _Constants) -> ir.Value:
    """GELU as PyTorch exports it: x * 0.5 * (1 + erf(x / sqrt(2)))."""
    erf = g.op("Erf", [g.op("Div", [x, c.sqrt2])])
    return g.op("Mul", [g.op("Mul", [x, g.op("Add", [erf, c.one_f])]), c.half])
