"""If and Loop with float compute inside their subgraphs, reading values captured from the outer graph."""

from __future__ import annotations

import numpy as np
import onnx

from models.builder import BOOL, FLOAT, INT64, GraphBuilder


def build(features: int = 8, loop_iterations: int = 3, opset: int = 17) -> onnx.ModelProto:
    """``h = x @ W0``; ``If(mean(x) > 0)`` then ``Exp(h @ Wt)`` else ``Sigmoid(h * s)``;
    a Loop of ``loop_iterations`` steps ``acc = Tanh(acc @ Wl + b)``; output ``acc + h``.

    The branches and the loop body use ``h``, ``Wt``, ``s``, ``Wl`` and ``b`` from the outer graph.
    """
    g = GraphBuilder("control_flow")
    x = g.input("x", FLOAT, ["batch", features])
    h = g.op("MatMul", [x, g.weight("W0", [features, features], scale=0.3)])
    w_then = g.weight("W_then", [features, features], scale=0.2)
    s_else = g.const("s_else", np.linspace(0.5, 1.5, features, dtype=np.float32))
    w_loop = g.weight("W_loop", [features, features], scale=0.3)
    b_loop = g.weight("b_loop", [features], scale=0.1)
    cond = g.op("Greater", [g.op("ReduceMean", [x], {"keepdims": 0}), g.const("zero", 0.0, dtype=np.float32)])

    then_g = GraphBuilder("then_branch")
    with then_g.scope("then"):
        t = then_g.op("Exp", [then_g.op("MatMul", [h, w_then])])
    then_g.output(t, FLOAT, ["batch", features], "then_out")

    else_g = GraphBuilder("else_branch")
    with else_g.scope("else"):
        e = else_g.op("Sigmoid", [else_g.op("Mul", [h, s_else])])
    else_g.output(e, FLOAT, ["batch", features], "else_out")

    branch = g.op("If", [cond], {"then_branch": then_g.graph(), "else_branch": else_g.graph()})

    body = GraphBuilder("loop_body")
    body.input("iteration", INT64, [])
    cond_in = body.input("cond_in", BOOL, [])
    acc_in = body.input("acc_in", FLOAT, ["batch", features])
    with body.scope("body"):
        acc = body.op("Tanh", [body.op("Add", [body.op("MatMul", [acc_in, w_loop]), b_loop])])
        cond_out = body.op("Identity", [cond_in])
    body.output(cond_out, BOOL, [], "cond_out")
    body.output(acc, FLOAT, ["batch", features], "acc_out")

    trip_count = g.const("trip_count", loop_iterations, dtype=np.int64)
    keep_going = g.const("keep_going", True, dtype=np.bool_)
    looped = g.op("Loop", [trip_count, keep_going, branch], {"body": body.graph()})
    y = g.op("Add", [looped, h])
    g.output(y, FLOAT, ["batch", features], "y")
    return g.model(opset, doc="If and Loop with captured outer values")
