"""Bring an exported forward model into the form onnxruntime-training 1.19.2 builds artifacts from.

What today's exporters write and ORT's ``generate_artifacts`` needs differ in a few places:

- local functions (the dynamo exporter can emit them): ORT's gradient builder differentiates the
  main graph only, so they are inlined;
- the ONNX opset: onnxruntime 1.19 knows opsets up to ``MAX_TRAINING_OPSET``; a newer model is
  brought down with ``onnx.version_converter``, or refused with the re-export to make;
- the IR version: 1.19.2 loads IR <= 10 (``model_io.MAX_IR_VERSION``), set when serializing;
- shapes: ORT's CrossEntropyLoss block derives the ``labels`` input from the scores output's shape
  (all dimensions but the last), so that output needs a known rank: shape inference fills in
  outputs and value_info the export left without shapes, and a rank still unknown is refused.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
import onnx_ir.passes.common

from mpcompile import errors
from mpcompile.io import model_io

# onnxruntime 1.19's newest ONNX opset (its operator kernels and gradient builders stop there).
MAX_TRAINING_OPSET = 21


def prepare_forward_model(model: ir.Model) -> ir.Model:
    """Inline local functions and bring the opset within ``MAX_TRAINING_OPSET``; return the model
    to convert (``model`` itself, changed in place, unless the opset had to be converted)."""
    if model.functions:
        onnx_ir.passes.common.InlinePass()(model)
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    if opset <= MAX_TRAINING_OPSET:
        return model
    proto = ir.to_proto(model)
    try:
        converted = onnx.version_converter.convert_version(proto, MAX_TRAINING_OPSET)
    except Exception as exc:  # onnx's converter raises RuntimeError/ValueError/C++ errors alike
        raise errors.UnsupportedOpsetError(
            f"opset {opset} is newer than onnxruntime-training 1.19.2 knows ({MAX_TRAINING_OPSET}) and "
            f"onnx's version converter cannot bring it down ({_first_line(exc)}); re-export with "
            f"torch.onnx.export(..., opset_version={MAX_TRAINING_OPSET})"
        ) from None
    return ir.from_proto(converted)


def training_proto(model: ir.Model) -> onnx.ModelProto:
    """The proto handed to ``generate_artifacts``: IR version capped, shapes inferred where the
    export left them out (best effort: a model onnx cannot infer goes as it is)."""
    proto = ir.to_proto(model)
    proto.ir_version = min(proto.ir_version, model_io.MAX_IR_VERSION)
    try:
        return onnx.shape_inference.infer_shapes(proto)
    except Exception:  # onnx raises InferenceError or C++ errors; ORT reports what it then needs
        return proto


def check_loss_input(proto: onnx.ModelProto, loss_input: str, loss: str) -> int | None:
    """The loss input's rank for crossentropy (``None`` for other losses); refuse, in one line, a
    scores output whose rank ORT's CrossEntropyLoss block cannot read."""
    if loss != "crossentropy":
        return None
    output = next(value for value in proto.graph.output if value.name == loss_input)
    tensor = output.type.tensor_type
    rank = len(tensor.shape.dim) if tensor.HasField("shape") else None
    if rank is None or rank < 2:
        described = "no known shape" if rank is None else f"rank {rank}"
        raise errors.TrainingError(
            f"output {loss_input!r} has {described}; crossentropy needs scores [batch, ..., classes] "
            "(rank >= 2): pick another output with --loss-input, or another --loss"
        )
    return rank


def loss_input_name(model: ir.Model, requested: str | None) -> str:
    """The graph output the loss is computed on: ``requested``, else the first output."""
    names = [value.name or "" for value in model.graph.outputs]
    if not names:
        raise errors.TrainingError("the model has no outputs to compute a loss on")
    if requested is None:
        return names[0]
    if requested not in names:
        raise errors.TrainingError(
            f"--loss-input {requested!r} is not a graph output; outputs: {', '.join(names)}"
        )
    return requested


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
