"""One small model per known failure of existing FP16 converters (each a separate builder).

Every builder's docstring names the failure it reproduces. Mixed-precision converters must
convert each one into a model that passes the ONNX checker, loads in onnxruntime and keeps
the FP32 results within FP16 tolerance.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from models import bert_encoder
from models.builder import BOOL, FLOAT, GraphBuilder, normal_weights


def existing_cast(features: int = 16, opset: int = 17) -> onnx.ModelProto:
    """``MatMul -> Cast(to=FLOAT) -> Relu -> MatMul``: the existing Cast sits inside what should be one
    FP16 region; converters that leave it at FLOAT produce type errors or needless round trips."""
    g = GraphBuilder("existing_cast")
    x = g.input("x", FLOAT, ["batch", features])
    h = g.op("MatMul", [x, g.weight("W1", [features, features], scale=0.25)])
    h = g.op("Cast", [h], {"to": FLOAT})
    h = g.op("Relu", [h])
    y = g.op("MatMul", [h, g.weight("W2", [features, features], scale=0.25)])
    g.output(y, FLOAT, ["batch", features], "y")
    return g.model(opset, doc="regression: existing Cast(to=FLOAT) inside an FP16 region")


def shared_initializer(features: int = 16, opset: int = 17) -> onnx.ModelProto:
    """One initializer ``W`` read by an allowed MatMul and by a blocked Pow -> ReduceSum path:
    converting it in place for the MatMul breaks the blocked consumer's types."""
    g = GraphBuilder("shared_initializer")
    x = g.input("x", FLOAT, ["batch", features])
    w = g.weight("W", [features, features], scale=0.25)
    projected = g.op("MatMul", [x, w])
    squared = g.op("Pow", [w, g.const("two", 2.0, dtype=np.float32)])
    column_norms = g.op("ReduceSum", [squared, g.const("axes", [0], dtype=np.int64)], {"keepdims": 1})
    y = g.op("Add", [projected, column_norms])
    g.output(y, FLOAT, ["batch", features], "y")
    return g.model(opset, doc="regression: initializer shared by a blocked and an allowed node")


def initializers_as_inputs(features: int = 16, opset: int = 9) -> onnx.ModelProto:
    """IR version 3 style (opset 9): every initializer is also listed as a graph input, as old
    exporters wrote them. A converter must keep each input declaration consistent with its initializer."""
    w = normal_weights(0, "W", [features, features], 0.25)
    b = normal_weights(0, "B", [features], 0.1)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
        helper.make_node("Add", ["h", "B"], ["h_biased"], name="add_bias"),
        helper.make_node("Relu", ["h_biased"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "initializers_as_inputs",
        inputs=[
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features]),
            helper.make_tensor_value_info("W", TensorProto.FLOAT, [features, features]),
            helper.make_tensor_value_info("B", TensorProto.FLOAT, [features]),
        ],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", features])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="mpcompile-models",
        producer_version="1",
    )
    model.ir_version = 3
    model.doc_string = "regression: initializers listed as graph inputs (IR version 3)"
    return model


def resize_scales(channels: int = 4, image_size: int = 8, opset: int = 17) -> onnx.ModelProto:
    """``Conv -> Resize(scales=[1, 1, 2, 2]) -> Conv``: Resize's ``scales`` input is always float32,
    whatever type the data has; converting it to FP16 makes the model invalid."""
    g = GraphBuilder("resize_scales")
    x = g.input("image", FLOAT, ["batch", channels, image_size, image_size])
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    h = g.op("Conv", [x, g.weight("conv1.weight", [channels, channels, 3, 3], scale=0.2)], conv)
    scales = g.const("scales", [1.0, 1.0, 2.0, 2.0], dtype=np.float32)
    h = g.op("Resize", [h, None, scales], {"mode": "nearest"})
    y = g.op("Conv", [h, g.weight("conv2.weight", [channels, channels, 3, 3], scale=0.2)], conv)
    g.output(y, FLOAT, ["batch", channels, 2 * image_size, 2 * image_size], "y")
    return g.model(opset, doc="regression: Resize with a float32 scales input")


def random_normal_like(features: int = 16, opset: int = 17) -> onnx.ModelProto:
    """``RandomNormalLike(dtype=FLOAT)`` between two MatMuls: its ``dtype`` attribute must follow the
    precision its output gets. Its ``scale`` is 1e-6 (0 aborts onnxruntime), so the noise is far below
    FP16 tolerance and outputs can still be compared numerically with a tolerance."""
    g = GraphBuilder("random_normal_like")
    x = g.input("x", FLOAT, ["batch", features])
    h = g.op("MatMul", [x, g.weight("W1", [features, features], scale=0.25)])
    noise = g.op("RandomNormalLike", [h], {"dtype": FLOAT, "mean": 0.0, "scale": 1e-6, "seed": 1.0})
    h = g.op("Add", [h, noise])
    y = g.op("MatMul", [h, g.weight("W2", [features, features], scale=0.25)])
    g.output(y, FLOAT, ["batch", features], "y")
    return g.model(opset, doc="regression: RandomNormalLike with dtype=FLOAT in an FP16-able region")


def blocked_in_if(features: int = 8, opset: int = 17) -> onnx.ModelProto:
    """A blocked op (Exp) inside an If branch reading an outer MatMul's output: converters that do
    not descend into subgraphs, or descend without keeping captured types consistent, break here.
    The boolean input ``use_exp`` selects the branch."""
    g = GraphBuilder("blocked_in_if")
    x = g.input("x", FLOAT, ["batch", features])
    use_exp = g.input("use_exp", BOOL, [])
    h = g.op("MatMul", [x, g.weight("W", [features, features], scale=0.25)])
    w_then = g.weight("W_then", [features, features], scale=0.25)

    then_g = GraphBuilder("then_branch")
    with then_g.scope("then"):
        t = then_g.op("MatMul", [then_g.op("Exp", [h]), w_then])
    then_g.output(t, FLOAT, ["batch", features], "then_out")
    else_g = GraphBuilder("else_branch")
    with else_g.scope("else"):
        e = else_g.op("Relu", [h])
    else_g.output(e, FLOAT, ["batch", features], "else_out")

    y = g.op("If", [use_exp], {"then_branch": then_g.graph(), "else_branch": else_g.graph()})
    g.output(y, FLOAT, ["batch", features], "y")
    return g.model(opset, doc="regression: blocked op (Exp) inside an If branch")


def unnamed_nodes(features: int = 16, opset: int = 17) -> onnx.ModelProto:
    """Every node name is empty (legal ONNX): Casts and copies a converter adds still need unique names.
    ``MatMul -> Relu -> ReduceSum -> Div -> MatMul`` mixes allowed and blocked ops."""
    g = GraphBuilder("unnamed_nodes")
    x = g.input("x", FLOAT, ["batch", features])
    h = g.op("Relu", [g.op("MatMul", [x, g.weight("W1", [features, features], scale=0.25)])])
    total = g.op("ReduceSum", [h, g.const("axes", [1], dtype=np.int64)], {"keepdims": 1})
    h = g.op("Div", [h, g.op("Add", [total, g.const("eps", 1.0, dtype=np.float32)])])
    y = g.op("MatMul", [h, g.weight("W2", [features, features], scale=0.25)])
    g.output(y, FLOAT, ["batch", features], "y")
    model = g.ir_model(opset, doc="regression: unnamed nodes")
    for node in model.graph:
        node.name = None
    return ir.to_proto(model)


def large_weight(features: int = 16, opset: int = 17) -> onnx.ModelProto:
    """``MatMul -> Mul(20000)``: 20000 is representable in FP16 (max 65504) and must survive exactly;
    converters that clamp weights at 1e4 turn it into 10000 and halve the output."""
    g = GraphBuilder("large_weight")
    x = g.input("x", FLOAT, ["batch", features])
    h = g.op("MatMul", [x, g.weight("W", [features, features], scale=0.05)])
    y = g.op("Mul", [h, g.const("gain", np.full(features, 20000.0, dtype=np.float32))])
    g.output(y, FLOAT, ["batch", features], "y")
    return g.model(opset, doc="regression: weight value 20000")


def bn_large_variance(channels: int = 4, image_size: int = 8, opset: int = 14) -> onnx.ModelProto:
    """``Conv -> BatchNormalization -> Relu -> Conv`` with running variances of 1e8 on half the channels
    (opset 14, where mean and variance share BatchNormalization's type T): 1e8 overflows FP16 to inf,
    and sqrt(inf) silently zeroes those channels."""
    g = GraphBuilder("bn_large_variance")
    x = g.input("image", FLOAT, ["batch", channels, image_size, image_size])
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    h = g.op("Conv", [x, g.weight("conv1.weight", [channels, channels, 3, 3], scale=0.3)], conv)
    # Activations of ~1e3, so the channels with variance 1e8 still matter in the output.
    h = g.op("Mul", [h, g.const("gain", 1000.0, dtype=np.float32)])
    var = np.where(np.arange(channels) % 2 == 0, 1e8, 1.0).astype(np.float32)
    gain = np.where(var > 1, 1000.0, 0.001).astype(np.float32)
    scale = np.linspace(0.5, 1.5, channels, dtype=np.float32) * gain
    h = g.op(
        "BatchNormalization",
        [
            h,
            g.const("bn.scale", scale),
            g.const("bn.bias", np.linspace(-0.1, 0.1, channels, dtype=np.float32)),
            g.const("bn.mean", np.zeros(channels, dtype=np.float32)),
            g.const("bn.var", var),
        ],
        {"epsilon": 1e-5},
    )
    h = g.op("Relu", [h])
    y = g.op("Conv", [h, g.weight("conv2.weight", [channels, channels, 3, 3], scale=0.3)], conv)
    g.output(y, FLOAT, ["batch", channels, image_size, image_size], "y")
    return g.model(opset, doc="regression: BatchNormalization variance 1e8")


def mask_finfo_min(opset: int = 17) -> onnx.ModelProto:
    """A one-layer tiny BERT encoder whose additive attention mask constant is -3.4028235e38
    (``torch.finfo(float32).min``, as Hugging Face exports write it): beyond FP16's range."""
    return bert_encoder.build(
        layers=1, hidden=32, heads=2, ffn=64, vocab=100, max_seq=32, opset=opset, finfo_mask=True
    )


REGRESSIONS = {
    "existing_cast": existing_cast,
    "shared_initializer": shared_initializer,
    "initializers_as_inputs": initializers_as_inputs,
    "resize_scales": resize_scales,
    "random_normal_like": random_normal_like,
    "blocked_in_if": blocked_in_if,
    "unnamed_nodes": unnamed_nodes,
    "large_weight": large_weight,
    "bn_large_variance": bn_large_variance,
    "mask_finfo_min": mask_finfo_min,
}
