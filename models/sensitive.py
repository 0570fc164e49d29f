"""Models with planted nodes that are unsafe in FP16, for the accuracy-driven ``--auto`` search.

Each builder plants nodes named ``planted/...``; ``PLANTED[name]`` says which of them must stay
FP32 (``nodes``) and which kind of finding should catch them (``"range"``: the reference run's
range rules; ``"sensitivity"``: the search). Every other node is meant to stay FP16. Pow, Exp
and ReduceSum are on the core's static block list; ``--auto`` measures them instead
(``op_classes.MEASURABLE``), so the planted ones are candidates without any ``allow_ops``. Weights are seeded, so the models are deterministic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import onnx

from models.builder import FLOAT, GraphBuilder


@dataclasses.dataclass(frozen=True)
class Planted:
    nodes: frozenset[str]
    found_by: str  # "range" | "sensitivity"


def _f32(value: float) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def _mlp_head(g: GraphBuilder, x, features: int, scope: str):
    with g.scope(scope):
        h = g.op("MatMul", [x, g.weight("weight", [features, features], scale=features**-0.5)])
        h = g.op("Add", [h, g.weight("bias", [features], scale=0.1)])
        return g.op("Relu", [h])


def _readout(g: GraphBuilder, x, features: int, outputs: int, scope: str):
    """The final projection to ``outputs`` values (kept FP16 by every planted model)."""
    with g.scope(scope):
        return g.op("MatMul", [x, g.weight("weight", [features, outputs], scale=features**-0.5)])


def _cancellation(g: GraphBuilder, h, offset: float | np.ndarray, prefix: str = "", suffix: str = ""):
    """``(h + offset) - offset``, planted as ``planted/<prefix>Offset<suffix>`` and
    ``planted/<prefix>Unoffset<suffix>``: exact in FP32, FP16 keeps only the bits of ``h`` that fit
    beside ``offset``."""
    const = f"{prefix.lower()}_" if prefix else ""
    value = _f32(offset)
    shifted = g.op(
        "Add", [h, g.const(f"{const}offset{suffix}", value)], name=f"planted/{prefix}Offset{suffix}"
    )
    return g.op(
        "Sub", [shifted, g.const(f"{const}unoffset{suffix}", value)], name=f"planted/{prefix}Unoffset{suffix}"
    )


def pow_exp_chain(features: int = 32, opset: int = 17) -> onnx.ModelProto:
    """MLP with a Pow/Exp chain whose activations exceed FP16 range: ``Exp(Pow(20·h, 3) · 1e-4)``
    reaches ~1e5 at Pow and ~6e4 at Exp."""
    g = GraphBuilder("pow_exp_chain")
    x = g.input("x", FLOAT, [2, features])
    h = _mlp_head(g, x, features, "fc1")
    t = g.op("Mul", [h, g.const("scale", _f32(20.0))], name="Scale")
    p = g.op("Pow", [t, g.const("three", _f32(3.0))], name="planted/Pow")
    q = g.op("Mul", [p, g.const("shrink", _f32(1e-4))], name="planted/Shrink")
    e = g.op("Exp", [q], name="planted/Exp")
    r = g.op("Mul", [e, g.const("rescale", _f32(1e-4))], name="planted/Rescale")
    y = _readout(g, r, features, 8, "fc2")
    g.output(y, FLOAT, [2, 8], "y")
    return g.model(opset, doc="sensitive: Pow/Exp chain with activations beyond FP16 range")


def layernorm_huge_variance(features: int = 32, opset: int = 17) -> onnx.ModelProto:
    """A projection with activations of std ~3e4 (max beyond 65504) feeding a LayerNormalization."""
    g = GraphBuilder("layernorm_huge_variance")
    x = g.input("x", FLOAT, [2, features])
    h = _mlp_head(g, x, features, "fc1")
    big = g.op("MatMul", [h, g.weight("big", [features, features], scale=1e4)], name="planted/BigProjection")
    normed = g.op(
        "LayerNormalization",
        [
            big,
            g.const("gamma", np.ones(features, np.float32)),
            g.const("beta", np.zeros(features, np.float32)),
        ],
        {"axis": -1, "epsilon": 1e-5},
        name="planted/LayerNorm",
    )
    y = _readout(g, normed, features, 8, "fc2")
    g.output(y, FLOAT, [2, 8], "y")
    return g.model(opset, doc="sensitive: LayerNormalization of a huge-variance input")


def long_softmax(
    features: int = 32, length: int = 20000, scale: float = 4e3, opset: int = 17
) -> onnx.ModelProto:
    """Logits over a 20000-long axis reaching ~6e4, then Softmax over that axis."""
    g = GraphBuilder("long_softmax")
    x = g.input("x", FLOAT, [1, features])
    h = _mlp_head(g, x, features, "fc1")
    logits = g.op("MatMul", [h, g.weight("logits", [features, length], scale=scale)], name="planted/Logits")
    probs = g.op("Softmax", [logits], {"axis": -1}, name="planted/Softmax")
    with g.scope("fc2"):
        y = g.op("MatMul", [probs, g.weight("weight", [length, 8], scale=1.0)])
    g.output(y, FLOAT, [1, 8], "y")
    return g.model(opset, doc="sensitive: Softmax with large logits over a long axis")


def long_reduction(features: int = 32, length: int = 20000, opset: int = 17) -> onnx.ModelProto:
    """A ReduceSum over a 20000-long axis; values stay in range, so only the reduction-depth rule
    can catch it."""
    g = GraphBuilder("long_reduction")
    x = g.input("x", FLOAT, [1, features])
    h = _mlp_head(g, x, features, "fc1")
    wide = g.op("MatMul", [h, g.weight("wide", [features, length], scale=features**-0.5)], name="Wide")
    wide = g.op("Relu", [wide], name="WideRelu")
    total = g.op(
        "ReduceSum",
        [wide, g.const("axes", np.asarray([-1], np.int64))],
        {"keepdims": 1},
        name="planted/ReduceSum",
    )
    y = _readout(g, h, features, 8, "fc2")
    y = g.op("Add", [y, g.op("Mul", [total, g.const("norm", _f32(1e-3))], name="Normalize")], name="Combine")
    g.output(y, FLOAT, [1, 8], "y")
    return g.model(opset, doc="sensitive: ReduceSum over a long axis")


def matmul_overflow(features: int = 32, opset: int = 17) -> onnx.ModelProto:
    """A MatMul/Mul chain whose activations exceed FP16 range: ``Mul(1e4) -> MatMul -> Mul(1e-4)``."""
    g = GraphBuilder("matmul_overflow")
    x = g.input("x", FLOAT, [2, features])
    h = _mlp_head(g, x, features, "fc1")
    a = g.op("Mul", [h, g.const("amplify", _f32(1e4))], name="Amplify")
    m = g.op("MatMul", [a, g.weight("mix", [features, features], scale=1.0)], name="planted/Mix")
    s = g.op("Mul", [m, g.const("attenuate", _f32(1e-4))], name="planted/Attenuate")
    y = _readout(g, s, features, 8, "fc2")
    g.output(y, FLOAT, [2, 8], "y")
    return g.model(opset, doc="sensitive: MatMul/Mul chain beyond FP16 range")


def cancellation(features: int = 32, offset: float = 1000.0, opset: int = 17) -> onnx.ModelProto:
    """``(h + 1000) - 1000``: in range everywhere, but FP16 keeps only ~0.25 of h's precision after the
    Add; only the accuracy search can find it (the Sub shows the error, the Add causes it)."""
    g = GraphBuilder("cancellation")
    x = g.input("x", FLOAT, [2, features])
    h = _mlp_head(g, x, features, "fc1")
    back = _cancellation(g, h, offset)
    h2 = _mlp_head(g, back, features, "fc2")
    y = _readout(g, h2, features, 8, "fc3")
    g.output(y, FLOAT, [2, 8], "y")
    return g.model(opset, doc="sensitive: catastrophic cancellation (only measurable)")


def two_regions(
    features: int = 32, offset: float = 1000.0, first_offset: float | None = None, opset: int = 17
) -> onnx.ModelProto:
    """Two FP16 regions joined by Tanh -> Exp (blocked by the default policy, one region under
    ``--auto``, which measures Exp); the second holds a cancellation, and with ``first_offset``
    the first one too."""
    g = GraphBuilder("two_regions")
    x = g.input("x", FLOAT, [2, features])
    h = _mlp_head(g, x, features, "fc1")
    if first_offset is not None:
        h = _cancellation(g, h, first_offset, prefix="First")
    h = g.op("Tanh", [_mlp_head(g, h, features, "fc2")], name="Squash")
    h = g.op("Exp", [h], name="Exp")
    h = _mlp_head(g, h, features, "fc3")
    back = _cancellation(g, h, offset)
    h = _mlp_head(g, back, features, "fc4")
    y = _readout(g, h, features, 8, "fc5")
    g.output(y, FLOAT, [2, 8], "y")
    return g.model(opset, doc="sensitive: two FP16 regions, a cancellation in the second")


def many_culprits(
    features: int = 16, regions: int = 3, per_region: int = 2, opset: int = 17
) -> onnx.ModelProto:
    """``regions`` FP16 regions split by Tanh -> Exp (blocked by the default policy; ``--auto``
    measures Exp and joins them), each with
    ``per_region`` cancellations ``(h + c) - c`` named ``planted/Offset_<r>_<i>`` / ``planted/Unoffset_<r>_<i>``:
    more culprits than a direct search of the few most sensitive nodes finds."""
    g = GraphBuilder("many_culprits")
    h = g.input("x", FLOAT, [2, features])
    for region in range(regions):
        if region:
            h = g.op("Exp", [g.op("Tanh", [h], name=f"Squash_{region}")], name=f"Exp_{region}")
        for index in range(per_region):
            h = _mlp_head(g, h, features, f"r{region}/fc{index}")
            offset = 1000.0 + 250.0 * (region * per_region + index)
            h = _cancellation(g, h, offset, suffix=f"_{region}_{index}")
        h = _mlp_head(g, h, features, f"r{region}/out")
    y = _readout(g, h, features, 4, "head")
    g.output(y, FLOAT, [2, 4], "y")
    return g.model(opset, doc="sensitive: many cancellations over several FP16 regions")


def deep_mixed(
    layers: int = 12,
    features: int = 64,
    cancel_after: int | None = 3,
    overflow_after: int | None = 8,
    opset: int = 17,
) -> onnx.ModelProto:
    """A deep MLP (MatMul/Add/Relu layers) with a cancellation after layer 3 and a MatMul/Mul
    overflow chain after layer 8: a mid-size benchmark for ``--auto`` against bisection."""
    g = GraphBuilder("deep_mixed")
    x = g.input("x", FLOAT, [4, features])
    h = x
    for layer in range(layers):
        h = _mlp_head(g, h, features, f"layer{layer}")
        if layer == cancel_after:
            h = _cancellation(g, h, 1000.0)
        if layer == overflow_after:
            a = g.op("Mul", [h, g.const("amplify", _f32(2e4))], name="Amplify")
            m = g.op("MatMul", [a, g.weight("mix", [features, features], scale=3.0)], name="planted/Mix")
            h = g.op("Mul", [m, g.const("attenuate", _f32(1e-4))], name="planted/Attenuate")
    y = _readout(g, h, features, 10, "head")
    g.output(y, FLOAT, [4, 10], "y")
    return g.model(opset, doc="sensitive: deep MLP with a cancellation and an overflow chain")


SENSITIVE: dict[str, Callable[[], onnx.ModelProto]] = {
    "sensitive_pow_exp_chain": pow_exp_chain,
    "sensitive_layernorm_huge_variance": layernorm_huge_variance,
    "sensitive_long_softmax": long_softmax,
    "sensitive_long_reduction": long_reduction,
    "sensitive_matmul_overflow": matmul_overflow,
    "sensitive_cancellation": cancellation,
    "sensitive_two_regions": two_regions,
    "sensitive_two_culprits": lambda: two_regions(first_offset=500.0),
    "sensitive_many_culprits": many_culprits,
    "sensitive_deep_mixed": deep_mixed,
    "sensitive_deep_overflow": lambda: deep_mixed(cancel_after=None),
}

_CANCEL = frozenset({"planted/Offset", "planted/Unoffset"})
_OVERFLOW = frozenset({"planted/Mix", "planted/Attenuate"})
PLANTED: dict[str, Planted] = {
    "sensitive_pow_exp_chain": Planted(
        frozenset({"planted/Pow", "planted/Shrink", "planted/Exp", "planted/Rescale"}),
        "range",
    ),
    "sensitive_layernorm_huge_variance": Planted(
        frozenset({"planted/BigProjection", "planted/LayerNorm"}), "range"
    ),
    "sensitive_long_softmax": Planted(frozenset({"planted/Logits", "planted/Softmax"}), "range"),
    "sensitive_long_reduction": Planted(frozenset({"planted/ReduceSum"}), "range"),
    "sensitive_matmul_overflow": Planted(_OVERFLOW, "range"),
    "sensitive_cancellation": Planted(_CANCEL, "sensitivity"),
    "sensitive_two_regions": Planted(_CANCEL, "sensitivity"),
    "sensitive_two_culprits": Planted(
        _CANCEL | {"planted/FirstOffset", "planted/FirstUnoffset"}, "sensitivity"
    ),
    "sensitive_many_culprits": Planted(
        frozenset(
            f"planted/{kind}_{region}_{index}"
            for kind in ("Offset", "Unoffset")
            for region in range(3)
            for index in range(2)
        ),
        "sensitivity",
    ),
    "sensitive_deep_mixed": Planted(_CANCEL | _OVERFLOW, "mixed"),
    "sensitive_deep_overflow": Planted(_OVERFLOW, "range"),
}

__all__ = ["PLANTED", "SENSITIVE", "Planted"]
