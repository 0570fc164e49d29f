"""Small hand-built models shared by the validate, faithful-evaluation and inputs tests (no tests here)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.builder import make_model, value_info

OPSET = 17
FP16 = TensorProto.FLOAT16
FP32 = TensorProto.FLOAT


def overflow_model(factor: float = 4.0) -> onnx.ModelProto:
    """y = float(float16(x) * factor): with x = 65504 the FP16 product overflows to inf."""
    return make_model(
        [
            helper.make_node("Cast", ["x"], ["x16"], to=FP16),
            helper.make_node("Mul", ["x16", "factor"], ["p"]),
            helper.make_node("Cast", ["p"], ["y"], to=FP32),
        ],
        [value_info("x", [1])],
        [value_info("y", [1])],
        [numpy_helper.from_array(np.array([factor], np.float16), "factor")],
    )


def overflow_model_fp32(factor: float = 4.0) -> onnx.ModelProto:
    """The FP32 original of ``overflow_model``: y = x * factor."""
    return make_model(
        [helper.make_node("Mul", ["x", "factor"], ["y"])],
        [value_info("x", [1])],
        [value_info("y", [1])],
        [numpy_helper.from_array(np.array([factor], np.float32), "factor")],
    )


def mlp_fp32(seed: int = 0, hidden: int = 32, classes: int = 10, with_probs: bool = True) -> onnx.ModelProto:
    """x[batch, 16] → MatMul → Add → Relu → MatMul → logits[batch, classes], plus a Sigmoid output
    ``probs`` (onnxconverter-common mistypes an output that another node reads: leave it out there)."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((16, hidden)) / 4).astype(np.float32)
    b1 = rng.standard_normal(hidden).astype(np.float32)
    w2 = (rng.standard_normal((hidden, classes)) / 4).astype(np.float32)
    return make_model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Add", ["h", "b1"], ["hb"]),
            helper.make_node("Relu", ["hb"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["logits"]),
            *([helper.make_node("Sigmoid", ["logits"], ["probs"])] if with_probs else []),
        ],
        [value_info("x", ["batch", 16])],
        [
            value_info("logits", ["batch", classes]),
            *([value_info("probs", ["batch", classes])] if with_probs else []),
        ],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "w2"),
        ],
    )


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 conversion by onnxconverter-common (I/O kept FP32), independent of mpcompile."""
    from onnxconverter_common import float16

    converted = float16.convert_float_to_float16(model, keep_io_types=True)
    converted.ir_version = 10
    return converted


def save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)
