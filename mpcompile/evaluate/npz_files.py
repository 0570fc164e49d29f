"""Reading ``--inputs`` archives safely: every array header is checked before any data is read.

An ``.npz`` file is a zip archive of ``.npy`` members. Each member's header (dtype, shape) is read
from its stream and checked first: no pickled objects, strings or complex numbers, data that
really has the size the header claims (``ZipInfo.file_size``), and a total within the memory
limit (``mpcompile.evaluate.memory_limit``). Only then are the arrays decompressed, so a member
that claims 128 GiB or a zip bomb is refused in one line before it is allocated. Pickles never
load (``allow_pickle=False``).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import zipfile
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from mpcompile import errors
from mpcompile.evaluate import memory_limit

NPY_SUFFIX = ".npy"
NPY_MAGIC = b"\x93NUMPY"
# numpy dtype kinds a model input can take; the rest are named in the refusal.
_REFUSED_KINDS = {
    "c": "complex numbers (the imaginary part would be dropped)",
    "U": "strings",
    "S": "byte strings",
    "O": "Python objects (pickles are never loaded)",
    "V": "raw or structured records",
    "M": "dates",
    "m": "time spans",
}


class NpzError(errors.MpcompileError):
    """An ``--inputs`` file that is not a readable archive of plain numeric arrays."""

    exit_code = errors.ExitCode.USAGE


@dataclasses.dataclass(frozen=True)
class ArrayHeader:
    """What an ``.npy`` member says it holds, read before its data."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


HeaderCheck = Callable[[Sequence[ArrayHeader]], None]


def read_npz(path: pathlib.Path, check: HeaderCheck | None = None) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` file at ``path``, by name; ``check`` sees the headers first
    (and may raise). Raises ``NpzError`` (exit 2) or ``TooLargeError`` (exit 17), one line each."""
    _refuse_non_archive(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            headers = [_member_header(path, archive, info) for info in members]
            _refuse_duplicates(path, headers)
            memory_limit.check_fits(sum(header.nbytes for header in headers), f"{path}: its arrays")
            if check is not None:
                check(headers)
            return {
                header.name: _read_member(archive, info)
                for header, info in zip(headers, members, strict=True)
            }
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise NpzError(f"{path}: not a readable .npz file ({_describe(exc)})") from None
    except (NotImplementedError, RuntimeError) as exc:  # unsupported compression, encryption
        raise NpzError(f"{path}: cannot read this .npz archive ({_describe(exc)})") from None


def read_headers(path: pathlib.Path) -> list[ArrayHeader]:
    """The headers of the ``.npz`` file at ``path``, no array data read (``NpzError`` as ``read_npz``)."""
    _refuse_non_archive(path)
    try:
        with zipfile.ZipFile(path) as archive:
            headers = [_member_header(path, archive, info) for info in archive.infolist()]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise NpzError(f"{path}: not a readable .npz file ({_describe(exc)})") from None
    except (NotImplementedError, RuntimeError) as exc:
        raise NpzError(f"{path}: cannot read this .npz archive ({_describe(exc)})") from None
    _refuse_duplicates(path, headers)
    return headers


def _refuse_non_archive(path: pathlib.Path) -> None:
    with open(path, "rb") as handle:
        start = handle.read(len(NPY_MAGIC))
    if not start:
        raise NpzError(f"{path}: empty file, not an .npz archive")
    if start == NPY_MAGIC:
        raise NpzError(
            f"{path}: a single .npy array, not an .npz archive; save inputs with numpy.savez(path, name=array)"
        )


def _member_header(path: pathlib.Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> ArrayHeader:
    if info.is_dir() or not info.filename.endswith(NPY_SUFFIX):
        raise NpzError(f"{path}: member {info.filename!r} is not an .npy array")
    name = info.filename[: -len(NPY_SUFFIX)]
    with archive.open(info) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):  # 3.0 differs only in the header's text encoding
            shape, _fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise NpzError(f"{path}: member {info.filename!r} has unknown .npy version {version}")
        header_size = stream.tell()
    if dtype.kind in _REFUSED_KINDS or dtype.hasobject:
        kind = _REFUSED_KINDS.get(dtype.kind, _REFUSED_KINDS["O"])
        raise NpzError(f"{path}: array {name!r} holds {kind} ({dtype}); inputs must be numeric arrays")
    header = ArrayHeader(name, dtype, tuple(int(dim) for dim in shape))
    held = info.file_size - header_size
    if held != header.nbytes:
        claimed = memory_limit.format_bytes(header.nbytes)
        raise NpzError(
            f"{path}: array {name!r} claims shape {list(header.shape)} ({claimed}) "
            f"but its member holds {max(held, 0)} bytes of data"
        )
    return header


def _refuse_duplicates(path: pathlib.Path, headers: Sequence[ArrayHeader]) -> None:
    seen: set[str] = set()
    for header in headers:
        if header.name in seen:
            raise NpzError(f"{path}: array {header.name!r} is stored twice")
        seen.add(header.name)


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with archive.open(info) as stream:
        return np.lib.format.read_array(stream, allow_pickle=False)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
