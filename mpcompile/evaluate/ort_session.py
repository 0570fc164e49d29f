"""Shared helpers for handing models to ONNX Runtime (imported lazily)."""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any

import onnx
import onnx_ir as ir

from mpcompile import errors
from mpcompile.io import model_io

ModelLike = onnx.ModelProto | ir.Model | str | os.PathLike


def import_onnxruntime() -> ModuleType:
    """Import onnxruntime or raise ``RuntimeMissingError`` with the install hint."""
    try:
        import onnxruntime
    except ImportError:
        raise errors.RuntimeMissingError(
            "onnxruntime is not installed; install it with `pip install mpcompile[cpu]` "
            "(or `mpcompile[gpu]` for onnxruntime-gpu)"
        ) from None
    return onnxruntime


def to_ir_model(model: ModelLike, *, copy: bool = True) -> ir.Model:
    """An ``ir.Model`` for any accepted model kind; a copy unless ``copy=False``.

    Paths and protos get every input check of ``mpcompile.io.model_io.load_model``.
    """
    if isinstance(model, ir.Model):
        return model.clone() if copy else model
    if isinstance(model, onnx.ModelProto):  # external data resolves against the working folder
        return model_io.model_from_proto(model, pathlib.Path.cwd())
    if isinstance(model, (str, os.PathLike)):
        return model_io.load_model(pathlib.Path(model))
    raise TypeError(f"expected an onnx.ModelProto, ir.Model or path, got {type(model).__name__}")


def serialize_for_session(model: ir.Model) -> bytes:
    """Serialized bytes of ``model`` with external weights pulled into memory."""
    ir.external_data.load_to_model(model)
    return ir.to_proto(model).SerializeToString()


# Weights at least this large go to ORT as arrays beside the serialized graph (serialize_apart).
APART_MIN_BYTES = 1 << 16
APART_LOCATION = "__mpcompile_in_memory__"  # never read: ORT takes the arrays given instead
NUMPY_NATIVE = frozenset(
    {
        ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.INT8, ir.DataType.INT16,
        ir.DataType.INT32, ir.DataType.INT64, ir.DataType.UINT8, ir.DataType.UINT16, ir.DataType.UINT32,
        ir.DataType.UINT64, ir.DataType.BOOL,
    }
)  # fmt: skip


def serialize_apart(model: ir.Model) -> tuple[bytes, dict[str, Any]]:
    """The model serialized without the data of its large main-graph weights, and those weights
    as arrays by name, for ``make_session(..., initializers=...)``: ORT takes them as they are
    instead of parsing hundreds of megabytes back out of a protobuf. ``model`` is unchanged."""
    proto, apart = proto_apart(model)
    return proto.SerializeToString(), apart


def held_apart(dtype: ir.DataType, nbytes: int) -> bool:
    """Whether a main-graph weight goes to ONNX Runtime as an array rather than in the proto:
    from ``APART_MIN_BYTES`` up, for the dtypes numpy holds natively."""
    return dtype in NUMPY_NATIVE and nbytes >= APART_MIN_BYTES


def proto_apart(model: ir.Model) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """``serialize_apart`` before the final serialization: the proto, to edit first."""
    apart: dict[str, Any] = {}
    placeholders: dict[ir.Value, ir.TensorProtocol] = {}
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None or value.name is None or not held_apart(tensor.dtype, tensor.nbytes):
            continue
        apart[value.name] = tensor.numpy()
        placeholders[value] = ir.ExternalTensor(
            APART_LOCATION, 0, tensor.nbytes, tensor.dtype, shape=tensor.shape, name=value.name
        )
    with tensors_swapped(placeholders):
        return ir.to_proto(model), apart


@contextlib.contextmanager
def tensors_swapped(replacements: Mapping[ir.Value, ir.TensorProtocol]) -> Iterator[None]:
    """Each value's ``const_value`` replaced for the block (a placeholder to serialize without
    bytes, weights read into memory); the model's own tensors are put back after, error or not."""
    originals = {value: value.const_value for value in replacements}
    try:
        for value, tensor in replacements.items():
            value.const_value = tensor
        yield
    finally:
        for value, tensor in originals.items():
            value.const_value = tensor


def make_session(
    model: bytes | str,
    providers: list[Any],
    *,
    optimize: bool = True,
    prepack: bool = True,
    log_severity: int = 4,
    initializers: dict[str, Any] | None = None,
    memory_pattern: bool = True,
    spin: bool = True,
    options: Mapping[str, Any] | None = None,
) -> Any:
    """An ``InferenceSession``; ``optimize=False`` disables every graph optimization.

    ``initializers``: weights by name that replace the model's (``serialize_apart``); the
    session keeps them alive (``session._mpcompile_initializers``).

    ``prepack=False`` stops kernels from repacking constant weights (MatMul, Gemm, Conv), so a
    weight computes the same whether it is an initializer or fed as an input.

    ``memory_pattern=False``: no memory pattern recorded on the first run; ORT's recording grows
    with the square of the tensors a run keeps (15 s on the first run of a 10,000-output
    switchboard, 0.4 s without), and a model run a few times gains nothing from it.

    ``spin=False``: ORT's worker threads sleep between kernels instead of spinning; for a
    session run once (the range run), spinning only burns CPU (about 1 s of user CPU in a
    26k-node conversion: docs/performance.md, "Evening").

    ``options``: further settings, applied last: ``session.*`` keys as session config entries,
    others as ``SessionOptions`` attributes (``tools/bench/range_run_parts.py`` varies them).

    ORT logs nothing below ``log_severity`` (4: fatal only), neither the session (its runs
    included) nor ORT's default logger while the session is created: a failure is reported
    by mpcompile in one line, and ORT's own coloured lines would come before it.

    A model onnxruntime refuses raises ``InvalidModelError`` (one line).
    """
    ort = import_onnxruntime()
    session_options = ort.SessionOptions()
    session_options.log_severity_level = log_severity
    if not optimize:
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if not prepack:
        session_options.add_session_config_entry("session.disable_prepacking", "1")
    if not memory_pattern:
        session_options.enable_mem_pattern = False
    if not spin:
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in (options or {}).items():
        if key.startswith("session."):
            session_options.add_session_config_entry(key, str(value))
        else:
            setattr(session_options, key, value)
    held = []
    if initializers:
        import numpy as np

        held = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) for a in initializers.values()]
        session_options.add_external_initializers(list(initializers), held)
    try:
        with onnxruntime_log_severity(log_severity):
            session = ort.InferenceSession(model, session_options, providers=providers)
            session._mpcompile_initializers = held  # ORT reads these arrays for the session's life
            return session
    except Exception as exc:
        if not is_onnxruntime_error(exc):
            raise
        name = model if isinstance(model, str) else "the model"
        raise errors.InvalidModelError(f"onnxruntime cannot load {name}: {first_line(exc)}") from None


# With more inputs than this a run skips the Python wrapper's input check:
# ``InferenceSession.run`` looks each declared input up in a list of the fed names (quadratic:
# 1.1 s for 10,000 inputs), and so do IO bindings (``bind_cpu_input``) and
# ``run_with_ort_values``. ONNX Runtime's own run checks the inputs again (by a map).
LINEAR_RUN_INPUTS = 1024


def run_linear(session: Any, names: list[str], inputs: Mapping[str, Any]) -> list[Any]:
    """``session.run(names, inputs)``, linear in the number of inputs."""
    unchecked = getattr(session, "_sess", None)  # the C++ session InferenceSession.run calls
    if len(inputs) <= LINEAR_RUN_INPUTS or unchecked is None:
        return session.run(names, inputs)
    return unchecked.run(names, dict(inputs), None)


def is_onnxruntime_error(exc: BaseException) -> bool:
    """True for an error onnxruntime raised, False for anything else (mpcompile's own bugs).

    onnxruntime's own exception classes (``onnxruntime.capi.onnxruntime_pybind11_state``: Fail,
    InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile, NotImplemented, RuntimeException,
    EPFail, ...; they derive from ``Exception`` directly) always are. Any other exception is
    onnxruntime's when it was raised under onnxruntime's Python code: walking its traceback from
    where it was raised outwards, past third-party frames (onnx, numpy, the standard library, a
    test's stand-in), the first frame that is onnxruntime's or mpcompile's decides. So a
    ``ValueError`` that ``InferenceSession`` raises for a bad model is onnxruntime's, and a
    ``ValueError`` from mpcompile code (even code that onnxruntime called back) is a bug, re-raised.
    """
    if type(exc).__module__.split(".")[0] == "onnxruntime":
        return True
    frames = []
    traceback = exc.__traceback__
    while traceback is not None:
        frames.append(traceback.tb_frame)
        traceback = traceback.tb_next
    for frame in reversed(frames):
        package = str(frame.f_globals.get("__name__", "")).split(".")[0]
        if package == "onnxruntime":
            return True
        if package == "mpcompile":
            return False
    return False


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


# onnxruntime's default logger severity: ORT has a setter but no getter, so the value in force is
# tracked here for the changes mpcompile makes (2, warning, is ORT's own default at start-up).
_ORT_DEFAULT_SEVERITY = 2
_severity_stack: list[int] = []


@contextlib.contextmanager
def onnxruntime_log_severity(level: int) -> Iterator[None]:
    """Set onnxruntime's default logger severity to ``level`` (4: fatal only) for the block, then
    put back the one in force before: the enclosing block's when nested, else ORT's default.
    (A severity set directly with ``onnxruntime.set_default_logger_severity`` cannot be read
    back, as ORT has no getter; it is restored as ORT's default.) Without onnxruntime installed
    there is nothing to silence."""
    try:
        import onnxruntime
    except ImportError:
        yield
        return
    previous = _severity_stack[-1] if _severity_stack else _ORT_DEFAULT_SEVERITY
    _severity_stack.append(level)
    onnxruntime.set_default_logger_severity(level)
    try:
        yield
    finally:
        _severity_stack.pop()
        onnxruntime.set_default_logger_severity(previous)
