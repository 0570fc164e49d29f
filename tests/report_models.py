"""Small stamped graphs for the report tests (built with ``models.builder``)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.builder import make_model, value_info, weight
from mpcompile.core.plan import Decision, stamp_decision
from mpcompile.core.precision import Precision

OPSET = 17


def stamp(model: onnx.ModelProto, decisions: dict[str, tuple[str, str, str]]) -> onnx.ModelProto:
    """Write mpcompile decisions (name -> (precision, reason, rule)) into node metadata, by hand."""
    import onnx_ir as ir

    work = ir.from_proto(model)
    for node in ir.traversal.RecursiveGraphIterator(work.graph):
        if node.name in decisions:
            precision, reason, rule = decisions[node.name]
            stamp_decision(node, Decision(Precision(precision), reason, rule))
    return ir.to_proto(work)


def mixed_model() -> onnx.ModelProto:
    """x[batch,seq,8] -> MatMul(fp16, via Casts) -> Softmax (fp32) -> y; stamped like mpcompile would.

    FLOPs with batch=1, seq=128: MatMul 2*128*8*16 = 32768; Softmax 128*16 = 2048.
    """
    w16 = weight("w", (8, 16), scale=0.3, dtype=np.float16)
    nodes = [
        helper.make_node("Cast", ["x"], ["x16"], name="x_cast", to=TensorProto.FLOAT16),
        helper.make_node("MatMul", ["x16", "w"], ["h16"], name="proj"),
        helper.make_node("Cast", ["h16"], ["h"], name="h_cast", to=TensorProto.FLOAT),
        helper.make_node("Softmax", ["h"], ["y"], name="softmax", axis=-1),
    ]
    model = make_model(
        nodes, [value_info("x", ["batch", "seq", 8])], [value_info("y", ["batch", "seq", 16])], [w16]
    )
    return stamp(
        model,
        {
            "x_cast": ("fp16", "cast", ""),
            "proj": ("fp16", "allow", "allow:MatMul"),
            "h_cast": ("fp32", "cast", ""),
            "softmax": ("fp32", "block", "block:Softmax"),
        },
    )


def planted_model(factor: float = 8e3) -> onnx.ModelProto:
    """FP32 x[batch,16] -> MatMul -> Relu -> Mul(factor) "planted" -> Mul(1e-4) -> MatMul -> y.

    With N(0,1) inputs the Relu output reaches ~10-20, so the planted node's activations
    reach ~1e5 (> FP16 max 65504) while the model's FP32 output stays small.
    """
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="proj"),
        helper.make_node("Relu", ["h1"], ["r1"], name="act"),
        helper.make_node("Mul", ["r1", "big"], ["planted_out"], name="planted"),
        helper.make_node("Mul", ["planted_out", "small"], ["s"], name="rescale"),
        helper.make_node("MatMul", ["s", "w2"], ["y"], name="head"),
    ]
    inits = [
        weight("w1", (16, 16), seed=1, scale=1.0),
        numpy_helper.from_array(np.array(factor, np.float32), "big"),
        numpy_helper.from_array(np.array(1e-4, np.float32), "small"),
        weight("w2", (16, 4), seed=2, scale=0.3),
    ]
    return make_model(nodes, [value_info("x", ["batch", 16])], [value_info("y", ["batch", 4])], inits)
