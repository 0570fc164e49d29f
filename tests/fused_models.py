"""Small transformer graphs fused by ONNX Runtime's own transformers optimizer, as users bring them.

``fused(name)`` builds a zoo model (or the T5-style encoder below) and runs
``onnxruntime.transformers.optimizer.optimize_model`` on it with the matching ``model_type``, so
the graph holds ORT's contrib ops (``com.microsoft`` Attention, SkipLayerNormalization, ...) and
its default-domain ``SimplifiedLayerNormalization``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

import models
from models.builder import FLOAT, INT64, GraphBuilder

HEADS, HIDDEN = 4, 64


def t5_encoder(
    layers: int = 2, hidden: int = HIDDEN, heads: int = HEADS, ffn: int = 128, vocab: int = 256
) -> onnx.ModelProto:
    """A T5-style encoder: RMSNorm written out (Pow, ReduceMean, Add, Sqrt, Div, Mul, Mul),
    unscaled attention, a ReLU feed-forward and residuals; output ``last_hidden_state``."""
    head_dim = hidden // heads
    g = GraphBuilder("t5_encoder", seed=0)
    ids = g.input("input_ids", INT64, ["batch", "sequence"])
    two = g.const("const.two", 2.0, dtype=np.float32)
    one = g.const("const.one", 1.0, dtype=np.float32)
    eps = g.const("const.eps", 1e-6, dtype=np.float32)
    split_heads = g.const("const.split_heads", [0, 0, heads, head_dim], dtype=np.int64)
    merge_heads = g.const("const.merge_heads", [0, 0, hidden], dtype=np.int64)
    x = g.op("Gather", [g.weight("shared", [vocab, hidden], scale=1.0), ids])

    def rms_norm(name: str, h: ir.Value) -> ir.Value:
        with g.scope(name):
            mean_square = g.op("ReduceMean", [g.op("Pow", [h, two])], {"axes": [-1], "keepdims": 1})
            inverse = g.op("Div", [one, g.op("Sqrt", [g.op("Add", [mean_square, eps])])])
            scale = 1.0 + 0.1 * np.random.default_rng(len(g.scoped(name))).standard_normal(hidden)
            return g.op("Mul", [g.const("weight", scale.astype(np.float32)), g.op("Mul", [h, inverse])])

    def project(name: str, h: ir.Value, n_in: int, n_out: int) -> ir.Value:
        with g.scope(name):
            return g.op("MatMul", [h, g.weight("weight", [n_in, n_out], scale=n_in**-0.5)])

    def heads_of(h: ir.Value, perm: list[int]) -> ir.Value:
        return g.op("Transpose", [g.op("Reshape", [h, split_heads])], {"perm": perm})

    for layer in range(layers):
        with g.scope(f"block{layer}"):
            with g.scope("attention"):
                h = rms_norm("layer_norm", x)
                q = heads_of(project("q", h, hidden, hidden), [0, 2, 1, 3])
                k = heads_of(project("k", h, hidden, hidden), [0, 2, 3, 1])
                v = heads_of(project("v", h, hidden, hidden), [0, 2, 1, 3])
                probs = g.op("Softmax", [g.op("MatMul", [q, k])], {"axis": -1})
                context = g.op("Transpose", [g.op("MatMul", [probs, v])], {"perm": [0, 2, 1, 3]})
                x = g.op("Add", [x, project("o", g.op("Reshape", [context, merge_heads]), hidden, hidden)])
            with g.scope("feed_forward"):
                h = g.op("Relu", [project("wi", rms_norm("layer_norm", x), hidden, ffn)])
                x = g.op("Add", [x, project("wo", h, ffn, hidden)])
    g.output(rms_norm("final_layer_norm", x), FLOAT, ["batch", "sequence", hidden], "last_hidden_state")
    return g.model(17, doc="T5-style encoder")


SOURCES = {"bert": "bert_encoder", "bart": "bert_encoder", "gpt2": "gpt_block", "t5": "t5_encoder"}


def source_model(model_type: str) -> onnx.ModelProto:
    """The FP32 graph ORT's optimizer is run on for ``model_type``."""
    if SOURCES[model_type] == "t5_encoder":
        return t5_encoder()
    model = models.build(SOURCES[model_type])
    # torch.onnx exports mask[:, None, None, :] as single-axis Unsqueezes, the form ORT's
    # attention fusion matches; the zoo builds one two-axis Unsqueeze.
    from mpcompile.targets.optimize import split_multi_axis_unsqueeze

    return ir.to_proto(split_multi_axis_unsqueeze(ir.from_proto(model)))


def fused(model_type: str, *, use_gpu: bool = False) -> onnx.ModelProto:
    """``source_model(model_type)`` after ORT's transformers optimizer (FP32)."""
    from onnxruntime.transformers import optimizer

    optimized = optimizer.optimize_model(
        source_model(model_type), model_type, HEADS, HIDDEN, opt_level=0, use_gpu=use_gpu
    )
    return _as_saved(optimized.model)


def _as_saved(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as the optimizer's ``save_model_to_file`` writes it: with the com.microsoft
    opset import its contrib nodes need (the in-memory model lacks it)."""
    nodes = (node for graph in [model.graph] for node in graph.node)
    if any(node.domain == "com.microsoft" for node in nodes) and not any(
        entry.domain == "com.microsoft" for entry in model.opset_import
    ):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return model


def fused_fp16(model_type: str) -> onnx.ModelProto:
    """``fused(model_type)`` converted to FP16 by the optimizer itself (its ``--float16``:
    ``convert_float_to_float16(keep_io_types=True)``)."""
    from onnxruntime.transformers import optimizer

    optimized = optimizer.optimize_model(source_model(model_type), model_type, HEADS, HIDDEN, opt_level=0)
    optimized.convert_float_to_float16(keep_io_types=True)
    return _as_saved(optimized.model)
