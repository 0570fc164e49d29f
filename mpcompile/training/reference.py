"""FP16-faithful evaluation of small training graphs with onnx's reference evaluator.

ORT's CPU EP runs FP16 nodes in FP32 behind its own Casts and may drop the graph's Casts, so a CPU
training step shows neither FP16 overflow nor FP16 underflow. onnx's numpy reference evaluator
keeps every value in the type the graph declares (a Cast to FLOAT16 really rounds, a FLOAT16 Gemm
really stores FP16), so it shows what a device with FP16 kernels computes, up to accumulation order.
It knows standard ONNX ops; this module adds the few ORT training ops small graphs need.
Intended for tests and diagnosis on small graphs, not for speed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun


class _MicrosoftOp(OpRun):
    op_domain = "com.microsoft"


class SoftmaxCrossEntropyLossGrad(_MicrosoftOp):
    """d(loss)/d(logits) from the loss gradient, log-probabilities and labels (mean/sum/none)."""

    def _run(self, dY, log_prob, label, weight=None, ignore_index=None, reduction=None):
        reduction = reduction or "mean"
        if isinstance(reduction, bytes):
            reduction = reduction.decode()
        probabilities = np.exp(log_prob.astype(np.float32))
        classes = probabilities.shape[1]
        one_hot = np.moveaxis(np.eye(classes, dtype=np.float32)[label], -1, 1)
        grad = probabilities - one_hot
        if weight is not None:
            w = weight[label].astype(np.float32)
            grad = grad * np.expand_dims(w, 1)
        scale = np.asarray(dY, dtype=np.float32)
        if reduction == "mean":
            count = float(np.sum(weight[label])) if weight is not None else float(label.size)
            grad = grad * (scale / count)
        elif reduction == "sum":
            grad = grad * scale
        else:
            grad = grad * np.expand_dims(scale, 1)
        return (grad.astype(log_prob.dtype),)


class ReluGrad(_MicrosoftOp):
    def _run(self, dY, X):
        return (np.where(X > 0, dY, np.zeros_like(dY)).astype(dY.dtype),)


class InPlaceAccumulatorV2(_MicrosoftOp):
    """buffer = value if overwrite else buffer + value; returns (updated, buffer)."""

    def _run(self, buffer, value, overwrite=None):
        if overwrite is not None and bool(np.asarray(overwrite)):
            result = value.astype(buffer.dtype)
        else:
            result = (buffer + value).astype(buffer.dtype)
        return (np.array(True), result)


TRAINING_OPS = [SoftmaxCrossEntropyLossGrad, ReluGrad, InPlaceAccumulatorV2]


def evaluate(
    model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], output_names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Run ``model`` with onnx's reference evaluator and return the named values (intermediates too)."""
    evaluator = ReferenceEvaluator(model, new_ops=TRAINING_OPS)
    with np.errstate(all="ignore"):  # inf/NaN are expected when checking overflow handling
        results = evaluator.run(None, dict(feeds), intermediate=True)
    missing = [name for name in output_names if name not in results]
    if missing:
        raise KeyError(f"values not computed: {missing}")
    return {name: np.asarray(results[name]) for name in output_names}
