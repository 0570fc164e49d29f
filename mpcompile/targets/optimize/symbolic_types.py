"""Types for ORT's fused contrib ops, from ORT's symbolic shape inference."""

from __future__ import annotations

import onnx
import onnx_ir as ir

from mpcompile.targets.optimize.quiet import logging_disabled

_INT_MAX = 2**31 - 1
# The steps of ``SymbolicShapeInference.infer_shapes`` (private, stable from onnxruntime 1.14 to
# 1.32): run one by one they leave a partial result when inference stops early, where the public
# function writes ``sym_shape_infer_temp.onnx`` into the working folder and raises. Guarded by a
# feature check (the steps, then the ``run_`` flag and the ``out_mp_`` result they use); the
# fallback when any is missing: the model unchanged, reported incomplete, so contrib-op outputs
# stay untyped and their nodes FP32 (tests/test_private_api_fallbacks.py).
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
    """Record value types, contrib ops included, with ORT's symbolic shape inference.

    onnx's own inference has no schemas for the fused ``com.microsoft`` ops, so without this their
    outputs would be untyped and the precision assignment would keep them FP32. Only element types
    are kept: with ``auto_merge`` the inference merges symbolic dims that differ (a KV cache's
    ``past + sequence`` taken for ``sequence``), and ORT plans buffer reuse from declared shapes
    ("Shape mismatch attempting to re-use buffer"). Graph outputs keep their declarations. Returns
    the annotated model and whether every value was inferred; a partial result is kept. Without
    onnxruntime's inference steps (another version), the model comes back unchanged and incomplete.
    """
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:
        return model, False
    if not all(hasattr(SymbolicShapeInference, step) for step in _PRIVATE_STEPS):
        return model, False
    inference = SymbolicShapeInference(_INT_MAX, True, False, 0)
    if not hasattr(inference, "run_"):
        return model, False
    try:
        with logging_disabled():
            inference._preprocess(model)
            complete = False
            while inference.run_:
                complete = inference._infer_impl()
            inference._update_output_from_vi()
    except _INFERENCE_ERRORS:
        return model, False
    annotated = getattr(inference, "out_mp_", None)
    if not isinstance(annotated, onnx.ModelProto):
        return model, False
    _keep_declarations_and_types_only(annotated, model)
    return annotated, bool(complete)


def complete_types(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """Type what ORT's symbolic inference left untyped, node by node (``propagate_types``).

    The inference stops at ops it has no rule for (``FusedConv``, ``FusedMatMul``) and leaves
    every value after them untyped: their nodes would all stay FP32. Returns the model and
    whether every node output now has a type.
    """
    from mpcompile.policy.type_propagation import propagate_types

    work = ir.from_proto(model)
    if not propagate_types(work):
        return model, False
    complete = all(
        value.dtype is not None or not value.name
        for graph in (work.graph, *work.graph.subgraphs())
        for node in graph
        for value in node.outputs
    )
    return ir.to_proto(work), complete


def _keep_declarations_and_types_only(annotated: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Graph outputs as declared in ``original``; inferred value infos reduced to their element
    type (untyped ones dropped)."""
    del annotated.graph.output[:]
    annotated.graph.output.extend(original.graph.output)
    typed = []
    for info in annotated.graph.value_info:
        if _elem_type(info) == 0:
            continue
        if _elem_type(info) is not None:
            info.type.tensor_type.ClearField("shape")
        typed.append(info)
    del annotated.graph.value_info[:]
    annotated.graph.value_info.extend(typed)


def _elem_type(info: onnx.ValueInfoProto) -> int | None:
    """The tensor element type (0: undefined), or None for non-tensor values."""
    return info.type.tensor_type.elem_type if info.type.HasField("tensor_type") else None
