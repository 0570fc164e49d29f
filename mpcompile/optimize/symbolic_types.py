"""Types for ORT's fused contrib ops, from ORT's symbolic shape inference."""

from __future__ import annotations

import onnx

from mpcompile.optimize.quiet import logging_disabled

_INT_MAX = 2**31 - 1
# The steps of ``SymbolicShapeInference.infer_shapes`` (private, stable from onnxruntime 1.14 to
# 1.32): run one by one they leave a partial result when inference stops early, where the public
# function writes ``sym_shape_infer_temp.onnx`` into the working folder and raises.
_PRIVATE_STEPS = ("_preprocess", "_infer_impl", "_update_output_from_vi")
# What symbolic shape inference raises on graphs it cannot follow (its asserts, sympy's
# ValueError/TypeError subclasses, onnx's inference errors); anything else propagates.
_INFERENCE_ERRORS = (
    AssertionError,
    KeyError,
    IndexError,
    TypeError,
    ValueError,
    ZeroDivisionError,
    NotImplementedError,
    RuntimeError,
    onnx.shape_inference.InferenceError,
)


def annotate_types(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """Record value types and shapes, contrib ops included, with ORT's symbolic shape inference.

    onnx's own inference has no schemas for the fused ``com.microsoft`` ops, so without this their
    outputs would be untyped and the precision assignment would keep them FP32. Returns the
    annotated model and whether every value was inferred; a partial result is kept. Graph outputs
    keep their declared types. Without onnxruntime's inference steps (another version), the model
    comes back unchanged and incomplete.
    """
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:
        return model, False
    if not all(hasattr(SymbolicShapeInference, step) for step in _PRIVATE_STEPS):
        return model, False
    inference = SymbolicShapeInference(_INT_MAX, True, False, 0)
    try:
        with logging_disabled():
            inference._preprocess(model)
            complete = False
            while inference.run_:
                complete = inference._infer_impl()
            inference._update_output_from_vi()
    except _INFERENCE_ERRORS:
        return model, False
    annotated = inference.out_mp_
    _keep_declared_outputs(annotated, model)
    return annotated, bool(complete)


def _keep_declared_outputs(annotated: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """A partial inference can replace a typed graph output by an untyped guess: put the declared one
    back, and drop value infos without an element type."""
    declared = {output.name: output for output in original.graph.output}
    for output in annotated.graph.output:
        before = declared.get(output.name)
        if before is not None and _elem_type(output) != _elem_type(before):
            output.CopyFrom(before)
    typed = [info for info in annotated.graph.value_info if _elem_type(info) != 0]
    del annotated.graph.value_info[:]
    annotated.graph.value_info.extend(typed)


def _elem_type(info: onnx.ValueInfoProto) -> int | None:
    """The tensor element type (0: undefined), or None for non-tensor values."""
    return info.type.tensor_type.elem_type if info.type.HasField("tensor_type") else None
