"""Value-range facts about constants, for range checks and conversion statistics."""

from __future__ import annotations

import dataclasses
import mmap
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import onnx_ir as ir

from mpcompile.core.precision import LowPrecisionFormat

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class ConstantRange:
    """Range of a float constant measured against a low-precision format."""

    max_abs: float  # largest finite magnitude
    overflowing: int  # finite values that would round to +-inf
    overflowing_positive: int
    flushed_to_zero: int  # nonzero values that would round to zero
    subnormal: int  # values that would become subnormal

    @property
    def in_range(self) -> bool:
        return self.overflowing == 0


def constant_tensor(value: ir.Value) -> ir.TensorProtocol | None:
    """The tensor behind an initializer value or a Constant node's output, if any."""
    if value.const_value is not None:
        return value.const_value
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and producer.domain == "":
        attr = producer.attributes.get("value")
        if attr is not None and attr.type == ir.AttributeType.TENSOR:
            return attr.as_tensor()
    return None


class SharedMaps:
    """One read-only map per external-data file, shared by the reads of FP32 external weights
    in a conversion: the range scans, and the conversion of the weights while they are saved.

    onnx-ir maps the whole file and checks its path for every tensor it loads; on a model of
    9,000 small weights that costs more than scanning them. Here the first tensor of each file
    is loaded by onnx-ir (so its path checks run), the file is then mapped once, and the pages
    of the tensors read are dropped from this process once ``DROP_BATCH_BYTES`` of them have
    been read (one ``madvise`` per batch: one per tensor cost more than the scans of small
    weights), so the reads add no more than one tensor and a batch to the resident set.
    ``close()`` unmaps everything; an instance that is never closed unmaps when collected.
    """

    def __init__(self) -> None:
        self._maps: dict[str, mmap.mmap] = {}
        self._read: dict[str, tuple[int, int]] = {}  # per file, the span read since its last drop

    def read(self, tensor: ir.ExternalTensor, use: Callable[[np.ndarray], T]) -> T:
        """``use(values)`` for a FLOAT external tensor's values (shaped; valid only during the
        call): read through its file's map once that is mapped, else loaded by onnx-ir, released,
        and its file mapped for the reads that follow."""
        flat = self.view(tensor)
        if flat is not None:
            try:
                return use(flat.reshape(tensor.shape.numpy()))
            finally:
                self.release(tensor)
        array = tensor.numpy()
        try:
            return use(array)
        finally:
            del array  # a view of the mapped file: unmapping while it lives raises BufferError
            tensor.release()
            if tensor.dtype == ir.DataType.FLOAT:
                self.add(tensor)

    def view(self, tensor: ir.ExternalTensor) -> np.ndarray | None:
        """The values of a little-endian FLOAT external tensor through its file's map, flat, or
        None to let onnx-ir load it (file not mapped yet, no values, or a tensor that runs past the
        file's end: onnx-ir reports the truncation). ``release(tensor)`` once they are read."""
        mapped = self._maps.get(tensor.path)
        if mapped is None or tensor.dtype != ir.DataType.FLOAT:
            return None
        offset = tensor.offset or 0
        count = tensor.size
        if count == 0 or offset + 4 * count > len(mapped):
            return None
        return np.frombuffer(mapped, dtype="<f4", count=count, offset=offset)

    def release(self, tensor: ir.ExternalTensor) -> None:
        """The values of ``tensor`` (from ``view``) were read: their pages may be dropped."""
        offset = tensor.offset or 0
        self._mark_read(tensor.path, self._maps[tensor.path], offset, offset + 4 * tensor.size)

    def scan(self, tensor: ir.ExternalTensor, low: LowPrecisionFormat) -> ConstantRange | None:
        """The range of a little-endian FLOAT external tensor, or None to let onnx-ir load it."""
        array = self.view(tensor)
        if array is None:
            return None
        try:
            return _measure_array(array, low)
        finally:
            self.release(tensor)

    def _mark_read(self, path: str, mapped: mmap.mmap, start: int, end: int) -> None:
        """Add [start, end) to the span read in ``path``; drop the span's pages once it is a batch,
        or when a tensor lies away from it (weights are mostly scanned in file order)."""
        span = self._read.get(path)
        if span is not None and span[0] <= end and start <= span[1] + DROP_GAP_BYTES:
            span = (min(span[0], start), max(span[1], end))
        else:
            if span is not None:
                _drop_pages(mapped, span[0], span[1] - span[0])
            span = (start, end)
        if span[1] - span[0] >= DROP_BATCH_BYTES:
            _drop_pages(mapped, span[0], span[1] - span[0])
            self._read.pop(path, None)
        else:
            self._read[path] = span

    def add(self, tensor: ir.ExternalTensor) -> None:
        """Map ``tensor``'s file for the scans that follow (after onnx-ir loaded the tensor)."""
        if tensor.path in self._maps:
            return
        with open(tensor.path, "rb") as handle:
            self._maps[tensor.path] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)

    def close(self) -> None:
        for mapped in self._maps.values():
            mapped.close()
        self._maps.clear()
        self._read.clear()


# The pages of scanned weights are dropped in batches of this many bytes; a tensor further than
# DROP_GAP_BYTES past the batch's end (or before its start) drops the batch first.
DROP_BATCH_BYTES = 8 * 2**20
DROP_GAP_BYTES = 2**20


def _drop_pages(mapped: mmap.mmap, offset: int, length: int) -> None:
    if length <= 0 or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = offset - offset % mmap.PAGESIZE
    mapped.madvise(mmap.MADV_DONTNEED, start, min(offset + length, len(mapped)) - start)


def measure(
    tensor: ir.TensorProtocol, low: LowPrecisionFormat, shared: SharedMaps | None = None
) -> ConstantRange:
    """Scan a float tensor once; external tensors are released afterwards. With ``shared``,
    float32 external tensors are read through one map per file (see ``SharedMaps``)."""
    if shared is not None and isinstance(tensor, ir.ExternalTensor) and tensor.dtype == ir.DataType.FLOAT:
        return shared.read(tensor, lambda array: _measure_array(array, low))
    return _measure_loaded(tensor, low)


def _measure_loaded(tensor: ir.TensorProtocol, low: LowPrecisionFormat) -> ConstantRange:
    array = np.asarray(tensor.numpy(), dtype=np.float32)
    try:
        return _measure_array(array, low)
    finally:
        del array  # a view of the mapped file: unmapping while it lives raises BufferError
        if isinstance(tensor, ir.ExternalTensor):
            tensor.release()


# Tensors larger than this many values are scanned in chunks through one reused buffer: a
# scan's temporaries stay at 1 MiB whatever the tensor's size (the whole |x| of a 1 GiB weight
# was another 1 GiB), with fewer fresh pages to fault in.
SCAN_CHUNK = 1 << 18


def _measure_array(array: np.ndarray, low: LowPrecisionFormat) -> ConstantRange:
    flat = array.reshape(-1)
    if flat.size == 0:
        return ConstantRange(0.0, 0, 0, 0, 0)
    if flat.size <= SCAN_CHUNK:
        return _measure_chunk(flat, np.abs(flat), low)
    buffer = np.empty(SCAN_CHUNK, dtype=flat.dtype)
    parts = []
    for start in range(0, flat.size, SCAN_CHUNK):
        chunk = flat[start : start + SCAN_CHUNK]
        parts.append(_measure_chunk(chunk, np.abs(chunk, out=buffer[: chunk.size]), low))
    return ConstantRange(
        max(part.max_abs for part in parts),
        sum(part.overflowing for part in parts),
        sum(part.overflowing_positive for part in parts),
        sum(part.flushed_to_zero for part in parts),
        sum(part.subnormal for part in parts),
    )


def _measure_chunk(chunk: np.ndarray, magnitude: np.ndarray, low: LowPrecisionFormat) -> ConstantRange:
    """The range of ``chunk`` (flat), given ``magnitude``, its absolute values."""
    max_abs = float(magnitude.max())
    if not np.isfinite(max_abs):  # inf or nan present: measure the finite values only
        finite = magnitude[np.isfinite(magnitude)]
        max_abs = float(finite.max()) if finite.size else 0.0
    overflowing = overflowing_positive = 0
    if max_abs >= low.overflow_threshold:  # rare: count only when something overflows
        overflow_mask = np.isfinite(magnitude) & (magnitude >= low.overflow_threshold)
        overflowing = int(np.count_nonzero(overflow_mask))
        overflowing_positive = int(np.count_nonzero(overflow_mask & (chunk > 0)))
    flushed = subnormal = 0
    below_normal = magnitude[magnitude < low.tiny]  # usually few values: count on the subset
    if below_normal.size:
        nonzero = below_normal[below_normal > 0]
        flushed = int(np.count_nonzero(nonzero <= low.smallest_subnormal / 2))
        subnormal = int(nonzero.size) - flushed
    return ConstantRange(max_abs, overflowing, overflowing_positive, flushed, subnormal)


class ConstantRanges:
    """The range of every float constant a conversion asks about, scanned once per value.

    Owned by the conversion's ``PrecisionPlan``: AssignPrecision's range rule and
    ConvertConstants' statistics read the same scans. External-data files are mapped once for
    all the scans (``SharedMaps``) and released by ``close()``.
    """

    def __init__(self, low: LowPrecisionFormat):
        self.low = low
        self._ranges: dict[ir.Value, ConstantRange | None] = {}
        self._maps = SharedMaps()

    def of(self, value: ir.Value) -> ConstantRange | None:
        """The range of a float constant's values against ``low``, or None for a non-constant."""
        if value not in self._ranges:
            tensor = constant_tensor(value)
            self._ranges[value] = None if tensor is None else measure(tensor, self.low, self._maps)
        return self._ranges[value]

    def close(self) -> None:
        self._maps.close()
