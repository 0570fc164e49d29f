"""A small multi-layer perceptron: MatMul + Add + Relu, then two Gemm layers."""

from __future__ import annotations

import onnx

from models.builder import FLOAT, GraphBuilder


def build(
    in_features: int = 16, hidden: int = 32, out_features: int = 10, opset: int = 17
) -> onnx.ModelProto:
    """``y = Gemm(Relu(Gemm(Relu(x @ W1 + b1), W2^T, b2)), W3^T, b3)`` with input ``x[batch, in]``."""
    g = GraphBuilder("mlp")
    x = g.input("x", FLOAT, ["batch", in_features])
    with g.scope("fc1"):
        h = g.op("MatMul", [x, g.weight("weight", [in_features, hidden], scale=0.3)])
        h = g.op("Add", [h, g.weight("bias", [hidden], scale=0.1)])
        h = g.op("Relu", [h])
    with g.scope("fc2"):
        h = g.op(
            "Gemm",
            [h, g.weight("weight", [hidden, hidden], scale=0.2), g.weight("bias", [hidden], scale=0.1)],
            {"transB": 1},
        )
        h = g.op("Relu", [h])
    with g.scope("fc3"):
        y = g.op(
            "Gemm",
            [
                h,
                g.weight("weight", [out_features, hidden], scale=0.2),
                g.weight("bias", [out_features], scale=0.1),
            ],
            {"transB": 1, "alpha": 1.0, "beta": 1.0},
        )
    g.output(y, FLOAT, ["batch", out_features], "y")
    return g.model(opset, doc="MLP: MatMul/Add/Relu/Gemm")
