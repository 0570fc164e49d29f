"""Loading and saving models safely.

Loading checks everything a user can get wrong before any weight is read: the path,
the protobuf, external-data locations (missing files, paths escaping the model's
folder) and the opset range. Saving is atomic: the output appears complete or not at all.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import pathlib
import re
import shutil
import stat
from collections.abc import Callable, Iterable, Mapping
from typing import BinaryIO

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from mpcompile import errors
from mpcompile.io import ort_domain, output_commit
from mpcompile.io.mapped_load import WireFormatError, load_mapped, write_embedded
from mpcompile.io.proto_tensors import all_tensor_protos, tensor_nbytes
from mpcompile.io.structure import check_declared_types, check_structure, check_value_info_against_inference
from mpcompile.irtools.graphs import model_graphs

# Files at least this large are loaded with their embedded weights mapped, not parsed.
MAPPED_LOAD_MIN_BYTES = 64 * 2**20
INPUT_EXTERNAL_DATA_KEY = "mpcompile.input_external_data"
INPUT_FILES_KEY = "mpcompile.input_files"
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


def load_model(path: str | os.PathLike, *, infer_types: bool = False, check_links: bool = True) -> ir.Model:
    """Load a model from disk with every input check; weights stay lazily mapped.

    ``infer_types`` runs onnx shape inference on the protobuf before it becomes IR (and marks
    the model with ``TYPES_INFERRED_KEY``): the parsed protobuf is at hand here, whereas
    inferring later means serializing the IR again, which costs more than the inference on
    graphs of many nodes. ``check_links=False`` leaves ``refuse_hard_linked_data`` to the caller
    (``convert_file`` first refuses outputs that are inputs, hard links included).
    """
    return load_model_and_proto(path, infer_types=infer_types, check_links=check_links)[0]


def load_model_and_proto(
    path: str | os.PathLike,
    *,
    infer_types: bool = False,
    check_links: bool = True,
    before_ir: Callable[[onnx.ModelProto], None] | None = None,
) -> tuple[ir.Model, onnx.ModelProto]:
    """``load_model``, and the protobuf the model was deserialized from (types inferred when
    asked, embedded weights mapped as external data of the model file): what the range run
    evaluates instead of serializing the IR again (``evaluate/loaded_reference.py``).
    ``before_ir``: called with that protobuf (not to be modified) once the checks passed and
    types are inferred, before the IR is deserialized from it (the range run starts there)."""
    path = pathlib.Path(path).absolute()  # external data resolves against this (primer P1)
    proto = _parse_model_file(path)
    return _model_and_proto(
        proto,
        path.parent,
        infer_types=infer_types,
        model_file=path,
        check_links=check_links,
        before_ir=before_ir,
    )


def files_read(path: str | os.PathLike) -> tuple[pathlib.Path, ...]:
    """The files loading the model at ``path`` reads: the model file, then each external-data
    file (resolved, checked as ``load_model`` checks them), without building the IR."""
    return inspect_model_file(path).files


@dataclasses.dataclass(frozen=True)
class ModelFileFacts:
    """What a model file is made of, read without building the IR."""

    files: tuple[pathlib.Path, ...]  # the model file, then its external-data files (resolved)
    inputs: tuple[str, ...]  # graph input names (initializers listed as inputs included)
    outputs: tuple[str, ...]  # graph output names
    data_locations: tuple[str, ...]  # external-data locations, as written in the model


def inspect_model_file(path: str | os.PathLike) -> ModelFileFacts:
    """The files, graph input/output names and data locations of the model at ``path``, with the
    checks ``load_model`` makes of the file and its external data."""
    path = pathlib.Path(path).absolute()
    proto = _parse_model_file(path)
    own = path.resolve()
    data_files = check_external_data(proto, path.parent)
    locations = {
        entry.value
        for tensor, _ in all_tensor_protos(proto)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return ModelFileFacts(
        files=(own, *sorted(data_files - {own})),
        inputs=tuple(value.name for value in proto.graph.input),
        outputs=tuple(value.name for value in proto.graph.output),
        data_locations=tuple(sorted(locations)),
    )


def _parse_model_file(path: pathlib.Path) -> onnx.ModelProto:
    """The protobuf at ``path`` (large embedded weights mapped, see ``mapped_load``), or the
    error saying why there is none."""
    if not path.exists():
        raise errors.InputNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise errors.InputNotFoundError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise errors.NotOnnxError(f"{path}: empty file, not an ONNX model")
    proto = None
    if path.stat().st_size >= MAPPED_LOAD_MIN_BYTES:
        try:  # embedded weights mapped from the file, not parsed (see mpcompile.io.mapped_load)
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
    return proto


def model_from_proto(
    proto: onnx.ModelProto,
    base_dir: pathlib.Path,
    *,
    infer_types: bool = False,
    model_file: pathlib.Path | None = None,
    check_links: bool = True,
) -> ir.Model:
    """The IR of a parsed model after every input check: its external data (resolved against
    ``base_dir``, which it may not leave), its structure (``mpcompile.io.structure``) and its opsets.
    ``model_file`` is the file ``proto`` was read from, if any; the model records the files it
    reads (``input_files``)."""
    return _model_and_proto(
        proto, base_dir, infer_types=infer_types, model_file=model_file, check_links=check_links
    )[0]


def _model_and_proto(
    proto: onnx.ModelProto,
    base_dir: pathlib.Path,
    *,
    infer_types: bool,
    model_file: pathlib.Path | None,
    check_links: bool,
    before_ir: Callable[[onnx.ModelProto], None] | None = None,
) -> tuple[ir.Model, onnx.ModelProto]:
    """``model_from_proto``, and the protobuf it deserialized (``proto`` or its inferred copy)."""
    data_files = check_external_data(proto, base_dir)  # first: it guards what may be opened
    if check_links:
        refuse_hard_linked_data(data_files, model_file.resolve() if model_file is not None else None)
    check_structure(proto)
    check_opsets(proto)
    inferred = False
    if infer_types:
        proto, inferred = _with_inferred_types(proto)
    if before_ir is not None:
        before_ir(proto)
    model = ir.serde.deserialize_model(proto)
    if inferred:
        model.meta[TYPES_INFERRED_KEY] = True
    elif infer_types:
        check_declared_types(model)
    base = str(base_dir.absolute())
    ir.external_data.set_base_dir(model.graph, base)
    for function in model.functions.values():  # set_base_dir leaves function bodies out
        ir.external_data.set_base_dir(function.graph, base)
    own = {model_file.resolve()} if model_file is not None else set()
    model.meta[INPUT_FILES_KEY] = tuple(str(p) for p in [*own, *sorted(data_files - own)])
    model.meta[INPUT_EXTERNAL_DATA_KEY] = bool(data_files - own)
    return model, proto


def input_files(model: ir.Model) -> tuple[pathlib.Path, ...]:
    """The files ``load_model`` (or ``model_from_proto``) read the model from: the model file and
    every external data file, resolved."""
    return tuple(pathlib.Path(name) for name in model.meta.get(INPUT_FILES_KEY, ()))


def _with_inferred_types(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """``proto`` with onnx's inferred value types, or unchanged (and False) when inference fails;
    InferTypesPass then tries again and reports the failure."""
    if proto.ByteSize() >= TWO_GIB:
        return proto, False
    try:
        inferred = infer_shapes(proto)
    except Exception:  # any failure leaves the model to InferTypesPass
        check_value_info_against_inference(proto, infer_shapes)  # unless value_info caused it
        return proto, False
    return inferred, True


def infer_shapes(proto: onnx.ModelProto, *, strict: bool = True) -> onnx.ModelProto:
    """onnx shape inference as every conversion runs it: strict, type-checked, no data propagation.

    ORT's default-domain ops are hidden from it (``ort_domain``); the result keeps them.
    ``strict=False``: values whose inference fails stay as declared (a model whose declared shapes
    contradict inference, which only the full checker refuses)."""
    with ort_domain.hidden_ort_ops(proto) as hidden:
        inferred = onnx.shape_inference.infer_shapes(
            proto, check_type=strict, strict_mode=strict, data_prop=False
        )
    if hidden:
        ort_domain.restore_default_domain(inferred)
    return inferred


def _save_embedded(model: ir.Model, path: str) -> None:
    """Save with every weight inline, streaming and without a scratch copy of the weights: the
    model is serialised with each large initializer replaced by a reference that holds no bytes,
    then written with each weight's bytes in its place, one tensor at a time
    (``mapped_load.write_embedded``), so neither the whole protobuf nor its bytes sit in memory.
    The bytes written are those ``ir.save`` writes for the model with its weights inline."""
    large = [
        value
        for graph in model_graphs(model)
        for value in graph.initializers.values()
        if value.const_value is not None and value.const_value.nbytes > EXTERNAL_DATA_THRESHOLD_BYTES
    ]
    if any(value.graph is not model.graph for value in large):  # not spliced: saved whole
        ir.external_data.load_to_model(model)
        ir.save(model, path)
        return
    small_external = [
        value
        for graph in model_graphs(model)
        for value in graph.initializers.values()
        if isinstance(value.const_value, ir.ExternalTensor)
        and value.const_value.nbytes <= EXTERNAL_DATA_THRESHOLD_BYTES
    ]
    tensors = [value.const_value for value in large]
    replaced = [*large, *small_external]
    originals = [value.const_value for value in replaced]
    in_memory = ir.external_data.convert_tensors_from_external([v.const_value for v in small_external])
    try:
        for index, (value, tensor) in enumerate(zip(large, tensors, strict=True)):
            # The offset field carries the tensor's index: the reference is never read as a file.
            value.const_value = ir.ExternalTensor(
                _WEIGHT_PLACEHOLDER, index, tensor.nbytes, tensor.dtype, shape=tensor.shape, name=tensor.name
            )
        for value, tensor in zip(small_external, in_memory, strict=True):
            value.const_value = tensor
        skeleton = ir.serde.serialize_model(model).SerializeToString()
    finally:
        for value, tensor in zip(replaced, originals, strict=True):
            value.const_value = tensor

    def write_tensor(index: int, length: int, output: BinaryIO) -> None:
        tensor = tensors[index]
        if tensor.nbytes != length:
            raise WireFormatError(f"weight {tensor.name!r} changed size while saving")
        tensor.tofile(output)

    with open(path, "wb") as output:
        write_embedded(skeleton, _WEIGHT_PLACEHOLDER, output, write_tensor, len(tensors))


# The location of the references ``_save_embedded`` serialises in place of weights: never a file
# (the load checks refuse any location holding a NUL byte), so no model's own reference matches.
_WEIGHT_PLACEHOLDER = "\0mpcompile-weight\0"


def input_had_external_data(model: ir.Model) -> bool:
    """Whether the file ``load_model`` read kept weights in external data files (weights it
    mapped from the model file itself do not count)."""
    return bool(model.meta.get(INPUT_EXTERNAL_DATA_KEY, has_external_tensors(model)))


def check_external_data(proto: onnx.ModelProto, base_dir: pathlib.Path) -> set[pathlib.Path]:
    """Refuse external data that is malformed, missing, outside ``base_dir`` or not the size its
    tensor needs, for every tensor the model holds (see ``all_tensor_protos``); returns the data
    files, resolved. Nothing outside ``base_dir`` is ever opened."""
    base = base_dir.resolve()
    files: dict[str, tuple[pathlib.Path, int]] = {}  # by location: each file is checked once
    for tensor, label in all_tensor_protos(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location, offset, length = _external_data_fields(tensor, label)
        if location not in files:
            files[location] = _checked_data_file(label, location, base)
        _check_data_extent(tensor, label, location, offset, length, files[location][1])
    return {path for path, _ in files.values()}


def _external_data_fields(tensor: onnx.TensorProto, label: str) -> tuple[str, int, int | None]:
    """(location, offset, length) of an external tensor, each well-formed, or ExternalDataError."""
    fields: dict[str, str] = {}
    for entry in tensor.external_data:
        if entry.key in fields:
            raise errors.ExternalDataError(f"{label}: external data key {entry.key!r} given twice")
        fields[entry.key] = entry.value
    location = fields.get("location", "")
    if not location:
        raise errors.ExternalDataError(f"{label}: external data without a location")
    numbers: dict[str, int] = {}
    for key in ("offset", "length"):
        if key in fields:
            if not _DECIMAL.fullmatch(fields[key]):
                raise errors.ExternalDataError(
                    f"{label}: external data {key} {_shown(fields[key])} is not a non-negative integer"
                )
            numbers[key] = int(fields[key])
    return location, numbers.get("offset", 0), numbers.get("length")


# Digits only: int() alone would also take " 12", "+12", "1_2" and non-ASCII digits.
_DECIMAL = re.compile(r"[0-9]{1,20}")
# Longer locations or path components are refused before the file system sees them.
MAX_LOCATION_CHARS = 4096
MAX_LOCATION_COMPONENT_CHARS = 255


def _shown(text: str, limit: int = 80) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def _checked_data_file(label: str, location: str, base: pathlib.Path) -> tuple[pathlib.Path, int]:
    """The resolved external data file at ``location`` and its size, once it is known to be a
    regular file inside ``base``."""
    shown = _shown(location)
    if "\0" in location:
        raise errors.ExternalDataError(
            f"{label}: external data location {shown} contains a NUL byte; refused"
        )
    parts = pathlib.PurePath(location).parts
    if len(location) > MAX_LOCATION_CHARS or any(len(p) > MAX_LOCATION_COMPONENT_CHARS for p in parts):
        raise errors.ExternalDataError(f"{label}: external data location {shown} is too long; refused")
    if os.path.isabs(location) or pathlib.PurePath(location).drive:
        raise errors.ExternalDataError(f"{label}: external data location {shown} is absolute; refused")
    if os.path.normpath(location).split(os.sep)[0] == os.pardir:  # refused before any lookup
        raise errors.ExternalDataError(
            f"{label}: external data location {shown} escapes the model's folder; refused"
        )
    try:
        target = (base / location).resolve()
    except (RuntimeError, OSError) as exc:  # RuntimeError: a symlink loop (Python 3.11)
        raise errors.ExternalDataError(
            f"{label}: external data location {shown} cannot be resolved ({_first_line(exc)}); refused"
        ) from None
    if not target.is_relative_to(base):
        raise errors.ExternalDataError(
            f"{label}: external data location {shown} escapes the model's folder; refused"
        )
    try:  # the path as written, as the OS will open it ("sub/../w.bin" needs sub to exist)
        status = (base / location).stat()
    except OSError:
        raise errors.ExternalDataError(f"{label}: external data file {shown} not found") from None
    if not stat.S_ISREG(status.st_mode):
        raise errors.ExternalDataError(f"{label}: external data file {shown} is not a regular file")
    return target, status.st_size


def refuse_hard_linked_data(files: Iterable[pathlib.Path], model_file: pathlib.Path | None = None) -> None:
    """Refuse external data files with more than one hard link: onnx and onnx-ir will not read
    them (their guard against hard-link attacks), which would fail mid-conversion."""
    for file in files:
        if file == model_file:
            continue
        links = file.stat().st_nlink
        if links > 1:
            raise errors.ExternalDataError(
                f"external data file {file} has {links} hard links; onnx refuses to read such files: "
                "give the model a copy of its own"
            )


def _check_data_extent(
    tensor: onnx.TensorProto, label: str, location: str, offset: int, length: int | None, file_size: int
) -> None:
    """The tensor's bytes lie inside the file, and ``length`` (when given) is what dtype x dims need."""
    shown = _shown(location)
    if tensor.data_type == onnx.TensorProto.STRING:
        raise errors.ExternalDataError(f"{label}: a string tensor cannot be external data")
    needed = tensor_nbytes(tensor)
    if needed is not None and length is not None and length != needed:
        raise errors.ExternalDataError(
            f"{label}: external data length {length} does not match the tensor's {needed} bytes (dtype x dims)"
        )
    extent = length if needed is None else needed
    if extent is not None and offset + extent > file_size:
        raise errors.ExternalDataError(
            f"{label}: external data file {shown} is shorter than offset+length ({file_size} < {offset + extent})"
        )


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def output_ir_version(model: ir.Model) -> int:
    """The IR version to write: the model's own, unless it is newer than ORT releases load;
    then the lowest version the model's opsets allow."""
    return ir_version_for(model.ir_version, model.opset_imports)


def ir_version_for(ir_version: int | None, opset_imports: Mapping[str, int]) -> int:
    """``output_ir_version`` of a model with this IR version and these opset imports."""
    original = ir_version or MAX_IR_VERSION
    if original <= MAX_IR_VERSION:
        return original
    opsets = [onnx.helper.make_opsetid(domain, version) for domain, version in opset_imports.items()]
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


def saves_external_data(model: ir.Model, external_data: bool | str | None) -> bool:
    """Whether ``save_model`` writes the weights to an external data file: when asked (a file
    name asks for it too), when the input had external data, or when they near the 2 GiB
    protobuf limit."""
    if isinstance(external_data, str):
        return True
    if external_data is not None:
        return external_data
    return input_had_external_data(model) or weight_bytes(model) >= TWO_GIB - 2**24


def save_model(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    external_data: bool | str | None = None,
    verify: Callable[[str], None] | None = None,
) -> pathlib.Path | None:
    """Save atomically; external data when asked, when the input had it, or when over 2 GiB.
    Returns the data file written, if any.

    Model and data file are written into a temporary folder beside ``path``; ``verify`` is
    called on the complete temporary model, then both are committed by one rename
    (``output_commit``): the data file goes under a name of its content, ``OUT.onnx.<hex>.data``,
    and the old output's data file is removed after the new model is in place. At every instant
    ``path`` is the complete old model or the complete new one; on failure nothing is left behind.
    A file name as ``external_data`` (a plain name, e.g. optimum's ``model.onnx_data``) names the
    data file instead where the destination is fresh: neither ``path`` nor that file exists yet
    (a folder being staged); otherwise the content name is used, since replacing a fixed name
    could not be one rename.
    """
    path = pathlib.Path(path).absolute()
    if not path.parent.is_dir():
        raise errors.OutputNotWritableError(f"{path.parent}: output folder does not exist")
    if path.is_dir():
        raise errors.OutputNotWritableError(f"{path}: output path is a folder")
    if not os.access(path.parent, os.W_OK):
        raise errors.OutputNotWritableError(f"{path.parent}: output folder is not writable")
    explicit_name = external_data_name(path, external_data)
    external_data = saves_external_data(model, external_data)
    model.ir_version = output_ir_version(model)
    fresh = explicit_name is not None and not path.exists() and not path.with_name(explicit_name).exists()
    scratch_name = explicit_name if fresh else path.name + ".data"
    output_commit.remove_stale_temp_folders(path)
    folder = None
    try:  # everything is written here first, beside the output, then moved into place
        with output_commit.signals_held():  # an interrupt comes once ``folder`` is set
            folder = output_commit.make_temp_folder(path)
        temp_model = folder / path.name
        data_name = None
        if external_data:
            ir.save(
                model,
                temp_model,
                external_data=scratch_name,
                size_threshold_bytes=EXTERNAL_DATA_THRESHOLD_BYTES,
            )
            if (folder / scratch_name).exists():
                data_name = (
                    scratch_name if fresh else output_commit.name_by_content(folder, path, scratch_name)
                )
        else:
            _save_embedded(model, str(temp_model))
        if verify is not None:
            verify(str(temp_model))
        for written in (temp_model, *([folder / data_name] if data_name else [])):
            set_default_permissions(written)
        output_commit.pause("before-commit")
        output_commit.commit(folder, path, data_name, fresh=fresh)
    except OSError as exc:
        raise _user_error(exc, path) from None
    finally:
        if folder is not None:
            with output_commit.signals_held():
                shutil.rmtree(folder, ignore_errors=True)
    return path.with_name(data_name) if data_name else None


def external_data_name(path: str | os.PathLike, external_data: bool | str | None) -> str | None:
    """The data file name ``external_data`` asks for, checked (None unless it is a name)."""
    if not isinstance(external_data, str):
        return None
    if (
        not external_data
        or pathlib.PurePath(external_data).name != external_data
        or external_data in (".", "..")
    ):
        raise ValueError(f"external data file name {external_data!r}: a plain file name is needed")
    if external_data == pathlib.Path(path).name:
        raise ValueError(f"external data file name {external_data!r} is the model's own name")
    return external_data


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
