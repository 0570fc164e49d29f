"""A timm-style mobile CNN: the blocks of MobileNetV2/V3, EfficientNet, GhostNet and RegNetY.

Conv + BatchNormalization + activation everywhere (ReLU, ReLU6 as Clip, SiLU as Sigmoid·x,
HardSwish), inverted residuals with a depthwise Conv (``group`` = channels), squeeze-and-excitation
(GlobalAveragePool, 1x1 Convs, HardSigmoid or Sigmoid gate, Mul), a GhostNet-style Concat of a
primary and a cheap depthwise branch, residual Adds, then GlobalAveragePool + Gemm. These are
the Conv + activation chains ORT's ``ConvActivationFusion`` turns into ``FusedConv``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from models.builder import FLOAT, GraphBuilder, weight_rng


def build(image_size: int = 32, num_classes: int = 10, opset: int = 17) -> onnx.ModelProto:
    """Stem, one block of each kind, head; input ``image[batch, 3, H, W]``, output ``logits``."""
    g = GraphBuilder("cnn_blocks")
    x = g.input("image", FLOAT, ["batch", 3, image_size, image_size])
    with g.scope("stem"):
        h = _silu(g, _conv_bn(g, x, 3, 16, 3, stride=2))
    with g.scope("inverted_residual"):  # MobileNetV2 / EfficientNet MBConv with SE
        e = g.op("Clip", [_conv_bn(g, h, 16, 32, 1), _scalar(g, "zero", 0.0), _scalar(g, "six", 6.0)])
        with g.scope("depthwise"):
            e = _silu(g, _conv_bn(g, e, 32, 32, 3, group=32))
        e = _squeeze_excite(g, e, 32, 8, gate="Sigmoid")
        with g.scope("project"):
            e = _conv_bn(g, e, 32, 16, 1)
        h = g.op("Add", [h, e])
    with g.scope("mobilenetv3"):  # HardSwish, depthwise stride 2, HardSigmoid SE
        e = g.op("HardSwish", [_conv_bn(g, h, 16, 48, 1)])
        with g.scope("depthwise"):
            e = g.op("HardSwish", [_conv_bn(g, e, 48, 48, 3, stride=2, group=48)])
        e = _squeeze_excite(g, e, 48, 12, gate="HardSigmoid")
        with g.scope("project"):
            h = _conv_bn(g, e, 48, 24, 1)
    with g.scope("ghost"):  # GhostNet: primary 1x1 Conv, cheap depthwise Conv, Concat
        primary = g.op("Relu", [_conv_bn(g, h, 24, 12, 1)])
        with g.scope("cheap"):
            cheap = g.op("Relu", [_conv_bn(g, primary, 12, 12, 3, group=12)])
        h = g.op("Add", [h, g.op("Concat", [primary, cheap], {"axis": 1})])
    with g.scope("regnety"):  # RegNetY: grouped 3x3 Conv, SE, residual, ReLU after the Add
        e = g.op("Relu", [_conv_bn(g, h, 24, 24, 1)])
        with g.scope("grouped"):
            e = g.op("Relu", [_conv_bn(g, e, 24, 24, 3, group=3)])
        e = _squeeze_excite(g, e, 24, 6, gate="Sigmoid")
        with g.scope("project"):
            e = _conv_bn(g, e, 24, 24, 1)
        h = g.op("Relu", [g.op("Add", [h, e])])
    with g.scope("head"):
        h = g.op("HardSwish", [_conv_bn(g, h, 24, 64, 1)])
        h = g.op("Flatten", [g.op("GlobalAveragePool", [h])], {"axis": 1})
        w = g.weight("fc.weight", [num_classes, 64], scale=0.2)
        logits = g.op("Gemm", [h, w, g.weight("fc.bias", [num_classes], scale=0.1)], {"transB": 1})
    g.output(logits, FLOAT, ["batch", num_classes], "logits")
    return g.model(opset, doc="timm-style mobile CNN blocks")


def _scalar(g: GraphBuilder, name: str, value: float) -> ir.Value:
    return g.const(name, value, dtype=np.float32)


def _conv_bn(
    g: GraphBuilder, x: ir.Value, c_in: int, c_out: int, kernel: int, stride: int = 1, group: int = 1
) -> ir.Value:
    """Conv without bias, then BatchNormalization with non-trivial running statistics."""
    fan_in = c_in // group * kernel * kernel
    w = g.weight("conv.weight", [c_out, c_in // group, kernel, kernel], scale=float(np.sqrt(2.0 / fan_in)))
    pad = kernel // 2
    attributes = {
        "kernel_shape": [kernel, kernel],
        "strides": [stride, stride],
        "pads": [pad] * 4,
        "group": group,
    }
    h = g.op("Conv", [x, w], attributes)
    rng = weight_rng(g.seed, g.scoped("bn"))
    scale = g.const("bn.scale", 1.0 + 0.1 * rng.standard_normal(c_out), dtype=np.float32)
    bias = g.const("bn.bias", 0.1 * rng.standard_normal(c_out), dtype=np.float32)
    mean = g.const("bn.mean", 0.1 * rng.standard_normal(c_out), dtype=np.float32)
    var = g.const("bn.var", rng.uniform(0.5, 1.5, c_out), dtype=np.float32)
    return g.op("BatchNormalization", [h, scale, bias, mean, var], {"epsilon": 1e-5})


def _silu(g: GraphBuilder, x: ir.Value) -> ir.Value:
    """SiLU as torch.onnx exports it before opset 24: x * Sigmoid(x)."""
    return g.op("Mul", [x, g.op("Sigmoid", [x])])


def _squeeze_excite(g: GraphBuilder, x: ir.Value, channels: int, reduced: int, gate: str) -> ir.Value:
    with g.scope("se"):
        s = g.op("GlobalAveragePool", [x])
        w1 = g.weight("reduce.weight", [reduced, channels, 1, 1], scale=float(np.sqrt(2.0 / channels)))
        s = g.op("Relu", [g.op("Conv", [s, w1, g.weight("reduce.bias", [reduced], scale=0.1)])])
        w2 = g.weight("expand.weight", [channels, reduced, 1, 1], scale=float(np.sqrt(1.0 / reduced)))
        s = g.op(gate, [g.op("Conv", [s, w2, g.weight("expand.bias", [channels], scale=0.1)])])
        return g.op("Mul", [x, s])
