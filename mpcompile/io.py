"""Loading and saving models safely.

Loading checks everything a user can get wrong before any weight is read: the path,
the protobuf, external-data locations (missing files, paths escaping the model's
folder) and the opset range. Saving is atomic: the output appears complete or not at all.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from mpcompile import errors
from mpcompile.graphs import model_graphs
from mpcompile.mapped_load import WireFormatError, load_mapped, write_embedded

# Files at least this large are loaded with their embedded weights mapped, not parsed.
MAPPED_LOAD_MIN_BYTES = 64 * 2**20
INPUT_EXTERNAL_DATA_KEY = "mpcompile.input_external_data"
# Set in ``ir.Model.meta`` when ``load_model`` ran onnx shape inference on the file's protobuf.
TYPES_INFERRED_KEY = "mpcompile.types_inferred"

# ai.onnx opsets mpcompile converts: Cast's `to` attribute exists from opset 6, and the
# upper bound is whatever the installed onnx package knows.
MIN_OPSET = 7
TWO_GIB = 2**31
# Models whose weights would push the protobuf near its 2 GiB limit are saved with
# external data. Tensors under this size stay inline.
EXTERNAL_DATA_THRESHOLD_BYTES = 1024
# IR versions above this are lowered: ORT 1.32 loads up to 13, but the ORT training
# runtime (1.19) and older ORT releases stop at 10.
MAX_IR_VERSION = 10


def max_opset() -> int:
    return onnx.defs.onnx_opset_version()


def load_model(path: str | os.PathLike, *, infer_types: bool = False) -> ir.Model:
    """Load a model from disk with every input check; weights stay lazily mapped.

    ``infer_types`` runs onnx shape inference on the protobuf before it becomes IR (and marks
    the model with ``TYPES_INFERRED_KEY``): the parsed protobuf is at hand here, whereas
    inferring later means serializing the IR again, which costs more than the inference on
    graphs of many nodes.
    """
    path = pathlib.Path(path).absolute()  # external data resolves against this (primer P1)
    if not path.exists():
        raise errors.InputNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise errors.InputNotFoundError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise errors.NotOnnxError(f"{path}: empty file, not an ONNX model")
    proto = None
    if path.stat().st_size >= MAPPED_LOAD_MIN_BYTES:
        try:  # embedded weights mapped from the file, not parsed (see mpcompile.mapped_load)
            proto = load_mapped(path)
        except (WireFormatError, DecodeError, RuntimeError, ValueError, OSError):
            proto = None  # the plain parse below reports what is wrong
    if proto is None:
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as exc:
            raise errors.NotOnnxError(f"{path}: not a valid ONNX protobuf ({_first_line(exc)})") from None
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise errors.NotOnnxError(f"{path}: not an ONNX model (no graph)")
    data_files = check_external_data(proto, path.parent)
    check_opsets(proto)
    inferred = False
    if infer_types:
        proto, inferred = _with_inferred_types(proto)
    model = ir.serde.deserialize_model(proto)
    if inferred:
        model.meta[TYPES_INFERRED_KEY] = True
    ir.external_data.set_base_dir(model.graph, str(path.parent))
    model.meta[INPUT_EXTERNAL_DATA_KEY] = bool(data_files - {path.name})
    return model


def _with_inferred_types(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """``proto`` with onnx's inferred value types, or unchanged (and False) when inference fails;
    InferTypesPass then tries again and reports the failure."""
    if proto.ByteSize() >= TWO_GIB:
        return proto, False
    try:
        inferred = infer_shapes(proto)
    except Exception:  # any failure leaves the model to InferTypesPass
        return proto, False
    return inferred, True


def infer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnx shape inference as every conversion runs it: strict, type-checked, no data propagation."""
    return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=False)


def _save_embedded(model: ir.Model, path: str) -> None:
    """Save with every weight inline, streaming: onnx-ir writes the weights to a scratch data
    file one tensor at a time, then the model file is written with each weight copied in (see
    ``mapped_load.write_embedded``), so neither the whole protobuf nor its bytes sit in memory."""
    folder = tempfile.mkdtemp(prefix=".mpcompile-", dir=os.path.dirname(path))
    try:
        scratch = os.path.join(folder, "model.onnx")
        ir.save(
            model, scratch, external_data="weights.data", size_threshold_bytes=EXTERNAL_DATA_THRESHOLD_BYTES
        )
        with open(scratch, "rb") as handle:
            small = handle.read()
        try:
            with open(path, "wb") as output:
                write_embedded(small, os.path.join(folder, "weights.data"), "weights.data", output)
        except WireFormatError:
            ir.external_data.load_to_model(model)
            ir.save(model, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def input_had_external_data(model: ir.Model) -> bool:
    """Whether the file ``load_model`` read kept weights in external data files (weights it
    mapped from the model file itself do not count)."""
    return bool(model.meta.get(INPUT_EXTERNAL_DATA_KEY, has_external_tensors(model)))


def check_external_data(proto: onnx.ModelProto, base_dir: pathlib.Path) -> set[str]:
    """Refuse external-data locations that escape ``base_dir`` or do not exist; returns the
    locations used."""
    base = base_dir.resolve()
    file_sizes: dict[str, int] = {}  # by location: each file is resolved and checked once
    for tensor in _all_tensor_protos(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if not location:
            raise errors.ExternalDataError(f"tensor {tensor.name!r}: external data without a location")
        if location not in file_sizes:
            file_sizes[location] = _checked_data_file_size(tensor, location, base)
        offset = int(info.get("offset", 0) or 0)
        length = info.get("length")
        if length is not None and offset + int(length) > file_sizes[location]:
            raise errors.ExternalDataError(
                f"tensor {tensor.name!r}: external data file {location!r} is shorter than offset+length"
            )
    return set(file_sizes)


def _checked_data_file_size(tensor: onnx.TensorProto, location: str, base: pathlib.Path) -> int:
    """The size of the external data file at ``location``, once it is known to lie inside ``base``."""
    if os.path.isabs(location) or pathlib.PurePath(location).drive:
        raise errors.ExternalDataError(
            f"tensor {tensor.name!r}: external data location {location!r} is absolute; refused"
        )
    target = (base / location).resolve()
    if not target.is_relative_to(base):
        raise errors.ExternalDataError(
            f"tensor {tensor.name!r}: external data location {location!r} escapes the model's folder; refused"
        )
    if not target.is_file():
        raise errors.ExternalDataError(f"tensor {tensor.name!r}: external data file {location!r} not found")
    return target.stat().st_size


def check_opsets(proto: onnx.ModelProto) -> None:
    """Refuse models whose ai.onnx opset mpcompile or the installed onnx cannot handle."""
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx"):
            if opset.version < MIN_OPSET:
                raise errors.UnsupportedOpsetError(
                    f"ai.onnx opset {opset.version} is older than the oldest supported ({MIN_OPSET}); "
                    "upgrade it with onnx.version_converter first"
                )
            if opset.version > max_opset():
                raise errors.UnsupportedOpsetError(
                    f"ai.onnx opset {opset.version} is newer than the installed onnx knows ({max_opset()}); "
                    "upgrade the onnx package"
                )


def _all_tensor_protos(proto: onnx.ModelProto):
    yield from onnx.external_data_helper._get_all_tensors(proto)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def output_ir_version(model: ir.Model) -> int:
    """The IR version to write: the model's own, unless it is newer than ORT releases load;
    then the lowest version the model's opsets allow."""
    original = model.ir_version or MAX_IR_VERSION
    if original <= MAX_IR_VERSION:
        return original
    opsets = [onnx.helper.make_opsetid(domain, version) for domain, version in model.opset_imports.items()]
    try:
        needed = onnx.helper.find_min_ir_version_for(opsets, ignore_unknown=True)
    except (ValueError, TypeError):
        needed = MAX_IR_VERSION
    return min(original, max(needed, 3))


def weight_bytes(model: ir.Model) -> int:
    """Bytes of all initializers in the main graph and subgraphs, without reading them."""
    total = 0
    for graph in model_graphs(model):
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is not None:
                total += tensor.nbytes
    return total


def save_model(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    verify: Callable[[str], None] | None = None,
) -> None:
    """Save atomically; external data when asked, when the input had it, or when over 2 GiB.

    ``verify`` is called on the complete temporary file before it is moved into place.
    On failure nothing new is left behind at ``path`` (nor a data file that did not exist).
    """
    path = pathlib.Path(path).absolute()
    if not path.parent.is_dir():
        raise errors.OutputNotWritableError(f"{path.parent}: output folder does not exist")
    if path.is_dir():
        raise errors.OutputNotWritableError(f"{path}: output path is a folder")
    if not os.access(path.parent, os.W_OK):
        raise errors.OutputNotWritableError(f"{path.parent}: output folder is not writable")
    if external_data is None:
        external_data = input_had_external_data(model) or weight_bytes(model) >= TWO_GIB - 2**24
    model.ir_version = output_ir_version(model)
    data_name = path.name + ".data"
    data_path = path.with_name(data_name)
    data_existed = data_path.exists()
    try:
        fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _user_error(exc, path) from None
    os.close(fd)
    try:
        if external_data:
            ir.save(
                model, temp_name, external_data=data_name, size_threshold_bytes=EXTERNAL_DATA_THRESHOLD_BYTES
            )
        else:
            _save_embedded(model, temp_name)
        if verify is not None:
            verify(temp_name)
        set_default_permissions(temp_name)
        os.replace(temp_name, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        if external_data and not data_existed:
            with contextlib.suppress(OSError):
                os.unlink(data_path)
        if isinstance(exc, OSError):
            raise _user_error(exc, path) from None
        raise


def _user_error(exc: OSError, path: pathlib.Path) -> BaseException:
    """The MpcompileError for an OSError met while writing ``path`` (or the error itself)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or _short_write_on_full_disk(exc, path):
        return errors.DiskFullError(f"{path}: no space left on device while writing")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR):
        return errors.OutputNotWritableError(f"{path}: not writable ({exc.strerror})")
    return exc


def _short_write_on_full_disk(exc: OSError, path: pathlib.Path) -> bool:
    """numpy's tofile (used for external data) reports a full disk as an errno-less OSError
    '65536 requested and 32768 written'; confirm with the free space left."""
    if exc.errno is not None or "written" not in str(exc):
        return False
    try:
        stats = os.statvfs(path.parent)
    except OSError:
        return True
    return stats.f_bavail * stats.f_frsize < 2**20


def set_default_permissions(path: str | os.PathLike) -> None:
    """Give a file made by ``tempfile.mkstemp`` (mode 0600) the mode a plain ``open`` would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def has_external_tensors(model: ir.Model) -> bool:
    """Whether any initializer's bytes live in an external data file."""
    for graph in model_graphs(model):
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                return True
    return False
