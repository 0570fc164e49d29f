"""A GPT-2-style decoder: pre-LayerNorm blocks with causal self-attention and a tanh-GELU MLP, plus an LM head."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir

from models.builder import FLOAT, INT64, GraphBuilder

MIN_OPSET = 17  # LayerNormalization


def build(
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    vocab: int = 512,
    max_seq: int = 64,
    opset: int = 17,
    seed: int = 0,
) -> onnx.ModelProto:
    """Decoder with input ``input_ids[batch, sequence]`` and output ``logits[batch, sequence, vocab]``.

    The causal mask is a constant lower-triangular boolean matrix sliced to the sequence length
    and applied with ``Where(mask, scores, -10000)`` as GPT-2 exports do; GELU is the tanh
    approximation ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` with a ``Pow``.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"gpt_block needs opset >= {MIN_OPSET} (LayerNormalization), got {opset}")
    head_dim = hidden // heads
    g = GraphBuilder("gpt_block", seed=seed)
    input_ids = g.input("input_ids", INT64, ["batch", "sequence"])
    zero = g.const("const.zero", [0], dtype=np.int64)
    axes_2_3 = g.const("const.axes_2_3", [2, 3], dtype=np.int64)
    split_heads = g.const("const.split_heads", [0, 0, heads, head_dim], dtype=np.int64)
    merge_heads = g.const("const.merge_heads", [0, 0, hidden], dtype=np.int64)
    scale = g.const("const.sqrt_head_dim", math.sqrt(head_dim), dtype=np.float32)
    masked_score = g.const("const.masked_score", -10000.0, dtype=np.float32)
    causal = g.const("const.causal_mask", np.tril(np.ones((max_seq, max_seq), dtype=bool))[None, None])
    gelu_c = {
        "half": g.const("const.half", 0.5, dtype=np.float32),
        "one": g.const("const.one_f", 1.0, dtype=np.float32),
        "three": g.const("const.three", 3.0, dtype=np.float32),
        "coeff": g.const("const.gelu_coeff", 0.044715, dtype=np.float32),
        "sqrt_2_over_pi": g.const("const.sqrt_2_over_pi", math.sqrt(2.0 / math.pi), dtype=np.float32),
    }

    with g.scope("embeddings"):
        seq_len = g.op("Shape", [input_ids], {"start": 1, "end": 2})
        tokens = g.op("Gather", [g.weight("wte", [vocab, hidden]), input_ids])
        position_ids = g.op(
            "Range",
            [
                g.const("start", 0, dtype=np.int64),
                g.op("Squeeze", [seq_len, zero]),
                g.const("delta", 1, dtype=np.int64),
            ],
        )
        positions = g.op("Gather", [g.weight("wpe", [max_seq, hidden]), position_ids])
        x = g.op("Add", [tokens, positions])
    with g.scope("mask"):
        ends = g.op("Concat", [seq_len, seq_len], {"axis": 0})
        mask = g.op("Slice", [causal, g.const("starts", [0, 0], dtype=np.int64), ends, axes_2_3])

    def linear(name: str, h: ir.Value, n_in: int, n_out: int) -> ir.Value:
        with g.scope(name):
            h = g.op("MatMul", [h, g.weight("weight", [n_in, n_out])])
            return g.op("Add", [h, g.weight("bias", [n_out])])

    def layer_norm(name: str, h: ir.Value) -> ir.Value:
        with g.scope(name):
            gamma = g.const("weight", np.ones(hidden, dtype=np.float32))
            beta = g.const("bias", np.zeros(hidden, dtype=np.float32))
            return g.op("LayerNormalization", [h, gamma, beta], {"axis": -1, "epsilon": 1e-5})

    for layer in range(layers):
        with g.scope(f"h{layer}"):
            with g.scope("attn"):
                h = layer_norm("ln_1", x)
                qkv = linear("c_attn", h, hidden, 3 * hidden)
                q, k, v = g.op_multi(
                    "Split", [qkv, g.const("split", [hidden] * 3, dtype=np.int64)], {"axis": 2}, outputs=3
                )
                q = g.op("Transpose", [g.op("Reshape", [q, split_heads])], {"perm": [0, 2, 1, 3]})
                k = g.op("Transpose", [g.op("Reshape", [k, split_heads])], {"perm": [0, 2, 3, 1]})
                v = g.op("Transpose", [g.op("Reshape", [v, split_heads])], {"perm": [0, 2, 1, 3]})
                scores = g.op("Div", [g.op("MatMul", [q, k]), scale])
                scores = g.op("Where", [mask, scores, masked_score])
                probs = g.op("Softmax", [scores], {"axis": -1})
                context = g.op("Transpose", [g.op("MatMul", [probs, v])], {"perm": [0, 2, 1, 3]})
                context = g.op("Reshape", [context, merge_heads])
                x = g.op("Add", [x, linear("c_proj", context, hidden, hidden)])
            with g.scope("mlp"):
                h = linear("c_fc", layer_norm("ln_2", x), hidden, 4 * hidden)
                cube = g.op("Mul", [g.op("Pow", [h, gelu_c["three"]]), gelu_c["coeff"]])
                inner = g.op("Mul", [g.op("Add", [h, cube]), gelu_c["sqrt_2_over_pi"]])
                gate = g.op("Mul", [g.op("Add", [g.op("Tanh", [inner]), gelu_c["one"]]), gelu_c["half"]])
                h = g.op("Mul", [h, gate])
                x = g.op("Add", [x, linear("c_proj", h, 4 * hidden, hidden)])
    with g.scope("lm_head"):
        h = layer_norm("ln_f", x)
        logits = g.op("MatMul", [h, g.weight("weight", [hidden, vocab])])
    g.output(logits, FLOAT, ["batch", "sequence", vocab], "logits")
    return g.model(opset, doc="GPT-style decoder")
