"""Is an optimised model one mpcompile can hand on? The checks, and what each failure blames.

A candidate passes when it keeps the input's graph inputs and outputs, holds no ORT-internal
ai.onnx op, has a target kernel for every fused op the optimisation created (in the conversion's
low precision wherever the target runs the heavy op it replaces in that precision), passes
``onnx.checker.check_model(full_check=True)`` and loads in an ORT session on the provider the
optimisation ran on. A fused op that only the target's provider runs (e.g. ``RelativePositionBias``,
CUDA only) cannot load on a CPU-only onnxruntime; that load is then skipped and said so.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Iterator

import onnx
import onnx_ir as ir

from mpcompile.evaluate.ort_session import is_onnxruntime_error
from mpcompile.targets.base import Target
from mpcompile.targets.optimize.fusions import (
    PYTHON_FUSION_FLAGS,
    REPLACED_HEAVY_OPS,
    SESSION_FUSIONS,
    op_key,
)
from mpcompile.targets.optimize.lowering import is_standard_op
from mpcompile.targets.optimize.ort_session import load_in_session, near_protobuf_limit

_FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
_MISSING_KERNEL = re.compile(r"implementation for (\w+)\(\d+\) node")

Signature = tuple[tuple[tuple[str, int], ...], tuple[tuple[str, int], ...]]


@dataclasses.dataclass(frozen=True)
class Problem:
    """Why a candidate cannot be used, and the fused op to blame when one is."""

    description: str
    op: tuple[str, str] | None = None

    @property
    def session_fusions(self) -> tuple[str, ...]:
        """ORT graph transformers to disable for it (session levels)."""
        return SESSION_FUSIONS.get(self.op, ()) if self.op else ()

    @property
    def python_flags(self) -> tuple[str, ...]:
        """``FusionOptions`` flags to switch off for it (transformer optimiser)."""
        return PYTHON_FUSION_FLAGS.get(self.op, ()) if self.op else ()


@dataclasses.dataclass
class CheckResult:
    problems: list[Problem]
    unchecked: list[str]  # what could not be checked on this machine, and why


@dataclasses.dataclass(frozen=True)
class CheckContext:
    """What every candidate of one ``optimize_model`` call is checked against."""

    reference_io: Signature
    input_ops: frozenset[tuple[str, str]]  # ops already in the input (not the optimisation's doing)
    target: Target
    session_provider: str
    session_target: Target  # kernels of the session's provider
    onnxruntime: object
    folder: pathlib.Path
    low_dtype: ir.DataType = ir.DataType.FLOAT16  # the precision the model is converted to next


def io_signature(model: onnx.ModelProto) -> Signature:
    """Graph input and output names with their element types (initializers listed as inputs excluded)."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    inputs = tuple(
        (value.name, value.type.tensor_type.elem_type)
        for value in model.graph.input
        if value.name not in initializers
    )
    outputs = tuple((value.name, value.type.tensor_type.elem_type) for value in model.graph.output)
    return inputs, outputs


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of the subgraphs in its nodes."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from all_nodes(attribute.g)
            for subgraph in attribute.graphs:
                yield from all_nodes(subgraph)


def model_ops(model: onnx.ModelProto) -> frozenset[tuple[str, str]]:
    """``(domain, op)`` of every node, subgraphs included."""
    return frozenset(op_key(node.domain, node.op_type) for node in all_nodes(model.graph))


def check_candidate(candidate: onnx.ModelProto, context: CheckContext) -> CheckResult:
    """The problems that keep ``candidate`` from being used (empty: it can be)."""
    if io_signature(candidate) != context.reference_io:
        return CheckResult([Problem("the graph inputs or outputs changed")], [])
    opsets = {entry.domain: entry.version for entry in candidate.opset_import}
    ai_onnx = opsets.get("", opsets.get("ai.onnx", 1))
    problems: list[Problem] = []
    target_only: set[str] = set()
    for domain, op in sorted(model_ops(candidate)):
        if domain == "":
            if not is_standard_op(op, ai_onnx):
                problems.append(
                    Problem(f"{op} is ORT-internal (onnx has no such op at opset {ai_onnx})", (domain, op))
                )
            continue
        if (domain, op) in context.input_ops:
            continue
        opset = opsets.get(domain, 1)
        refusal = fused_op_refusal(context.target, (domain, op), opset, ai_onnx, context.low_dtype)
        if refusal:
            problems.append(Problem(refusal, (domain, op)))
        elif not _has_kernel(context.session_target, domain, op, opset):
            target_only.add(op)
    if problems:
        return CheckResult(problems, [])
    checker_failure = _checker_failure(candidate, context.folder)
    if checker_failure:
        return CheckResult([Problem(f"fails onnx.checker: {checker_failure}")], [])
    if target_only:
        ops = ", ".join(sorted(target_only))
        note = (
            f"not loaded in onnxruntime here: {ops} run only on {context.target.provider}, "
            "which the installed onnxruntime lacks"
            if context.target.provider
            else f"not loaded in onnxruntime here: {ops} have no {context.session_provider} kernel"
        )
        return CheckResult([], [note])
    return CheckResult(_load_problems(candidate, context), [])


def fused_op_refusal(target: Target, key: tuple[str, str], opset: int, ai_onnx: int, low: ir.DataType) -> str:
    """Why ``target`` cannot take the fused op ``key`` (empty: it can).

    Refused: an op without a kernel on the target in any float type, and an op the target runs
    only in FP32 while it runs the heavy op the fusion replaced in ``low`` precision (the
    fusion would move that op's FLOPs to FP32).
    """
    domain, op = key
    if not _has_kernel(target, domain, op, opset):
        return f"{op} has no {target.provider} kernel"
    replaced = REPLACED_HEAVY_OPS.get(key)
    if (
        replaced is not None
        and not target.supports(domain, op, opset, low)
        and target.supports("", replaced, ai_onnx, low)
    ):
        precision = "float16" if low == ir.DataType.FLOAT16 else "bfloat16"
        return f"{op} has no {target.provider} {precision} kernel ({replaced}, which it replaces, has one)"
    return ""


def _has_kernel(target: Target, domain: str, op: str, opset: int) -> bool:
    return any(target.supports(domain, op, opset, dtype) for dtype in _FLOAT_TYPES)


def _checker_failure(model: onnx.ModelProto, folder: pathlib.Path) -> str:
    """The first line of ``onnx.checker``'s full check, or "" when it passes."""
    try:
        if near_protobuf_limit(model):
            path = folder / "checked.onnx"
            onnx.save_model(model, str(path), save_as_external_data=True, location="checked.data")
            onnx.checker.check_model(str(path), full_check=True)
        else:
            onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return first_line(exc)
    return ""


def _load_problems(model: onnx.ModelProto, context: CheckContext) -> list[Problem]:
    try:
        load_in_session(context.onnxruntime, model, context.folder, context.session_provider)
    except Exception as exc:
        if not is_onnxruntime_error(exc):
            raise
        missing = _MISSING_KERNEL.search(str(exc))
        blamed = None
        if missing:
            blamed = next((key for key in model_ops(model) if key[1] == missing.group(1)), None)
        return [
            Problem(f"onnxruntime cannot load it on {context.session_provider}: {first_line(exc)}", blamed)
        ]
    return []


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name if there is none)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
