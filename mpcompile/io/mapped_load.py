"""Load a model with embedded weights without parsing the weights: map them from the file.

``onnx.load`` reads the whole file and parses every weight into the protobuf, so a 400 MB
model costs about 900 MB before any work starts. Here the file is memory-mapped and scanned
at the protobuf wire level; each main-graph initializer's ``raw_data`` is left out of the
bytes that are parsed and described instead as external data located in the model file
itself, at its byte offset. onnx-ir then maps each weight only when it is read, and releases it
afterwards, as it does for models saved with external data.
"""

from __future__ import annotations

import mmap
import os
import pathlib
from collections.abc import Callable
from typing import BinaryIO

import onnx

MODEL_GRAPH = 7  # ModelProto.graph
GRAPH_INITIALIZER = 5  # GraphProto.initializer
TENSOR_RAW_DATA = 9  # TensorProto.raw_data
TENSOR_EXTERNAL_DATA = 13  # TensorProto.external_data
TENSOR_DATA_LOCATION = 14  # TensorProto.data_location
LENGTH_DELIMITED = 2
# Smaller weights stay in the parsed protobuf: mapping them is not worth a file handle.
MIN_MAPPED_BYTES = 4096


class WireFormatError(ValueError):
    """The bytes are not the protobuf layout this loader understands (caller falls back)."""


def _varint(buffer, position: int) -> tuple[int, int]:
    if position < len(buffer) and buffer[position] < 0x80:  # one byte: most keys and lengths
        return buffer[position], position + 1
    result = shift = 0
    while True:
        if position >= len(buffer):
            raise WireFormatError("truncated varint")
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise WireFormatError("varint too long")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(buffer, start: int, end: int):
    """(field number, wire type, value start, value end, field start) for each field in [start, end)."""
    position = start
    while position < end:
        field_start = position
        key, position = _varint(buffer, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, value_end = _varint(buffer, position)
            value_start = position
        elif wire_type == 1:
            value_start, value_end = position, position + 8
        elif wire_type == LENGTH_DELIMITED:
            length, value_start = _varint(buffer, position)
            value_end = value_start + length
        elif wire_type == 5:
            value_start, value_end = position, position + 4
        else:
            raise WireFormatError(f"unsupported wire type {wire_type}")
        if value_end > end:
            raise WireFormatError("field runs past its message")
        yield number, wire_type, value_start, value_end, field_start
        position = value_end


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | LENGTH_DELIMITED) + _encode_varint(len(payload)) + payload


def _entry(key: str, value: str) -> bytes:
    return _length_delimited(
        TENSOR_EXTERNAL_DATA, _length_delimited(1, key.encode()) + _length_delimited(2, value.encode())
    )


def _tensor(buffer, start: int, end: int, location: str) -> bytes:
    fields = list(_fields(buffer, start, end))
    raw = [f for f in fields if f[0] == TENSOR_RAW_DATA and f[1] == LENGTH_DELIMITED]
    external = any(f[0] in (TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION) for f in fields)
    if len(raw) != 1 or external or raw[0][3] - raw[0][2] < MIN_MAPPED_BYTES:
        return bytes(buffer[start:end])
    _, _, raw_start, raw_end, _ = raw[0]
    kept = b"".join(bytes(buffer[f[4] : f[3]]) for f in fields if f is not raw[0])
    return (
        kept
        + _entry("location", location)
        + _entry("offset", str(raw_start))
        + _entry("length", str(raw_end - raw_start))
        + _encode_varint(TENSOR_DATA_LOCATION << 3)
        + _encode_varint(onnx.TensorProto.EXTERNAL)
    )


def _graph(buffer, start: int, end: int, location: str) -> bytes:
    parts = []
    kept_from = start  # the fields since the last initializer are copied as one run
    for number, wire_type, value_start, value_end, field_start in _fields(buffer, start, end):
        # A tensor shorter than MIN_MAPPED_BYTES cannot hold raw_data worth mapping: it stays in the run.
        if (
            number == GRAPH_INITIALIZER
            and wire_type == LENGTH_DELIMITED
            and value_end - value_start >= MIN_MAPPED_BYTES
        ):
            parts.append(bytes(buffer[kept_from:field_start]))
            parts.append(
                _length_delimited(GRAPH_INITIALIZER, _tensor(buffer, value_start, value_end, location))
            )
            kept_from = value_end
    parts.append(bytes(buffer[kept_from:end]))
    return b"".join(parts)


def load_mapped(path: str | os.PathLike) -> onnx.ModelProto:
    """The model at ``path`` with its large main-graph weights described as external data in the
    file itself. Raises ``WireFormatError`` (or protobuf's DecodeError) when it cannot."""
    path = pathlib.Path(path)
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        buffer = memoryview(mapped)
        try:
            parts = []
            for number, wire_type, value_start, value_end, field_start in _fields(buffer, 0, len(buffer)):
                if number == MODEL_GRAPH and wire_type == LENGTH_DELIMITED:
                    parts.append(
                        _length_delimited(MODEL_GRAPH, _graph(buffer, value_start, value_end, path.name))
                    )
                else:
                    parts.append(bytes(buffer[field_start:value_end]))
        finally:
            buffer.release()
    proto = onnx.ModelProto()
    proto.ParseFromString(b"".join(parts))
    return proto


class _DataRef:
    """The weight ``key`` refers to, ``length`` bytes long, written while writing the model."""

    def __init__(self, key: int, length: int):
        self.key, self.length = key, length


def _size(pieces: list) -> int:
    return sum(piece.length if isinstance(piece, _DataRef) else len(piece) for piece in pieces)


def _embedded_tensor(buffer, start: int, end: int, data_name: str, name_bytes: bytes) -> list | None:
    if buffer.obj.find(name_bytes, start, end) < 0:  # an inline tensor: no fields to read
        return None
    fields = list(_fields(buffer, start, end))
    entries: dict[str, str] = {}
    for number, wire_type, value_start, value_end, _ in fields:
        if number == TENSOR_EXTERNAL_DATA and wire_type == LENGTH_DELIMITED:
            entry = {
                n: bytes(buffer[s:e]).decode() for n, _, s, e, _ in _fields(buffer, value_start, value_end)
            }
            entries[entry.get(1, "")] = entry.get(2, "")
    if entries.get("location") != data_name:
        return None
    kept = b"".join(
        bytes(buffer[f[4] : f[3]]) for f in fields if f[0] not in (TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION)
    )
    length = int(entries.get("length", 0))
    header = _encode_varint(TENSOR_RAW_DATA << 3 | LENGTH_DELIMITED) + _encode_varint(length)
    return [kept, header, _DataRef(int(entries.get("offset", 0)), length)]


def _wrap(number: int, pieces: list) -> list:
    return [_encode_varint(number << 3 | LENGTH_DELIMITED) + _encode_varint(_size(pieces)), *pieces]


def write_embedded(
    small_model: bytes,
    data_name: str,
    output: BinaryIO,
    write_data: Callable[[int, int, BinaryIO], None],
    expected: int,
) -> None:
    """Write ``small_model`` as one embedded model file to the binary stream ``output``.

    ``small_model`` refers to ``expected`` main-graph weights as external data at location
    ``data_name``; each is written in its place as ``raw_data`` by ``write_data(offset, length,
    output)`` (offset and length as the reference gives them), one weight at a time, so the whole
    model is never held in memory. Raises ``WireFormatError``, before writing anything, when not
    exactly ``expected`` main-graph initializers refer to ``data_name``."""
    buffer = memoryview(small_model)
    name_bytes = data_name.encode()
    pieces: list = []
    embedded = 0
    for number, wire_type, value_start, value_end, field_start in _fields(buffer, 0, len(buffer)):
        if number != MODEL_GRAPH or wire_type != LENGTH_DELIMITED:
            pieces.append(bytes(buffer[field_start:value_end]))
            continue
        graph: list = []
        kept_from = value_start  # the fields since the last embedded weight go as one run
        for g_number, g_type, g_start, g_end, g_field in _fields(buffer, value_start, value_end):
            is_initializer = g_number == GRAPH_INITIALIZER and g_type == LENGTH_DELIMITED
            tensor = (
                _embedded_tensor(buffer, g_start, g_end, data_name, name_bytes) if is_initializer else None
            )
            if tensor is not None:
                graph.append(buffer[kept_from:g_field])
                graph.extend(_wrap(GRAPH_INITIALIZER, tensor))
                kept_from = g_end
                embedded += 1
        graph.append(buffer[kept_from:value_end])
        pieces.extend(_wrap(MODEL_GRAPH, graph))
    if embedded != expected:
        raise WireFormatError("weights outside the main graph's initializers are external")
    for piece in pieces:
        if isinstance(piece, _DataRef):
            write_data(piece.key, piece.length, output)
        else:
            output.write(piece)
