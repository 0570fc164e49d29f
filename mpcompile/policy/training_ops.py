"""Which ops of an ORT training graph may compute in low precision, and how they are typed.

ONNX schemas do not know ORT's gradient ops (``com.microsoft`` ReluGrad, ConvGrad, ...; ORT even
registers some, like MaxPoolGrad, in the ONNX domain), so each op we allow in FP16/BF16 lists its
*data slots*: the inputs and outputs bound to the node's float type variable. Everything else about
the node (indices, labels, flags, LayerNormalization's stashed mean and 1/stddev) keeps its type.

An op that is not listed here stays FP32 in training graphs. That covers, on purpose:
- losses and their gradients (SoftmaxCrossEntropyLoss[Grad], ...): the loss subgraph stays FP32;
- normalizations and their gradients (LayerNormalization[Grad], BatchNormalization*): their
  statistics and the parameter gradients they produce are long reductions;
- reductions (ReduceSum produces bias gradients), Softmax/Exp/Log/Pow;
- InPlaceAccumulatorV2 and the optimizer: accumulation and updates stay on FP32 master weights.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class OpRule:
    """Typing of one op in low precision.

    ``inputs``/``outputs`` are the indices of the slots bound to the float type variable
    (``None`` means every slot). ``allow`` ops seed low precision; the others (``follow``)
    join it when one of their data inputs already is low precision.
    """

    inputs: tuple[int, ...] | None
    outputs: tuple[int, ...] | None
    allow: bool = False

    def data_inputs(self, count: int) -> list[int]:
        return list(range(count)) if self.inputs is None else [i for i in self.inputs if i < count]

    def data_outputs(self, count: int) -> list[int]:
        return list(range(count)) if self.outputs is None else [i for i in self.outputs if i < count]


_ALL = OpRule(None, None)
_FIRST = OpRule((0,), (0,))
_PAIR = OpRule((0, 1), (0,))

ONNX = ""
MS = "com.microsoft"

# (domain, op_type) -> rule
LOW_PRECISION_OPS: dict[tuple[str, str], OpRule] = {
    # Compute-heavy ops: the reason to train in low precision. Forward and gradient alike
    # (ORT's gradient builder expresses Gemm/MatMul gradients as Gemm/MatMul/FusedMatMul).
    (ONNX, "MatMul"): OpRule((0, 1), (0,), allow=True),
    (ONNX, "Gemm"): OpRule((0, 1, 2), (0,), allow=True),
    (ONNX, "Conv"): OpRule((0, 1, 2), (0,), allow=True),
    (ONNX, "ConvTranspose"): OpRule((0, 1, 2), (0,), allow=True),
    (MS, "FusedMatMul"): OpRule((0, 1), (0,), allow=True),
    # ConvGrad(dY, X, W) -> (dX, dW, dB): all bound to T.
    (MS, "ConvGrad"): OpRule((0, 1, 2), (0, 1, 2), allow=True),
    # Element-wise ops and activations: follow their inputs.
    (ONNX, "Add"): _PAIR,
    (ONNX, "Sub"): _PAIR,
    (ONNX, "Mul"): _PAIR,
    (ONNX, "Relu"): _FIRST,
    (ONNX, "LeakyRelu"): _FIRST,
    (ONNX, "Sigmoid"): _FIRST,
    (ONNX, "Tanh"): _FIRST,
    (ONNX, "Neg"): _FIRST,
    (ONNX, "Sum"): _ALL,
    # Activation gradients: (dY, X or Y) -> dX, one type variable T.
    (MS, "ReluGrad"): _PAIR,
    (MS, "SigmoidGrad"): _PAIR,
    (MS, "TanhGrad"): _PAIR,
    (MS, "GeluGrad"): _PAIR,
    (MS, "FastGeluGrad"): _PAIR,
    (MS, "QuickGeluGrad"): _PAIR,
    (MS, "LeakyReluGrad"): _PAIR,
    # Data movement: first input carries the data, the rest are shapes/axes/indices.
    (ONNX, "Identity"): _FIRST,
    (ONNX, "Reshape"): _FIRST,
    (ONNX, "Flatten"): _FIRST,
    (ONNX, "Transpose"): _FIRST,
    (ONNX, "Squeeze"): _FIRST,
    (ONNX, "Unsqueeze"): _FIRST,
    (ONNX, "Expand"): _FIRST,
    (ONNX, "Slice"): _FIRST,
    (ONNX, "Concat"): _ALL,
    (ONNX, "Split"): OpRule((0,), None),
    # MaxPool's second output (indices) is INT64.
    (ONNX, "MaxPool"): OpRule((0,), (0,)),
    (ONNX, "AveragePool"): _FIRST,
    # Not listed: MaxPoolGrad/AveragePoolGrad. onnxruntime-training 1.19.2 crashes (segfault) when
    # it creates a CPU session for a training graph with an FP16 MaxPoolGrad; they only move data.
}

# ORT's loss blocks (onnxruntime.training.onnxblock) name their nodes "onnx::<Op>::<n>", and the
# gradient builder names each gradient node "<forward node name>_Grad/...". Nodes with this prefix
# form the loss subgraph and its gradient, which stay FP32 even when made of follow ops (MSELoss's
# Sub/Pow, BCEWithLogitsLoss's Sigmoid, ...).
LOSS_SUBGRAPH_NODE_PREFIX = "onnx::"

# Forward ops the training policy keeps FP32 on top of the core policy, because of the gradient
# ORT builds for them: an FP16 MaxPool gets an FP16 MaxPoolGrad (see above); an FP16
# LayerNormalization gets a LayerNormalizationGrad that ORT's CPU EP has no FP16 kernel for, so it
# inlines the op's function body, written for opset < 18 (ReduceMean with an ``axes`` attribute):
# at opset >= 18 the training graph does not load. Keeping it FP32 also matches `convert
# --training` (LayerNormalization[Grad] stays FP32 there), so both paths compute it alike.
FORWARD_BLOCK_OPS = ("MaxPool", "LayerNormalization")

# ORT registers these training ops in the ONNX domain; the onnx checker does not know them.
ORT_TRAINING_OPS_IN_ONNX_DOMAIN = frozenset(
    {
        "MaxPoolGrad",
        "AveragePoolGrad",
        "ConvGrad",
        "SoftmaxGrad",
        "LogSoftmaxGrad",
        "GatherGrad",
        "DropoutGrad",
    }
)


def rule_for(domain: str, op_type: str) -> OpRule | None:
    """The low-precision typing rule of an op, or None if it stays FP32 in training graphs."""
    return LOW_PRECISION_OPS.get(("" if domain == "ai.onnx" else domain, op_type))
