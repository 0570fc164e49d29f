"""Model inputs for validation and numeric reports: generated from the signature, or loaded.

Generated inputs are seeded and follow each input's dtype and shape:

- integer inputs that feed a ``Gather``'s indices (token ids, position ids, token types) are
  drawn uniformly from ``[0, n)`` where ``n`` is the gathered data's size along the axis;
- inputs whose name contains ``mask`` are 0/1 (each row: ones, then a zero-padded tail of
  random length up to half the last axis), in the input's own dtype;
- integer inputs named like ``position_ids`` count positions along their last axis, starting
  after the past a longer attention mask covers (a KV-cache decoder's ``past + sequence``);
- floating-point inputs are standard normal; other integer inputs are 0 or 1; bools random.

Dynamic dimensions: ``shapes`` (``--shape``) gives either an input's whole shape
(``input_ids:2x128``) or the value of a symbolic dimension (``sequence:128``). Otherwise a
symbolic or unknown first dimension is ``DEFAULT_BATCH`` (1) and any other is ``DEFAULT_DIM`` (16).
A dimension that exporters write as an expression of other dimensions
(``past_sequence_length + sequence_length``) takes the value of that expression. A generated
dimension is never zero or negative (a fixed dimension the model declares as 0 or -1 is treated
as unknown). When the model rejects these sizes, ``mpcompile.evaluate.accepted_inputs`` tries the
sizes and scalar values the model implies, then a ladder of sizes.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
import operator
import os
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np
import onnx_ir as ir

from mpcompile import errors
from mpcompile.evaluate import memory_limit
from mpcompile.irtools.graphs import all_graphs
from mpcompile.irtools.values import forward_uses

DEFAULT_BATCH = 1
DEFAULT_DIM = 16
MAX_DIM = (1 << 63) - 1  # ONNX and ONNX Runtime dims are int64
# Provenance label of generated inputs, saved in --auto records and numeric reports: a stable name,
# not a module path (it predates the move of this module into mpcompile.evaluate).
GENERATOR_LABEL = "mpcompile.inputs"
PAST_MARKER = "past"
MASK_MARKER = "mask"
POSITION_MARKER = "position"
# Ops an index tensor passes through unchanged in value on its way to a Gather.
_INDEX_PRESERVING_OPS = frozenset(
    {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand"}
)

Feeds = dict[str, np.ndarray]


class InputsError(errors.MpcompileError):
    """Bad ``--inputs`` data or ``--shape`` option."""

    exit_code = errors.ExitCode.USAGE


class ModelRunError(InputsError):
    """The FP32 model fails on inputs generated from its own signature: the model's fault, not
    an option's (onnxruntime cannot run it)."""

    exit_code = errors.ExitCode.INVALID_MODEL


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """How one model input is generated."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    kind: str  # "token_ids" | "mask" | "positions" | "normal" | "int" | "bool" | "constant"
    high: int | None = None  # token ids (and positions) stay in [0, high)
    offset: int = 0  # positions start here (the past a longer attention mask covers)
    value: float | int | None = None  # "constant": every element (a value the model compares with)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "dtype": str(self.dtype),
            "shape": list(self.shape),
            "kind": self.kind,
            "high": self.high,
            "offset": self.offset,
            "value": self.value,
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
        if any(dim > MAX_DIM for dim in shape):
            raise InputsError(f"--shape {item!r}: a dimension above {MAX_DIM} (2^63 - 1) cannot be fed")
        shapes[name] = shape
    return shapes


def model_inputs(model: ir.Model) -> list[ir.Value]:
    """The graph inputs a caller must feed (initializers listed as inputs are optional)."""
    return [value for value in model.graph.inputs if not value.is_initializer()]


def input_specs(
    model: ir.Model,
    shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    free_dim: int = DEFAULT_DIM,
    dims: Mapping[str, int] | None = None,
    values: Mapping[str, float | int] | None = None,
) -> list[InputSpec]:
    """Decide dtype, concrete shape and value kind of each input of ``model``; ``free_dim``: the
    size of dynamic dimensions nothing else decides (batch dimensions excepted); ``dims``: sizes
    of named symbolic dims in place of that default (``shapes`` still wins); ``values``: inputs
    filled with one value (kind ``constant``)."""
    shapes = dict(shapes or {})
    inputs = model_inputs(model)
    input_names = {value.name for value in inputs}
    dim_values = {name: tuple(dims) for name, dims in shapes.items() if name not in input_names}
    symbols = _symbolic_dims(inputs)
    defaults = _symbol_defaults(inputs, free_dim) | dict(dims or {})
    fixed_axes = _conv_channel_axes(inputs)
    for (value, axis), size in fixed_axes.items():
        dim = value.shape[axis]
        if isinstance(dim, ir.SymbolicDim) and dim.value in defaults:
            defaults[dim.value] = size
    for name, dims in dim_values.items():
        if name not in symbols:
            known = sorted(input_names | symbols)
            raise InputsError(
                f"--shape {name}: no input or symbolic dimension of that name (known: {', '.join(known)})"
            )
        if len(dims) != 1:
            raise InputsError(f"--shape {name}: a symbolic dimension takes one value, got {len(dims)}")
    chosen = symbol_values(inputs, {name: dims[0] for name, dims in dim_values.items()}, defaults)
    specs = []
    for value in inputs:
        axes = {axis: size for (fixed, axis), size in fixed_axes.items() if fixed is value}
        shape = _concrete_shape(value, shapes.get(value.name), chosen, free_dim, axes)
        dtype = _numpy_dtype(value)
        spec = _spec_for(model, value, dtype, shape)
        if values and value.name in values:
            spec = dataclasses.replace(spec, kind="constant", value=values[value.name], high=None)
        specs.append(spec)
    memory_limit.check_fits(sum(spec_bytes(spec) for spec in specs), "the generated inputs")
    return _with_position_offsets(specs)


def spec_bytes(spec: InputSpec) -> int:
    """Bytes of the array ``spec`` describes (a Python int: never overflows)."""
    return math.prod(spec.shape) * spec.dtype.itemsize


def symbol_values(
    inputs: Sequence[ir.Value], given: Mapping[str, int], defaults: Mapping[str, int] | None = None
) -> dict[str, int]:
    """The value of each symbolic dimension of ``inputs``: ``given``, else ``defaults`` (by default
    those of generated inputs), with a KV-cache attention mask's own length symbol set to past +
    current. Expressions (``past_sequence_length + sequence_length``) are evaluated from the rest."""
    chosen = dict(_symbol_defaults(inputs) if defaults is None else defaults) | dict(given)
    _mask_spans_past(inputs, chosen, given=given.keys())
    for name in _symbolic_dims(inputs):
        if name not in chosen and (value := _symbolic_dim_value(name, chosen)) is not None:
            chosen[name] = value
    return chosen


def _with_position_offsets(specs: list[InputSpec]) -> list[InputSpec]:
    """Positions continue after the past: an attention mask longer than the position input
    covers past tokens (a KV-cache decoder), so positions start at the difference."""
    mask_lengths = [spec.shape[-1] for spec in specs if spec.kind == "mask" and len(spec.shape) == 2]
    if not mask_lengths:
        return specs
    total = max(mask_lengths)
    return [
        dataclasses.replace(spec, offset=max(0, total - spec.shape[-1]))
        if spec.kind == "positions" and spec.shape
        else spec
        for spec in specs
    ]


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


def load_inputs(path: str | os.PathLike, model: ir.Model | None = None) -> list[Feeds]:
    """Feeds from an ``.npz`` file (one batch) or a folder of ``.npz`` files (one batch each, by name).

    Array headers are checked before any data is read (``mpcompile.evaluate.npz_files``): against
    the memory limit, and with ``model`` against its inputs' names, dtypes and shapes.
    """
    from mpcompile.evaluate import npz_files

    batches = []
    for file in input_files(path):
        check = None
        if model is not None:
            check = functools.partial(_check_headers, model, source=os.fspath(file))
        batches.append(npz_files.read_npz(file, check))
    return batches


def input_files(path: str | os.PathLike) -> list[pathlib.Path]:
    """The ``.npz`` files ``--inputs PATH`` names: the file, or a folder's, sorted by name."""
    path = pathlib.Path(path)
    if path.is_dir():
        files = sorted(file for file in path.glob("*.npz") if file.is_file())
        if not files:
            raise InputsError(f"{path}: folder holds no .npz files")
        return files
    if path.is_file():
        return [path]
    if path.exists():
        raise InputsError(f"{path}: not a regular file or folder")
    raise errors.InputNotFoundError(f"{path}: no such file or folder")


def input_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """The array shapes of the first ``.npz`` file of ``--inputs PATH``, read from the headers."""
    from mpcompile.evaluate import npz_files

    file = input_files(path)[0]
    headers = npz_files.read_headers(file)
    memory_limit.check_fits(sum(header.nbytes for header in headers), f"{file}: its arrays")
    return {header.name: header.shape for header in headers}


def _check_headers(model: ir.Model, headers: Sequence, *, source: str) -> None:
    check_feeds(model, dict.fromkeys(header.name for header in headers), source=source, values=False)
    declared = {value.name: value for value in model.graph.inputs}
    for header in headers:
        _check_dtype(declared[header.name], header.dtype, source)
        _check_shape(declared[header.name], header.shape, source)
    from mpcompile.evaluate.run_memory import check_run_fits  # run_memory imports this module

    shapes = {header.name: header.shape for header in headers}
    check_run_fits(model, shapes, f"{source}: running the model on these inputs")


def check_feeds(
    model: ir.Model, feeds: Mapping[str, np.ndarray | None], *, source: str = "inputs", values: bool = True
) -> None:
    """Refuse feeds that miss an input, name one the model does not have, or (``values``) whose
    arrays have a dtype the input cannot take or a shape its declared dims contradict."""
    names = {value.name for value in model_inputs(model)}
    optional = {value.name for value in model.graph.inputs if value.is_initializer()}
    missing = sorted(names - feeds.keys())
    unknown = sorted(feeds.keys() - names - optional)
    if missing:
        raise InputsError(f"{source}: no data for model input(s) {', '.join(missing)}")
    if unknown:
        raise InputsError(f"{source}: the model has no input(s) named {', '.join(unknown)}")
    if not values:
        return
    declared = {value.name: value for value in model.graph.inputs}
    for name, array in feeds.items():
        try:
            array = np.asarray(array)
        except ValueError:
            raise InputsError(f"{source}: input {name!r} is not an array") from None
        _check_dtype(declared[name], array.dtype, source)
        _check_shape(declared[name], array.shape, source)


# numpy kinds each kind of model input accepts: bools and integers widen to floats; floats never
# become integers or bools silently.
_ACCEPTED_KINDS = {"f": "fiub", "i": "iub", "u": "iub", "b": "biu"}


def _check_dtype(value: ir.Value, dtype: np.dtype, source: str) -> None:
    if dtype.kind == "c":
        raise InputsError(
            f"{source}: input {value.name!r} is given complex data ({dtype}); the imaginary part would be lost"
        )
    if dtype.kind not in "fiub":
        raise InputsError(f"{source}: input {value.name!r} is given {dtype} data, not numbers")
    want = _numpy_dtype(value)
    want_kind = "f" if want == np.dtype(ml_dtypes.bfloat16) else want.kind
    if dtype.kind not in _ACCEPTED_KINDS.get(want_kind, want_kind):
        raise InputsError(f"{source}: input {value.name!r} takes {want}, got {dtype} data")


def _check_shape(value: ir.Value, shape: Sequence[int], source: str) -> None:
    declared = value.shape
    if declared is None:
        return
    if len(shape) != len(declared):
        raise InputsError(
            f"{source}: input {value.name!r} has rank {len(declared)}, got an array of shape {list(shape)}"
        )
    for axis, (dim, got) in enumerate(zip(declared, shape, strict=True)):
        if isinstance(dim, int) and dim > 0 and dim != got:
            raise InputsError(
                f"{source}: input {value.name!r} axis {axis} is fixed at {dim}, got an array of shape {list(shape)}"
            )


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
        batches, source = load_inputs(inputs, model), os.fspath(inputs)
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
    if spec.kind == "positions":
        positions = np.arange(spec.offset, spec.offset + (spec.shape[-1] if spec.shape else 1))
        if spec.high:
            positions = np.minimum(positions, spec.high - 1)
        return np.broadcast_to(positions, spec.shape).astype(spec.dtype)
    if spec.kind == "normal":
        return rng.standard_normal(size=spec.shape, dtype=np.float32).astype(spec.dtype)
    if spec.kind == "bool":
        return rng.integers(0, 2, size=spec.shape).astype(bool)
    if spec.kind == "constant":
        return np.full(spec.shape, spec.value, dtype=spec.dtype)
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
        if POSITION_MARKER in value.name.lower():
            return InputSpec(value.name, dtype, shape, "positions", high)
        if high is not None:
            return InputSpec(value.name, dtype, shape, "token_ids", high)
        return InputSpec(value.name, dtype, shape, "int")
    return InputSpec(value.name, dtype, shape, "normal")


def gather_index_limit(value: ir.Value) -> int | None:
    """The exclusive upper bound for ``value`` when it reaches Gather indices, else None.

    Follows index-preserving ops (Cast, Reshape, ...); with several Gathers, the smallest bound.
    """
    limits: list[int] = []
    for use in forward_uses([value], _preserves_indices):
        node = use.node
        if node.op_type == "Gather" and node.domain in ("", "ai.onnx") and use.idx == 1:
            limit = _gather_axis_size(node)
            if limit is not None:
                limits.append(limit)
    return min(limits) if limits else None


def _preserves_indices(use: Any) -> bool:
    return use.node.op_type in _INDEX_PRESERVING_OPS and use.idx == 0


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
    """Names of the symbolic dimensions of ``inputs``, with the symbols inside expressions."""
    names = set()
    for value in inputs:
        for dim in value.shape or ():
            if isinstance(dim, ir.SymbolicDim) and dim.value:
                names.add(dim.value)
                names.update(_expression_symbols(dim.value))
    return names


def _symbol_defaults(inputs: Iterable[ir.Value], free_dim: int = DEFAULT_DIM) -> dict[str, int]:
    """One default per symbolic dimension name, so inputs sharing a symbol agree. Expressions
    of other symbols get no default of their own: they are evaluated from their symbols."""
    defaults: dict[str, int] = {}
    for value in inputs:
        for axis, dim in enumerate(value.shape or ()):
            if isinstance(dim, ir.SymbolicDim) and dim.value and _parse_expression(dim.value) is None:
                default = DEFAULT_BATCH if axis == 0 else free_dim
                defaults[dim.value] = min(defaults.get(dim.value, default), default)
    return defaults


_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
}


def _parse_expression(text: str) -> ast.expr | None:
    """The arithmetic expression a dimension name spells (``past_sequence_length + 1``), or None
    for a plain symbol or anything that is not ``+ - * //`` over names and integers."""
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(tree, ast.BinOp):
        return None
    for node in ast.walk(tree):
        allowed = isinstance(node, (ast.BinOp, ast.Name, ast.Load)) or (
            isinstance(node, ast.Constant) and type(node.value) is int
        )
        if not allowed and not isinstance(node, tuple(_OPERATORS)):
            return None
    return tree


def is_dim_expression(text: str) -> bool:
    """Whether a dimension name is an arithmetic expression of other dims (``past + 1``)."""
    return _parse_expression(text) is not None


def _expression_symbols(text: str) -> set[str]:
    tree = _parse_expression(text)
    return set() if tree is None else {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}


def _evaluate(tree: ast.expr, values: Mapping[str, int]) -> int | None:
    if isinstance(tree, ast.Constant):
        return int(tree.value)
    if isinstance(tree, ast.Name):
        return values.get(tree.id)
    if isinstance(tree, ast.BinOp):
        left, right = _evaluate(tree.left, values), _evaluate(tree.right, values)
        if left is None or right is None or (isinstance(tree.op, ast.FloorDiv) and right == 0):
            return None
        return _OPERATORS[type(tree.op)](left, right)
    return None


def _symbolic_dim_value(name: str, dim_values: Mapping[str, int]) -> int | None:
    """The value of a symbolic dimension: given or defaulted, or its expression evaluated."""
    if name in dim_values:
        return dim_values[name]
    tree = _parse_expression(name)
    return None if tree is None else _evaluate(tree, dim_values)


def _concrete_shape(
    value: ir.Value,
    given: Sequence[int] | None,
    dim_values: Mapping[str, int],
    free_dim: int = DEFAULT_DIM,
    fixed_axes: Mapping[int, int] | None = None,
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
                if isinstance(dim, int) and dim > 0 and dim != want:
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
        size = None
        if isinstance(dim, int):
            size = dim if dim > 0 else None  # an exporter's 0/-1 placeholder for "dynamic"
        elif isinstance(dim, ir.SymbolicDim) and dim.value:
            size = _symbolic_dim_value(dim.value, dim_values)  # 0 only where --shape says so
        if size is None or size < 0:
            size = (fixed_axes or {}).get(axis) or (DEFAULT_BATCH if axis == 0 else free_dim)
        shape.append(size)
    return tuple(shape)


def _conv_channel_axes(inputs: Iterable[ir.Value]) -> dict[tuple[ir.Value, int], int]:
    """Channel dims the model fixes without declaring them: an input read by a Conv (directly
    or through a Cast) has as many channels at axis 1 as the weight's input channels times the
    group count (an image model's ``num_channels`` is 3)."""
    fixed: dict[tuple[ir.Value, int], int] = {}
    for value in inputs:
        if value.shape is None or len(value.shape) < 3 or isinstance(value.shape[1], int):
            continue
        readers = [use.node for use in value.uses() if use.idx == 0]
        readers += [
            use.node
            for node in readers
            if node.op_type in ("Cast", "Identity")
            for use in node.outputs[0].uses()
            if use.idx == 0
        ]
        for node in readers:
            weight = node.inputs[1] if node.op_type == "Conv" and len(node.inputs) > 1 else None
            if weight is None or weight.shape is None or len(weight.shape) < 2:
                continue
            group = node.attributes.get("group")
            channels = weight.shape[1]
            if isinstance(channels, int) and channels > 0:
                fixed[(value, 1)] = channels * (group.as_int() if group is not None else 1)
                break
    return fixed


def _mask_spans_past(inputs: Sequence[ir.Value], chosen: dict[str, int], given: Iterable[str]) -> None:
    """A KV-cache decoder's attention mask covers the past and the current tokens. Exporters
    name its length either ``past + sequence`` (an expression, evaluated anyway) or a symbol
    of its own; such a symbol is set to past + current, in place (unless ``--shape`` sets it)."""
    past = [
        value
        for value in inputs
        if PAST_MARKER in value.name.lower() and value.shape is not None and len(value.shape) == 4
    ]
    ids = [value for value in inputs if value.name.endswith("input_ids") and value.shape is not None]
    if not past or not ids:
        return
    past_dim, current_dim = past[0].shape[2], ids[0].shape[-1]
    if not (isinstance(past_dim, ir.SymbolicDim) and isinstance(current_dim, ir.SymbolicDim)):
        return
    past_length = chosen.get(past_dim.value or "")
    current_length = chosen.get(current_dim.value or "")
    if past_length is None or current_length is None:
        return
    given = set(given)
    for value in inputs:
        if MASK_MARKER not in value.name.lower() or value.shape is None or len(value.shape) != 2:
            continue
        length = value.shape[1]
        if not isinstance(length, ir.SymbolicDim) or not length.value or length.value in given:
            continue
        shared = any(
            other is not value and any(dim == length for dim in other.shape or ()) for other in inputs
        )
        if not shared and _parse_expression(length.value) is None:
            chosen[length.value] = past_length + current_length


def _numpy_dtype(value: ir.Value) -> np.dtype:
    if value.dtype is None:
        raise InputsError(f"input {value.name!r} has no declared element type")
    if value.dtype == ir.DataType.BFLOAT16:
        return np.dtype(ml_dtypes.bfloat16)
    try:
        return np.dtype(value.dtype.numpy())
    except (TypeError, ValueError):
        raise InputsError(f"input {value.name!r}: element type {value.dtype.name} is not supported") from None


_ORT_NODE_NAME = re.compile(r"Name:'([^']*)'")
_GUESSED_KINDS = ("int", "bool")


def rejected_inputs_error(
    model: ir.Model,
    message: str,
    specs: Sequence[InputSpec] | None,
    *,
    what: str = "the FP32 model",
    sizes_hint: str = "",
) -> InputsError:
    """The one-line error for a model that does not run on its inputs (ONNX Runtime's
    ``message``). ``specs``: how the inputs were generated, or None for the user's own: then
    the error names the generated inputs whose values were guessed (0/1 integers, random bools)
    that the failing node depends on, and asks for real ones through --inputs (exit 2). ``sizes_hint``:
    the sizes tried for the dynamic dims and the ``--shape`` to give (``accepted_inputs``). With no
    guessed input to blame and no size to suggest, the model fails on inputs that follow its
    signature: ``ModelRunError`` (exit 12)."""
    if specs is None:
        return InputsError(f"{what} rejects the inputs: {message}")
    guessed = {spec.name: spec for spec in specs if spec.kind in _GUESSED_KINDS}
    match = _ORT_NODE_NAME.search(message)
    suspects = _inputs_reaching(model, match.group(1)) & guessed.keys() if match else set()
    named = [guessed[name] for name in sorted(suspects or guessed)]
    hint = "give representative inputs with --inputs FILE.npz"
    if sizes_hint:
        hint = f"{sizes_hint}, or {hint}"
    if not named and not sizes_hint:  # every input followed the signature: the model does not run
        return ModelRunError(
            f"onnxruntime cannot run {what} on inputs generated from its signature ({message}); "
            f"if it needs particular values, {hint}"
        )
    if named:
        listed = ", ".join(f"{spec.name} ({spec.kind} {list(spec.shape)})" for spec in named)
        hint = f"its generated {listed} {'is' if len(named) == 1 else 'are'} a guess; {hint}"
    return InputsError(f"{what} rejects the generated inputs ({message}); {hint}")


def _inputs_reaching(model: ir.Model, node_name: str) -> set[str]:
    """Names of the graph inputs the node called ``node_name`` depends on (any graph; outer-scope
    reads have their producers in the outer graph)."""
    node = next((node for graph, _ in all_graphs(model) for node in graph if node.name == node_name), None)
    if node is None:
        return set()
    graph_inputs = {value.name for value in model.graph.inputs}
    found: set[str] = set()
    pending: list[ir.Node] = [node]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for value in current.inputs:
            if value is None:
                continue
            producer = value.producer()
            if producer is not None:
                pending.append(producer)
            elif value.name in graph_inputs:
                found.add(value.name)
    return found


def generated_label(seed: int) -> str:
    """How generated inputs are described in saved records: ``generated (mpcompile.inputs, seed N)``."""
    return f"generated ({GENERATOR_LABEL}, seed {seed})"
