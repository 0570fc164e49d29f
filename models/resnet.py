"""A small ResNet-style CNN: Conv, BatchNormalization, Relu, MaxPool, residual Add, GlobalAveragePool."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from models.builder import FLOAT, GraphBuilder, weight_rng


def _conv_bn(g: GraphBuilder, x: ir.Value, c_in: int, c_out: int, kernel: int, stride: int) -> ir.Value:
    """Conv (no bias) followed by BatchNormalization with non-trivial running statistics."""
    w = g.weight(
        "conv.weight", [c_out, c_in, kernel, kernel], scale=float(np.sqrt(2.0 / (c_in * kernel * kernel)))
    )
    pad = kernel // 2
    h = g.op(
        "Conv", [x, w], {"kernel_shape": [kernel, kernel], "strides": [stride, stride], "pads": [pad] * 4}
    )
    rng = weight_rng(g.seed, f"{g.scoped('bn')}")
    scale = g.const("bn.scale", 1.0 + 0.1 * rng.standard_normal(c_out), dtype=np.float32)
    bias = g.const("bn.bias", 0.1 * rng.standard_normal(c_out), dtype=np.float32)
    mean = g.const("bn.mean", 0.1 * rng.standard_normal(c_out), dtype=np.float32)
    var = g.const("bn.var", rng.uniform(0.5, 1.5, c_out), dtype=np.float32)
    return g.op("BatchNormalization", [h, scale, bias, mean, var], {"epsilon": 1e-5})


def _basic_block(g: GraphBuilder, x: ir.Value, c_in: int, c_out: int, stride: int) -> ir.Value:
    with g.scope("conv1"):
        h = g.op("Relu", [_conv_bn(g, x, c_in, c_out, 3, stride)])
    with g.scope("conv2"):
        h = _conv_bn(g, h, c_out, c_out, 3, 1)
    if stride != 1 or c_in != c_out:
        with g.scope("downsample"):
            x = _conv_bn(g, x, c_in, c_out, 1, stride)
    return g.op("Relu", [g.op("Add", [h, x])])


def build(
    image_size: int = 32, channels: tuple[int, ...] = (16, 32), num_classes: int = 10, opset: int = 17
) -> onnx.ModelProto:
    """Stem (Conv-BN-Relu-MaxPool), one basic block per entry of ``channels``, then the classifier."""
    g = GraphBuilder("resnet")
    x = g.input("image", FLOAT, ["batch", 3, image_size, image_size])
    with g.scope("stem"):
        h = g.op("Relu", [_conv_bn(g, x, 3, channels[0], 3, 1)])
        h = g.op("MaxPool", [h], {"kernel_shape": [2, 2], "strides": [2, 2]})
    c_in = channels[0]
    for i, c_out in enumerate(channels):
        with g.scope(f"layer{i + 1}"):
            h = _basic_block(g, h, c_in, c_out, 1 if i == 0 else 2)
        c_in = c_out
    with g.scope("head"):
        h = g.op("GlobalAveragePool", [h])
        h = g.op("Flatten", [h], {"axis": 1})
        w = g.weight("fc.weight", [num_classes, c_in], scale=0.2)
        logits = g.op("Gemm", [h, w, g.weight("fc.bias", [num_classes], scale=0.1)], {"transB": 1})
    g.output(logits, FLOAT, ["batch", num_classes], "logits")
    return g.model(opset, doc="ResNet-style CNN")
