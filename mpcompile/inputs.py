"""Model inputs for validation and numeric reports: generated from the signature, or loaded.

Generated inputs are seeded and follow each input's dtype and shape:

- integer inputs that feed a ``Gather``'s indices (token ids, position ids, token types) are
  drawn uniformly from ``[0, n)`` where ``n`` is the gathered data's size along the axis;
- inputs whose name contains ``mask`` are 0/1 (each row: ones, then a zero-padded tail of
  random length up to half the last axis), in the input's own dtype;
- floating-point inputs are standard normal; other integer inputs are 0 or 1; bools random.

Dynamic dimensions: ``shapes`` (``--shape``) gives either an input's whole shape
(``input_ids:2x128``) or the value of a symbolic dimension (``sequence:128``). Otherwise a
symbolic or unknown first dimension is ``DEFAULT_BATCH`` (1) and any other is ``DEFAULT_DIM`` (16).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence

import ml_dtypes
import numpy as np
import onnx_ir as ir

from mpcompile import errors

DEFAULT_BATCH = 1
DEFAULT_DIM = 16
MASK_MARKER = "mask"
# Ops an index tensor passes through unchanged in value on its way to a Gather.
_INDEX_PRESERVING_OPS = frozenset(
    {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand"}
)

Feeds = dict[str, np.ndarray]


class InputsError(errors.MpcompileError):
    """Bad ``--inputs`` data or ``--shape`` option."""

    exit_code = errors.ExitCode.USAGE


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """How one model input is generated."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    kind: str  # "token_ids" | "mask" | "normal" | "int" | "bool"
    high: int | None = None  # token ids are drawn from [0, high)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "dtype": str(self.dtype),
            "shape": list(self.shape),
            "kind": self.kind,
            "high": self.high,
        }


def parse_shape_options(items: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``name:1x3x224x224`` items into ``{name: (1, 3, 224, 224)}``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        if not sep or not name or not dims:
            raise InputsError(f"--shape {item!r}: expected NAME:DIMS such as input_ids:1x128")
        try:
            shape = tuple(int(dim) for dim in dims.lower().split("x"))
        except ValueError:
            raise InputsError(f"--shape {item!r}: dimensions must be integers joined by 'x'") from None
        if any(dim < 0 for dim in shape):
            raise InputsError(f"--shape {item!r}: dimensions must not be negative")
        shapes[name] = shape
    return shapes


def model_inputs(model: ir.Model) -> list[ir.Value]:
    """The graph inputs a caller must feed (initializers listed as inputs are optional)."""
    return [value for value in model.graph.inputs if not value.is_initializer()]


def input_specs(model: ir.Model, shapes: Mapping[str, Sequence[int]] | None = None) -> list[InputSpec]:
    """Decide dtype, concrete shape and value kind of each input of ``model``."""
    shapes = dict(shapes or {})
    inputs = model_inputs(model)
    input_names = {value.name for value in inputs}
    dim_values = {name: tuple(dims) for name, dims in shapes.items() if name not in input_names}
    symbols = _symbolic_dims(inputs)
    defaults = _symbol_defaults(inputs)
    for name, dims in dim_values.items():
        if name not in symbols:
            known = sorted(input_names | symbols)
            raise InputsError(
                f"--shape {name}: no input or symbolic dimension of that name (known: {', '.join(known)})"
            )
        if len(dims) != 1:
            raise InputsError(f"--shape {name}: a symbolic dimension takes one value, got {len(dims)}")
    specs = []
    for value in inputs:
        chosen = defaults | {name: dims[0] for name, dims in dim_values.items()}
        shape = _concrete_shape(value, shapes.get(value.name), chosen)
        dtype = _numpy_dtype(value)
        specs.append(_spec_for(model, value, dtype, shape))
    return specs


def generate_inputs(
    model: ir.Model,
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    batches: int = 1,
) -> list[Feeds]:
    """``batches`` seeded feed dicts for ``model`` (see the module docstring for the rules)."""
    specs = input_specs(model, shapes)
    return [generate_from_specs(specs, seed=seed, batch_index=index) for index in range(batches)]


def generate_from_specs(specs: Sequence[InputSpec], *, seed: int = 0, batch_index: int = 0) -> Feeds:
    """One feed dict; the same seed and batch index always give the same arrays."""
    rng = np.random.default_rng([seed, batch_index])
    return {spec.name: _generate(spec, rng) for spec in specs}


def load_inputs(path: str | os.PathLike) -> list[Feeds]:
    """Feeds from an ``.npz`` file (one batch) or a folder of ``.npz`` files (one batch each, by name)."""
    path = pathlib.Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise InputsError(f"{path}: folder holds no .npz files")
    elif path.is_file():
        files = [path]
    else:
        raise errors.InputNotFoundError(f"{path}: no such file or folder")
    batches = []
    for file in files:
        try:
            with np.load(file, allow_pickle=False) as data:
                batches.append({name: data[name] for name in data.files})
        except (OSError, ValueError) as exc:
            raise InputsError(f"{file}: not a readable .npz file ({exc})") from None
    return batches


def check_feeds(model: ir.Model, feeds: Mapping[str, np.ndarray], *, source: str = "inputs") -> None:
    """Refuse feeds that miss an input or name one the model does not have."""
    names = {value.name for value in model_inputs(model)}
    optional = {value.name for value in model.graph.inputs if value.is_initializer()}
    missing = sorted(names - feeds.keys())
    unknown = sorted(feeds.keys() - names - optional)
    if missing:
        raise InputsError(f"{source}: no data for model input(s) {', '.join(missing)}")
    if unknown:
        raise InputsError(f"{source}: the model has no input(s) named {', '.join(unknown)}")


def cast_feeds(model: ir.Model, feeds: Mapping[str, np.ndarray]) -> Feeds:
    """Feeds converted to the dtypes ``model`` declares (a converted model may take FP16)."""
    declared = {value.name: value for value in model.graph.inputs}
    cast: Feeds = {}
    for name, array in feeds.items():
        value = declared.get(name)
        if value is None:
            continue
        dtype = _numpy_dtype(value)
        cast[name] = np.asarray(array).astype(dtype, copy=False)
    return cast


def given_inputs(
    model: ir.Model,
    inputs: str | os.PathLike | Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
    *,
    given_label: str = "given",
) -> tuple[list[Feeds], str]:
    """User-supplied batches (an ``.npz`` file or folder, one feed dict, or a list of them),
    each checked against the model and cast to its declared dtypes, and where they came from."""
    if isinstance(inputs, (str, os.PathLike)):
        batches, source = load_inputs(inputs), os.fspath(inputs)
    elif isinstance(inputs, Mapping):
        batches, source = [dict(inputs)], given_label
    else:
        batches, source = [dict(batch) for batch in inputs], given_label
    if not batches:
        raise InputsError("no input batches given")
    for index, batch in enumerate(batches):
        check_feeds(model, batch, source=f"{source} (batch {index})")
    return [cast_feeds(model, batch) for batch in batches], source  # e.g. int32 ids for int64 inputs


def _generate(spec: InputSpec, rng: np.random.Generator) -> np.ndarray:
    if spec.kind == "token_ids":
        return rng.integers(0, spec.high or 1, size=spec.shape).astype(spec.dtype)
    if spec.kind == "mask":
        return _padding_mask(spec.shape, rng).astype(spec.dtype)
    if spec.kind == "normal":
        return rng.standard_normal(size=spec.shape, dtype=np.float32).astype(spec.dtype)
    if spec.kind == "bool":
        return rng.integers(0, 2, size=spec.shape).astype(bool)
    return rng.integers(0, 2, size=spec.shape).astype(spec.dtype)


def _padding_mask(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if not shape or shape[-1] == 0:
        return np.ones(shape, dtype=np.int64)
    length = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    kept = rng.integers(math.ceil(length / 2), length + 1, size=rows)
    mask = (np.arange(length)[None, :] < kept[:, None]).astype(np.int64)
    return mask.reshape(shape)


def _spec_for(model: ir.Model, value: ir.Value, dtype: np.dtype, shape: tuple[int, ...]) -> InputSpec:
    if MASK_MARKER in value.name.lower():
        return InputSpec(value.name, dtype, shape, "mask")
    if dtype == np.bool_:
        return InputSpec(value.name, dtype, shape, "bool")
    if np.issubdtype(dtype, np.integer):
        high = gather_index_limit(value)
        if high is not None:
            return InputSpec(value.name, dtype, shape, "token_ids", high)
        return InputSpec(value.name, dtype, shape, "int")
    return InputSpec(value.name, dtype, shape, "normal")


def gather_index_limit(value: ir.Value) -> int | None:
    """The exclusive upper bound for ``value`` when it reaches Gather indices, else None.

    Follows index-preserving ops (Cast, Reshape, ...); with several Gathers, the smallest bound.
    """
    limits: list[int] = []
    pending, seen = [value], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for use in current.uses():
            node = use.node
            if node.op_type == "Gather" and node.domain in ("", "ai.onnx") and use.idx == 1:
                limit = _gather_axis_size(node)
                if limit is not None:
                    limits.append(limit)
            elif node.op_type in _INDEX_PRESERVING_OPS and use.idx == 0:
                pending.extend(node.outputs)
    return min(limits) if limits else None


def _gather_axis_size(node: ir.Node) -> int | None:
    data = node.inputs[0]
    if data is None or data.shape is None:
        return None
    axis_attr = node.attributes.get("axis")
    axis = axis_attr.as_int() if axis_attr is not None else 0
    if not -len(data.shape) <= axis < len(data.shape):
        return None
    size = data.shape[axis]
    return size if isinstance(size, int) and size > 0 else None


def _symbolic_dims(inputs: Iterable[ir.Value]) -> set[str]:
    names = set()
    for value in inputs:
        for dim in value.shape or ():
            if isinstance(dim, ir.SymbolicDim) and dim.value:
                names.add(dim.value)
    return names


def _symbol_defaults(inputs: Iterable[ir.Value]) -> dict[str, int]:
    """One default per symbolic dimension name, so inputs sharing a symbol agree."""
    defaults: dict[str, int] = {}
    for value in inputs:
        for axis, dim in enumerate(value.shape or ()):
            if isinstance(dim, ir.SymbolicDim) and dim.value:
                default = DEFAULT_BATCH if axis == 0 else DEFAULT_DIM
                defaults[dim.value] = min(defaults.get(dim.value, default), default)
    return defaults


def _concrete_shape(
    value: ir.Value, given: Sequence[int] | None, dim_values: Mapping[str, int]
) -> tuple[int, ...]:
    declared = value.shape
    if given is not None:
        given = tuple(given)
        if declared is not None:
            if len(given) != len(declared):
                raise InputsError(
                    f"--shape {value.name}: model declares rank {len(declared)}, got {len(given)} dimensions"
                )
            for axis, (dim, want) in enumerate(zip(declared, given, strict=True)):
                if isinstance(dim, int) and dim != want:
                    raise InputsError(
                        f"--shape {value.name}: axis {axis} is fixed at {dim} in the model, got {want}"
                    )
        return given
    if declared is None:
        raise InputsError(
            f"input {value.name!r} has no declared shape; give one with --shape {value.name}:DIMS"
        )
    shape = []
    for axis, dim in enumerate(declared):
        if isinstance(dim, int):
            shape.append(dim)
        elif isinstance(dim, ir.SymbolicDim) and dim.value in dim_values:
            shape.append(dim_values[dim.value])
        else:
            shape.append(DEFAULT_BATCH if axis == 0 else DEFAULT_DIM)
    return tuple(shape)


def _numpy_dtype(value: ir.Value) -> np.dtype:
    if value.dtype is None:
        raise InputsError(f"input {value.name!r} has no declared element type")
    if value.dtype == ir.DataType.BFLOAT16:
        return np.dtype(ml_dtypes.bfloat16)
    try:
        return np.dtype(value.dtype.numpy())
    except (TypeError, ValueError):
        raise InputsError(f"input {value.name!r}: element type {value.dtype.name} is not supported") from None
