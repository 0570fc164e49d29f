"""The default precision policy: which op goes in which class, and why.

This is the one file that says which ops mpcompile runs in low precision. The classes
follow TensorFlow's auto mixed precision (allow / infer / clear / deny lists) under
names that say what they do:

* ALLOW: compute-heavy ops that gain from FP16/BF16 (tensor cores, half the bytes).
  They seed low-precision regions.
* FOLLOW: element-wise ops, activations and normalizations that are safe in low
  precision but not worth a Cast on their own. They join a region only when they
  sit between allow ops.
* PASS_THROUGH: data movement. No arithmetic, so precision only decides the bytes
  moved; they join any low-precision region they touch.
* BLOCK: numerically unsafe in FP16 (large dynamic range, long accumulations, values
  that index or sample). They stay FP32, and so do follow ops downstream of them that
  lead to further block or follow ops.

Sources: ONNX operator semantics; ONNX Runtime's kernels (its CUDA Softmax,
LayerNormalization, BatchNormalization, pooling and normalization kernels take FP16 in and
out but accumulate in FP32, so they are FOLLOW here even though PyTorch autocast lists
softmax/layer_norm as FP32 ops: PyTorch's lists protect its own kernels); PyTorch
autocast's CUDA op lists; TensorFlow AMP's lists; NVIDIA ModelOpt AutoCast's defaults.
Deviations from those are commented at the op.
"""

from __future__ import annotations

ONNX = ""
MICROSOFT = "com.microsoft"

# (domain, op_type) keys. Ops outside every list are "unlisted" and stay FP32.
ALLOW: frozenset[tuple[str, str]] = frozenset(
    {(ONNX, op) for op in ("MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "Attention")}
    # Recurrent cells: PyTorch autocast runs lstm/gru cells in FP16; ORT's CUDA RNN kernels
    # accumulate in FP32 through cuDNN.
    | {(ONNX, op) for op in ("LSTM", "GRU", "RNN")}
    | {
        (MICROSOFT, op)
        for op in (
            "Attention",
            "MultiHeadAttention",
            "GroupQueryAttention",
            "PackedAttention",
            "PackedMultiHeadAttention",
            "FusedMatMul",
            "FusedConv",
            "DecoderMaskedMultiHeadAttention",
        )
    }
)

FOLLOW: frozenset[tuple[str, str]] = frozenset(
    {
        (ONNX, op)
        for op in (
            # arithmetic and comparisons
            "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Sum", "Mean", "Min", "Max", "Clip",
            "Sqrt", "Floor", "Ceil", "Round", "Sign", "Where",
            "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "IsNaN", "IsInf",
            # bounded activations; Erf is bounded so Erf-GELU is safe
            "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid",
            "HardSwish", "Tanh", "Erf", "Gelu", "Softsign", "Shrink", "ThresholdedRelu", "Mish", "Swish",
            "Sin", "Cos", "Dropout", "Trilu",
            # ORT's kernels accumulate these in FP32 (see module docstring)
            "Softmax", "LayerNormalization", "BatchNormalization", "InstanceNormalization",
            "GroupNormalization", "RMSNormalization", "AveragePool", "GlobalAveragePool",
            "RotaryEmbedding",
            # ORT's RMSNorm in the default domain (its fusions emit it; onnx has no such op)
            "SimplifiedLayerNormalization",
        )
    }
    | {
        (MICROSOFT, op)
        for op in (
            "BiasGelu", "FastGelu", "Gelu", "QuickGelu", "BiasAdd", "BiasSplitGelu", "BiasDropout",
            "SkipLayerNormalization", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
            "LayerNormalization", "RotaryEmbedding", "GroupNorm", "SkipGroupNorm", "EmbedLayerNormalization",
        )
    }
)  # fmt: skip

PASS_THROUGH: frozenset[tuple[str, str]] = frozenset(
    {
        (ONNX, op)
        for op in (
            "Reshape", "Transpose", "Concat", "Slice", "Gather", "GatherElements", "GatherND",
            "Squeeze", "Unsqueeze", "Split", "Pad", "Expand", "Tile", "Identity", "Flatten",
            "MaxPool", "GlobalMaxPool", "MaxUnpool", "DepthToSpace", "SpaceToDepth",
            "Resize", "Upsample", "ScatterND", "ScatterElements", "Scatter", "ReverseSequence",
            "Compress", "ReduceMax", "ReduceMin", "ArgMax", "ArgMin", "Hardmax", "NonZero",
            "Cast", "CastLike", "Shape", "Size", "OptionalHasElement",
        )
    }
)  # fmt: skip

# BLOCK ops whose risk one FP32 reference run can measure: ``--auto`` (``measured_ops``) treats them
# as FOLLOW ops, and its range rules (mpcompile/analysis/range_rules.py) and accuracy search keep them
# FP32 where the measured values call for it. The rest of BLOCK stays blocked under --auto:
# index/coordinate ops (a rounded index is a wrong element), random generators, signal ops, losses,
# Det (cancellation in a long product-sum that a range does not show) and scatter reductions.
MEASURABLE: frozenset[tuple[str, str]] = frozenset(
    {
        (ONNX, op)
        for op in (
            # exponentials and powers overflow FP16 (max 65504) quickly; under --auto the
            # magnitudes of their inputs and outputs (overflow headroom, flush-to-zero mass) are measured
            "Exp", "Pow", "Log", "Softplus", "LogSoftmax", "Reciprocal", "Tan", "Cosh", "Sinh",
            "Acos", "Asin", "Atan", "Acosh", "Asinh", "Atanh",
            # long accumulations: the sum of many FP16 values loses precision or overflows.
            # ORT's CUDA reductions accumulate in FP32 but write the FP16 result, which for
            # ReduceSum of large tensors still overflows; autocast and TF-AMP block them too.
            # Under --auto the depth follows from the measured shapes, the size of the sum (or
            # its hidden accumulator: sum of squares, sum of exp) from the values.
            "ReduceSum", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
            "ReduceLogSumExp", "ReduceSumSquare", "CumSum", "LpNormalization", "LpPool", "LRN",
            "MeanVarianceNormalization",
        )
    }
)  # fmt: skip

BLOCK: frozenset[tuple[str, str]] = MEASURABLE | frozenset(
    {
        (ONNX, op)
        for op in (
            "Det",
            # losses
            "SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss",
            # values used as indices, coordinates or boxes
            "Range", "TopK", "NonMaxSuppression", "RoiAlign", "MaxRoiPool", "GridSample",
            "AffineGrid", "Col2Im",
            # random generators: the distribution's tails need FP32
            "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
            "Bernoulli", "Multinomial",
            # signal processing
            "DFT", "STFT", "MelWeightMatrix", "HannWindow", "HammingWindow", "BlackmanWindow",
        )
    }
)  # fmt: skip

# Pass-through ops that accumulate when an attribute asks them to: with these attribute
# values they are blocked (a scatter with reduction="add" sums in the output's type).
BLOCK_WHEN_ATTRIBUTE: dict[tuple[str, str], tuple[str, frozenset[str]]] = {
    (ONNX, "ScatterElements"): ("reduction", frozenset({"add", "mul", "min", "max"})),
    (ONNX, "ScatterND"): ("reduction", frozenset({"add", "mul", "min", "max"})),
}

# Whole domains kept FP32: the classical-ML operators have no FP16 types.
BLOCKED_DOMAINS: frozenset[str] = frozenset({"ai.onnx.ml"})

# Inputs read only for their shape (or nothing at all): never worth a Cast.
SHAPE_ONLY_INPUTS: dict[tuple[str, str], frozenset[int]] = {
    (ONNX, "Shape"): frozenset({0}),
    (ONNX, "Size"): frozenset({0}),
    (ONNX, "RandomNormalLike"): frozenset({0}),
    (ONNX, "RandomUniformLike"): frozenset({0}),
    (ONNX, "EyeLike"): frozenset({0}),
}

# Quantization ops: nodes next to them form quantized paths that stay untouched.
QDQ_OPS: frozenset[tuple[str, str]] = frozenset(
    {
        (ONNX, "QuantizeLinear"),
        (ONNX, "DequantizeLinear"),
        (MICROSOFT, "QuantizeLinear"),
        (MICROSOFT, "DequantizeLinear"),
    }
)

# Control flow: bodies are converted, the node's own interface stays as it is.
CONTROL_FLOW: frozenset[tuple[str, str]] = frozenset({(ONNX, "If"), (ONNX, "Loop"), (ONNX, "Scan")})
