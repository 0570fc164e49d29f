"""Small graphs for the report tests (no tests here; imported by tests/test_report_*.py)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mpcompile.core.plan import Decision, stamp_decision
from mpcompile.core.precision import Precision

OPSET = 17


def model_of(
    nodes, inputs, outputs, initializers=(), opset: int = OPSET, name: str = "test"
) -> onnx.ModelProto:
    """A checked ModelProto from onnx.helper pieces."""
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def tensor(name: str, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def weight(name: str, shape, dtype=np.float32, seed: int = 0, scale: float = 0.3):
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(dtype), name)


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
    w16 = weight("w", (8, 16), np.float16)
    nodes = [
        helper.make_node("Cast", ["x"], ["x16"], name="x_cast", to=TensorProto.FLOAT16),
        helper.make_node("MatMul", ["x16", "w"], ["h16"], name="proj"),
        helper.make_node("Cast", ["h16"], ["h"], name="h_cast", to=TensorProto.FLOAT),
        helper.make_node("Softmax", ["h"], ["y"], name="softmax", axis=-1),
    ]
    model = model_of(nodes, [tensor("x", ["batch", "seq", 8])], [tensor("y", ["batch", "seq", 16])], [w16])
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
        weight("w2", (16, 4), seed=2),
    ]
    return model_of(nodes, [tensor("x", ["batch", 16])], [tensor("y", ["batch", 4])], inits)
