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


class LayerNormalizationGrad(_MicrosoftOp):
    """(dY, X, scale, mean, inv_std_dev) -> (dX, d_scale, d_bias), normalized over axes >= ``axis``.

    Computes in FP32 and returns each gradient in its input's type, as ORT's kernels do."""

    def _run(self, dY, X, scale, mean, inv_std_dev, axis=None, epsilon=None, stash_type=None):
        axis = -1 if axis is None else axis
        axis = axis % X.ndim
        normalized = tuple(range(axis, X.ndim))
        leading = tuple(range(axis))
        dy, x = dY.astype(np.float32), X.astype(np.float32)
        x_hat = (x - mean.astype(np.float32)) * inv_std_dev.astype(np.float32)
        d_bias = dy.sum(axis=leading)
        d_scale = (dy * x_hat).sum(axis=leading)
        d_x_hat = dy * scale.astype(np.float32)
        d_x = inv_std_dev.astype(np.float32) * (
            d_x_hat
            - d_x_hat.mean(axis=normalized, keepdims=True)
            - x_hat * (d_x_hat * x_hat).mean(axis=normalized, keepdims=True)
        )
        return (d_x.astype(X.dtype), d_scale.astype(scale.dtype), d_bias.astype(scale.dtype))


class ConvGrad(_MicrosoftOp):
    """(dY, X, W) -> (dX, dW, dB) for 2-D convolutions (group 1, dilation 1, explicit pads).

    Computes in FP32 and returns each gradient in its input's type, as ORT's kernels do."""

    def _run(
        self, dY, X, W, auto_pad=None, dilations=None, group=None, kernel_shape=None, pads=None, strides=None
    ):
        if X.ndim != 4 or (group or 1) != 1 or any(d != 1 for d in (dilations or [1, 1])):
            raise NotImplementedError("reference ConvGrad: 2-D, group 1, dilation 1 only")
        if auto_pad not in (None, "NOTSET", b"NOTSET"):
            raise NotImplementedError("reference ConvGrad: explicit pads only")
        top, left, bottom, right = pads or (0, 0, 0, 0)
        stride_h, stride_w = strides or (1, 1)
        dy, x, w = dY.astype(np.float32), X.astype(np.float32), W.astype(np.float32)
        padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
        d_padded = np.zeros_like(padded)
        d_w = np.zeros_like(w)
        out_h, out_w = dy.shape[2:]
        for i in range(w.shape[2]):
            for j in range(w.shape[3]):
                rows = slice(i, i + stride_h * (out_h - 1) + 1, stride_h)
                cols = slice(j, j + stride_w * (out_w - 1) + 1, stride_w)
                d_w[:, :, i, j] = np.einsum("nkhw,nchw->kc", dy, padded[:, :, rows, cols])
                d_padded[:, :, rows, cols] += np.einsum("nkhw,kc->nchw", dy, w[:, :, i, j])
        d_x = d_padded[:, :, top : top + x.shape[2], left : left + x.shape[3]]
        return (d_x.astype(X.dtype), d_w.astype(W.dtype), dy.sum(axis=(0, 2, 3)).astype(W.dtype))


class MaxPoolGrad(OpRun):
    """(dY, Indices) -> dX: each gradient goes to the position its max came from (ORT registers it
    in the ONNX domain). The input shape is recovered from kernel, strides and pads."""

    op_domain = ""

    def _run(
        self,
        dY,
        indices,
        auto_pad=None,
        ceil_mode=None,
        dilations=None,
        kernel_shape=None,
        pads=None,
        storage_order=None,
        strides=None,
    ):
        spatial = dY.ndim - 2
        pads = pads or [0] * (2 * spatial)
        strides = strides or [1] * spatial
        shape = list(dY.shape[:2]) + [
            (dY.shape[2 + k] - 1) * strides[k] + kernel_shape[k] - pads[k] - pads[k + spatial]
            for k in range(spatial)
        ]
        d_x = np.zeros(int(np.prod(shape)), dtype=np.float32)
        np.add.at(d_x, indices.reshape(-1), dY.astype(np.float32).reshape(-1))
        return (d_x.reshape(shape).astype(dY.dtype),)


class InPlaceAccumulatorV2(_MicrosoftOp):
    """buffer = value if overwrite else buffer + value; returns (updated, buffer)."""

    def _run(self, buffer, value, overwrite=None):
        if overwrite is not None and bool(np.asarray(overwrite)):
            result = value.astype(buffer.dtype)
        else:
            result = (buffer + value).astype(buffer.dtype)
        return (np.array(True), result)


TRAINING_OPS = [
    SoftmaxCrossEntropyLossGrad,
    ReluGrad,
    LayerNormalizationGrad,
    ConvGrad,
    MaxPoolGrad,
    InPlaceAccumulatorV2,
]


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
