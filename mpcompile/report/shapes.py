"""Concrete shapes for the report: resolve symbolic input dims, then run onnx shape inference.

FLOP and byte estimates need numbers. Symbolic dims of graph inputs are replaced by values
from ``--shape`` or by documented defaults before shape inference, and every assumption is
recorded so the report can show it:

* ``--shape input:1x128`` sets the whole shape of graph input ``input``;
* ``--shape seq:256`` or ``--shape seq=256`` sets every dim named ``seq`` (``NAME:N`` is read
  as a dim when no input is called ``NAME``, as ``mpcompile validate`` does);
* with ``--numerics --inputs data.npz``, inputs take the shapes of the arrays given;
* otherwise a batch-like dim (axis 0 of a graph input, or any dim whose name contains
  "batch") is :data:`DEFAULT_BATCH`, and every other symbolic dim is :data:`DEFAULT_DIM`.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
import onnx_ir.passes.common

from mpcompile.errors import ExitCode, MpcompileError

DEFAULT_BATCH = 1
DEFAULT_DIM = 128  # a typical sequence length; images usually have static spatial dims


class ReportOptionError(MpcompileError):
    """A report option (``--shape``, ``--op`` ...) that cannot be understood."""

    exit_code = ExitCode.USAGE


@dataclasses.dataclass
class ShapeSpec:
    """User-given shapes: whole input shapes and named dims."""

    inputs: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    dims: dict[str, int] = dataclasses.field(default_factory=dict)
    # Shapes of user-given feeds (--inputs): used for inputs --shape does not name.
    feed_shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(cls, specs: list[str] | tuple[str, ...] | None) -> ShapeSpec:
        """Parse ``["input:1x128", "seq=256"]``; raises ReportOptionError on bad text."""
        spec = cls()
        for text in specs or ():
            if "=" in text and ":" not in text:
                name, _, value = text.partition("=")
                spec.dims[name.strip()] = _positive_int(value, text)
            elif ":" in text:
                name, _, dims = text.rpartition(":")
                if not name:
                    raise ReportOptionError(f"--shape {text!r}: expected NAME:DIMxDIM... or DIM_NAME=VALUE")
                spec.inputs[name] = (
                    tuple(_positive_int(d, text) for d in dims.lower().split("x")) if dims else ()
                )
            else:
                raise ReportOptionError(f"--shape {text!r}: expected NAME:DIMxDIM... or DIM_NAME=VALUE")
        return spec


def _positive_int(text: str, spec: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ReportOptionError(f"--shape {spec!r}: {text!r} is not a whole number") from None
    if value < 0:
        raise ReportOptionError(f"--shape {spec!r}: dims must not be negative")
    return value


def resolve_input_shapes(model: ir.Model, spec: ShapeSpec) -> dict[str, int]:
    """Make every main-graph input shape static, in place; returns the dims that were assumed.

    The returned mapping names each assumption: a dim name (``"seq"``) or ``"input[axis]"``
    for unnamed dims, with the value used.
    """
    known = {inp.name for inp in model.graph.inputs}
    dims = dict(spec.dims)
    given_shapes = {name: shape for name, shape in spec.feed_shapes.items() if name in known}
    for name, shape in spec.inputs.items():
        if name in known:
            given_shapes[name] = shape
        elif len(shape) == 1:
            dims[name] = shape[0]  # NAME:N for a symbolic dim
        else:
            raise ReportOptionError(f"--shape {name}: the model has no input of that name ({sorted(known)})")
    assumed: dict[str, int] = {}
    for value in model.graph.inputs:
        if value.shape is None:
            if value.name in given_shapes:
                value.shape = ir.Shape(given_shapes[value.name])
            continue
        if value.name in given_shapes:
            given = given_shapes[value.name]
            if len(given) != value.shape.rank():
                raise ReportOptionError(
                    f"--shape {value.name}: gives {len(given)} dims but the input has rank {value.shape.rank()}"
                )
            value.shape = ir.Shape(given)
            continue
        resolved: list[int] = []
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, int):
                resolved.append(dim)
                continue
            name = dim.value if isinstance(dim, ir.SymbolicDim) else None
            if name and name in dims:
                resolved.append(dims[name])
                continue
            batch_like = axis == 0 or (name is not None and "batch" in name.lower())
            chosen = DEFAULT_BATCH if batch_like else DEFAULT_DIM
            key = name or f"{value.name}[{axis}]"
            chosen = assumed.setdefault(key, chosen)
            resolved.append(chosen)
        value.shape = ir.Shape(resolved)
    return assumed


def infer_shapes(model: ir.Model) -> bool:
    """Run onnx shape inference (lenient, with data propagation) in place; False when it failed."""
    result = ir.passes.common.ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
    return result.modified


def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The value's shape as ints, or None when unknown or not fully static."""
    if value is None or value.shape is None:
        return None
    dims = list(value.shape)
    if not all(isinstance(d, int) for d in dims):
        return None
    return tuple(dims)


def element_count(value: ir.Value | None) -> int | None:
    """Number of elements of a value with a static shape, else None."""
    shape = static_shape(value)
    if shape is None:
        return None
    count = 1
    for dim in shape:
        count *= dim
    return count
