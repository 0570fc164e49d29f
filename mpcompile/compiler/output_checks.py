"""The checks a conversion's output must pass: every check its input passes.

Most models pass ``onnx.checker``'s full check, and so must their conversions. Two kinds of input
do not, and are converted all the same:

- Graphs holding ONNX Runtime's default-domain ops (``SimplifiedLayerNormalization``, ...): onnx
  knows no schema for them. The output is then checked by the full checker on everything else
  (those nodes hidden, ``io/ort_domain.py``), by ORT's schemas for the types of ORT's ops, and by
  an ORT load (CPU) where every op has a CPU kernel.
- Models that fail the full check but pass the plain one (declared shapes that contradict
  inference, say) and load in ORT ("lenient" input): the output must pass the plain check and
  load in ORT; a note says why the model was accepted.

Whatever the input, ORT's contrib ops of the output (any domain) must be typed as ORT's schemas
allow. A failure the input shares is the user's (``InvalidModelError``); one it does not is a bug
in mpcompile (``AssertionError``).
"""

from __future__ import annotations

import os
import pathlib
import tempfile

import onnx
import onnx_ir as ir

from mpcompile import errors
from mpcompile.io.ort_domain import hidden_ort_ops
from mpcompile.irtools.graphs import ai_onnx_opset, model_graphs
from mpcompile.policy.op_types import schema_type_errors
from mpcompile.targets.ort_schemas import ort_schema

CHECKER_ERRORS = (onnx.checker.ValidationError, onnx.shape_inference.InferenceError)
ModelSource = onnx.ModelProto | ir.Model | str | os.PathLike
_SHOWN = 3


def check_output(
    converted: onnx.ModelProto | str | os.PathLike, original: ModelSource, written: ir.Model | None = None
) -> str | None:
    """Check a conversion against its input (see the module docstring); returns a note when the
    output was checked otherwise than by the full checker alone, else None. ``written``: the IR
    ``converted`` was saved from, if at hand; the checks that read IR read it instead of parsing
    the output again (onnx's checker and ORT still read the written file)."""
    hidden: list[str] = []
    try:
        hidden = _onnx_check(converted, full_check=True, written=written)
    except CHECKER_ERRORS as exc:
        lenient = _lenient_reason(original)  # raises when the input fails (or passes) the full check too
        try:
            hidden = _onnx_check(converted, full_check=False, written=written)
        except CHECKER_ERRORS as plain_exc:
            raise AssertionError(
                f"mpcompile produced a model that fails the plain ONNX check its input passes (a bug): {plain_exc}"
            ) from exc
    else:
        lenient = None
    converted_ir = written if written is not None else _as_ir(converted)
    _check_ort_typing(converted_ir, original)
    if not hidden and lenient is None:
        return None
    loaded = _check_ort_load(converted, converted_ir, original, lenient)
    checks = ["the ONNX checker on the rest" if hidden else "the plain ONNX check", "ORT's schemas", loaded]
    if lenient is not None:
        return (
            f"the input fails onnx.checker's full check ({lenient}) but passes the plain check and loads in "
            f"ONNX Runtime, so it was converted; the output passes {', '.join(checks)}"
        )
    return (
        f"ONNX Runtime's own ops {', '.join(hidden)} are unknown to onnx.checker; the output was checked by "
        f"{checks[0]}, their types against {checks[1]}, and {loaded}"
    )


def _onnx_check(
    model: onnx.ModelProto | str | os.PathLike, *, full_check: bool, written: ir.Model | None = None
) -> list[str]:
    """onnx's checker with ORT's default-domain ops hidden; returns the op types hidden.
    ``written``: the IR the file ``model`` was saved from, which tells whether it holds such ops
    without parsing the file."""
    if isinstance(model, onnx.ModelProto):
        with hidden_ort_ops(model) as hidden:
            onnx.checker.check_model(model, full_check=full_check)
        return hidden
    path = pathlib.Path(model)
    holds_ort_ops = hidden_ort_nodes_in_file(path) if written is None else hidden_ort_nodes_in_ir(written)
    if not holds_ort_ops:
        onnx.checker.check_model(str(path), full_check=full_check)
        return []
    proto = onnx.load(str(path), load_external_data=False)
    with hidden_ort_ops(proto) as hidden:
        # Written beside the model so its external data files resolve; removed at once.
        handle, view = tempfile.mkstemp(prefix=".check-", suffix=".onnx", dir=path.parent)
        os.close(handle)
        try:
            onnx.save_model(proto, view)
            onnx.checker.check_model(view, full_check=full_check)
        finally:
            os.unlink(view)
    return hidden


def hidden_ort_nodes_in_file(path: pathlib.Path) -> bool:
    """Whether the model file holds ORT default-domain ops (weights are not read)."""
    from mpcompile.io.ort_domain import ort_default_domain_nodes

    return bool(ort_default_domain_nodes(onnx.load(str(path), load_external_data=False)))


def hidden_ort_nodes_in_ir(model: ir.Model) -> bool:
    """``hidden_ort_nodes_in_file`` for the file ``model`` is saved as: the same nodes (main graph
    and its subgraphs) at the same opset (the first default-domain import, as serialised)."""
    from mpcompile.targets.ort_schemas import is_ort_default_domain_op

    opset = next((version for domain, version in model.opset_imports.items() if domain in ("", "ai.onnx")), 0)
    if not opset:
        return False
    op_types = {
        node.op_type
        for node in ir.traversal.RecursiveGraphIterator(model.graph)
        if node.domain in ("", "ai.onnx")
    }
    return any(is_ort_default_domain_op(op_type, opset) for op_type in op_types)


def _lenient_reason(original: ModelSource) -> str:
    """Why the input fails the full check, when it passes the plain one; raises
    ``InvalidModelError`` when it fails the plain one too, ``AssertionError`` when it passes both."""
    proto = _input_proto(original)
    try:
        _onnx_check(proto, full_check=True)
    except CHECKER_ERRORS as exc:
        reason = _first_line(exc)
    else:
        raise AssertionError(
            "mpcompile produced a model that fails the ONNX full check its input passes (a bug)"
        )
    try:
        _onnx_check(proto, full_check=False)
    except CHECKER_ERRORS:
        raise errors.InvalidModelError(f"the input model fails the ONNX checker: {reason}") from None
    return reason


def _check_ort_typing(converted: ir.Model, original: ModelSource) -> None:
    """ORT's contrib ops of the output typed as ORT's schemas allow, unless the input breaks them too."""
    problems = _ort_type_problems(converted)
    if problems and not _ort_type_problems(_as_ir(_input_proto(original))):
        shown = "; ".join(problems[:_SHOWN])
        raise AssertionError(f"mpcompile typed ONNX Runtime's ops against their schemas (a bug): {shown}")


def _ort_type_problems(model: ir.Model) -> list[str]:
    opset = ai_onnx_opset(model.opset_imports)
    problems = []
    for graph in model_graphs(model):
        for node in graph:
            if node.domain in ("", "ai.onnx") and not _is_ort_default_domain(node, opset):
                continue
            problems.extend(
                f"node {node.name!r} ({node.op_type}): {text}" for text in schema_type_errors(node, opset)
            )
    return problems


def _is_ort_default_domain(node: ir.Node, opset: int) -> bool:
    return onnx.defs.has(node.op_type, "") is False and ort_schema("", node.op_type, opset) is not None


def _check_ort_load(
    converted: onnx.ModelProto | str | os.PathLike,
    converted_ir: ir.Model,
    original: ModelSource,
    lenient: str | None,
) -> str:
    """Load the output in ORT's CPU provider; returns how it was checked, for the note."""
    onnxruntime = _onnxruntime()
    if onnxruntime is None:
        if lenient is not None:
            raise errors.InvalidModelError(
                f"the input model fails the ONNX checker: {lenient}; install onnxruntime to convert a model "
                "that only ONNX Runtime accepts"
            )
        return "no ORT load (onnxruntime is not installed)"
    without_cpu = _ops_without_cpu_kernel(converted_ir)
    if without_cpu:
        return f"no ORT CPU load (no CPU kernel for {', '.join(without_cpu[:_SHOWN])})"
    failure = _load_failure(onnxruntime, converted)
    if failure is None:
        return "an ORT CPU load"
    input_failure = _load_failure(onnxruntime, _input_proto(original))
    if input_failure is not None:
        checker = (
            f"the input model fails the ONNX checker: {lenient}, and " if lenient else "the input model: "
        )
        raise errors.InvalidModelError(f"{checker}ONNX Runtime does not load it: {input_failure}")
    raise AssertionError(f"ONNX Runtime loads the input but not its conversion (a bug): {failure}")


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


def _load_failure(onnxruntime, model: onnx.ModelProto | str | os.PathLike) -> str | None:
    """Why ORT's CPU provider refuses the model, or None when it loads it (no graph optimisation)."""
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types, all from Exception
        if type(exc).__module__.split(".")[0] != "onnxruntime":
            raise
        return _first_line(exc)
    return None


def _ops_without_cpu_kernel(model: ir.Model) -> list[str]:
    """ORT's own ops (no onnx schema) in the model that ORT's CPU provider has no kernel for, at
    any type: CUDA-only fusions. (onnx's ops ORT runs by kernel or by their function body.)"""
    from mpcompile.policy.op_classes import MICROSOFT
    from mpcompile.targets import get_target

    table = get_target("cpu").table
    missing = set()
    for graph in model_graphs(model):
        for node in graph:
            domain = "" if node.domain == "ai.onnx" else node.domain
            if (
                domain in ("", MICROSOFT)
                and not onnx.defs.has(node.op_type, domain)
                and table.op(domain or "ai.onnx", node.op_type) is None
            ):
                missing.add(f"{domain or 'ai.onnx'}::{node.op_type}")
    return sorted(missing)


def _input_proto(original: ModelSource) -> onnx.ModelProto | str | os.PathLike:
    """The input as the checker reads it: a file is read whole (weights included), so that checking
    it never writes beside the user's files; one past protobuf's limit is checked by path."""
    if isinstance(original, ir.Model):
        return ir.to_proto(original)
    if isinstance(original, onnx.ModelProto):
        return original
    try:
        return onnx.load(str(original))
    except (ValueError, OSError):  # too large for one protobuf
        return original


def _as_ir(model: onnx.ModelProto | str | os.PathLike) -> ir.Model:
    if isinstance(model, onnx.ModelProto):
        return ir.from_proto(model)
    return ir.from_proto(onnx.load(str(model), load_external_data=False))


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__
