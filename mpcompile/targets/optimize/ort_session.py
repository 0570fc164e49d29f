"""ORT sessions: the graph optimisation levels ORT runs itself, and loading a model to check it.

ORT reads models from files here: the user's own path (its external data beside it), or the
in-memory model saved into a scratch folder with its weights, external ones included.
"""

from __future__ import annotations

import itertools
import os
import pathlib

import onnx
import onnx_ir as ir

from mpcompile import errors
from mpcompile.evaluate.ort_session import onnxruntime_log_severity
from mpcompile.targets.base import Target

_WEIGHTS_THRESHOLD_BYTES = 1024
_PROTOBUF_LIMIT = 2**31 - 2**24
_calls = itertools.count()


def import_onnxruntime():
    """onnxruntime, or a user error saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise errors.RuntimeMissingError(
            "--optimize needs onnxruntime; install it with: pip install 'mpcompile[cpu]'"
        ) from None
    return onnxruntime


def session_provider(target: Target, available: list[str]) -> str:
    """The execution provider to optimise with: the target's when available, else CPU.

    TensorRT compiles subgraphs itself and saves no optimised graph, so its models are optimised
    for the CUDA provider it falls back to.
    """
    provider = target.provider
    if provider == "TensorrtExecutionProvider":
        provider = "CUDAExecutionProvider"
    return provider if provider in available else "CPUExecutionProvider"


def materialize(model: str | os.PathLike | onnx.ModelProto | ir.Model, folder: pathlib.Path) -> str:
    """A path ORT can load: the user's own file, or the in-memory model saved into ``folder``.

    An ``ir.Model`` is written with every weight over 1 KiB in ``input.data`` beside it, read from
    wherever it lives (the user's external data files included); a ``ModelProto`` is written whole,
    or with external data when it nears protobuf's 2 GiB limit.
    """
    if isinstance(model, (str, os.PathLike)):
        path = pathlib.Path(model).absolute()
        if not path.is_file():
            raise errors.InputNotFoundError(f"{path}: no such file")
        return str(path)
    path = folder / "input.onnx"
    if isinstance(model, ir.Model):
        ir.save(model, path, external_data="input.data", size_threshold_bytes=_WEIGHTS_THRESHOLD_BYTES)
    else:
        onnx.save_model(
            model, str(path), save_as_external_data=near_protobuf_limit(model), location="input.data"
        )
    return str(path)


def near_protobuf_limit(proto: onnx.ModelProto) -> bool:
    """True when ``proto`` cannot (or can only just) be serialized as one message."""
    try:
        return proto.ByteSize() > _PROTOBUF_LIMIT
    except ValueError:  # protobuf refuses to size messages over 2 GiB
        return True


def optimize_with_session(
    onnxruntime, input_path: str, folder: pathlib.Path, level: str, provider: str, disabled: list[str]
) -> onnx.ModelProto:
    """ORT's ``basic`` or ``extended`` level with ``disabled`` graph transformers, read back inline.

    Raises ORT's own exception when the session cannot be created (the caller decides whether
    that is the user's model or a fusion that went wrong).
    """
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = {
        "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }[level]
    call = next(_calls)
    output_path = folder / f"optimized-{level}-{call}.onnx"
    options.optimized_model_filepath = str(output_path)
    # Weights go to a side file so models over 2 GiB can be written; they are read back below.
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", f"weights-{call}.data"
    )
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", str(_WEIGHTS_THRESHOLD_BYTES)
    )
    options.log_severity_level = 4  # failures are reported by the caller, in one line
    with onnxruntime_log_severity(4):
        onnxruntime.InferenceSession(input_path, options, providers=[provider], disabled_optimizers=disabled)
    return onnx.load_model(str(output_path), load_external_data=True)  # weights inline again


def load_in_session(onnxruntime, model: onnx.ModelProto, folder: pathlib.Path, provider: str) -> None:
    """Create (and drop) an ORT session for ``model`` on ``provider``, graph optimisations off.

    Raises ORT's own exception when ORT cannot load it (a node without a kernel, a bad node spec).
    """
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    with onnxruntime_log_severity(4):
        if near_protobuf_limit(model):
            path = folder / f"check-{next(_calls)}.onnx"
            onnx.save_model(model, str(path), save_as_external_data=True, location=f"{path.name}.data")
            onnxruntime.InferenceSession(str(path), options, providers=[provider])
        else:
            onnxruntime.InferenceSession(model.SerializeToString(), options, providers=[provider])
