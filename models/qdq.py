"""A QDQ-quantized model: QuantizeLinear/DequantizeLinear around a Conv and a MatMul, float ops elsewhere."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from models.builder import FLOAT, GraphBuilder, normal_weights

MIN_OPSET = 13  # per-channel DequantizeLinear (axis attribute)


def _quantize_per_channel(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantization along axis 0: (int8 values, float32 scales)."""
    scale = np.abs(w.reshape(w.shape[0], -1)).max(axis=1) / 127.0
    scale = np.maximum(scale, 1e-8).astype(np.float32)
    q = np.clip(np.round(w / scale.reshape((-1,) + (1,) * (w.ndim - 1))), -127, 127).astype(np.int8)
    return q, scale


def build(channels: int = 8, image_size: int = 16, num_classes: int = 10, opset: int = 17) -> onnx.ModelProto:
    """``image -> Q/DQ -> Conv(DQ int8 weights, DQ int32 bias) -> Q/DQ -> Relu -> GlobalAveragePool
    -> Flatten -> Q/DQ -> MatMul(DQ int8 weights) -> Add (float bias) -> Softmax``."""
    if opset < MIN_OPSET:
        raise ValueError(f"qdq needs opset >= {MIN_OPSET}, got {opset}")
    g = GraphBuilder("qdq")
    x = g.input("image", FLOAT, ["batch", 3, image_size, image_size])

    def qdq(name: str, v: ir.Value, scale: float) -> ir.Value:
        with g.scope(name):
            s = g.const("scale", scale, dtype=np.float32)
            zp = g.const("zero_point", 128, dtype=np.uint8)
            return g.op("DequantizeLinear", [g.op("QuantizeLinear", [v, s, zp]), s, zp])

    input_scale = 8.0 / 255.0
    h = qdq("input_qdq", x, input_scale)
    with g.scope("conv"):
        w_float = normal_weights(g.seed, "conv.weight", [channels, 3, 3, 3], scale=0.2)
        w_q, w_scale = _quantize_per_channel(w_float)
        bias_scale = (input_scale * w_scale).astype(np.float32)
        bias_float = normal_weights(g.seed, "conv.bias", [channels], scale=0.1)
        bias_q = np.round(bias_float / bias_scale).astype(np.int32)
        w = g.op(
            "DequantizeLinear",
            [
                g.const("weight_quantized", w_q),
                g.const("weight_scale", w_scale),
                g.const("weight_zero_point", np.zeros(channels, np.int8)),
            ],
            {"axis": 0},
        )
        b = g.op(
            "DequantizeLinear",
            [
                g.const("bias_quantized", bias_q),
                g.const("bias_scale", bias_scale),
                g.const("bias_zero_point", np.zeros(channels, np.int32)),
            ],
            {"axis": 0},
        )
        h = g.op("Conv", [h, w, b], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]})
    h = qdq("conv_output_qdq", h, 16.0 / 255.0)
    h = g.op("Relu", [h])
    h = g.op("Flatten", [g.op("GlobalAveragePool", [h])], {"axis": 1})
    h = qdq("fc_input_qdq", h, 8.0 / 255.0)
    with g.scope("fc"):
        w_q, w_scale = _quantize_per_channel(
            normal_weights(g.seed, "fc.weight", [num_classes, channels], 0.3)
        )
        w = g.op(
            "DequantizeLinear",
            [
                g.const("weight_quantized", np.ascontiguousarray(w_q.T)),
                g.const("weight_scale", w_scale),
                g.const("weight_zero_point", np.zeros(num_classes, np.int8)),
            ],
            {"axis": 1},
        )
        h = g.op("MatMul", [h, w])
        h = g.op("Add", [h, g.weight("bias", [num_classes], scale=0.1)])
    probs = g.op("Softmax", [h], {"axis": -1})
    g.output(probs, FLOAT, ["batch", num_classes], "probabilities")
    return g.model(opset, doc="QDQ-quantized Conv and MatMul")
