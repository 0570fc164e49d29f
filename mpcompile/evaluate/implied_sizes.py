"""Sizes and values a model implies for its dynamic inputs, read from the graph (no run).

- Image sizes: an input read by a Conv (its patch embedding, or a stem) whose tokens meet a
  learned position embedding of ``L`` rows needs ``L``, ``L - 1`` (a class token) or ``L - 2``
  (a distillation token) = ``p * p`` patches, hence ``p * stride`` pixels a side (a ViT's
  ``[1, 197, 768]`` with patch 16: 224). A Resize to constant ``sizes`` implies its last two;
  then the common sizes 224, 256, 384 and 512.
- Other dynamic dims (sequences, audio samples): the rows of a ``[1, L, D]`` constant added to
  activations, then the constants Reshape nodes take, most frequent first.
- Deployment size: the first implied image size (224 when the model implies none) is the one
  an image model is deployed at. Range measurements use it (``deployment_image_dims``): sums
  over the pixels or tokens of a small generated image stay in FP16 range where the deployed
  size overflows (the linear attention ``q @ (kᵀv)`` of timm's efficientvit).
- Scalar inputs: the constants an ``Equal``/``Greater``/``Less`` compares them with where the
  comparison decides an ``If`` or a ``Where`` (silero-vad's ``If(Equal(sr, 16000))``).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from mpcompile.irtools.graphs import model_graphs
from mpcompile.irtools.values import forward_uses

COMMON_IMAGE_SIZES = (224, 256, 384, 512)
MAX_RESHAPE_SIZES = 6  # distinct Reshape constants tried, most frequent first
MAX_IMPLIED_SIZE = 1 << 16
_CLASS_TOKENS = (1, 0, 2)  # class token (ViT, CLIP), none, class + distillation (DeiT)
_PASS_THROUGH = frozenset({"Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten"})
_COMPARES = frozenset({"Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual"})
_BOOLEAN = frozenset({"Not", "And", "Or", "Xor", "Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape"})


@dataclasses.dataclass(frozen=True)
class ImpliedSize:
    """One size to try: ``height``/``width`` for image inputs, ``height`` alone otherwise."""

    height: int
    width: int
    source: str  # why: "position embedding pos [1, 197, 64], patch stride 16"


@dataclasses.dataclass(frozen=True)
class ImpliedValue:
    """A value to feed a scalar input, and the comparison that asks for it."""

    value: float | int
    source: str


@dataclasses.dataclass(frozen=True)
class FreeDims:
    """The symbolic dims nothing else decides: ``image`` maps a dim of an image input's height
    or width axis to -2 or -1; ``other`` lists the rest (sequences, samples)."""

    image: dict[str, int]
    other: list[str]
    unnamed_image: bool = False  # an image input has an unnamed spatial axis (only free_dim reaches it)


def free_dims(inputs: Sequence[ir.Value], given: Iterable[str] = ()) -> FreeDims:
    """Classify the plain symbolic dims of ``inputs`` (not batch axes, expressions, Conv channel
    axes, nor names in ``given``: --shape dims and the dims of inputs whose whole shape is given)."""
    given = set(given)
    batch = {dim.value for value in inputs for dim in (value.shape or ())[:1] if _symbol(dim)}
    image: dict[str, int] = {}
    other: list[str] = []
    unnamed = False
    for value in inputs:
        if value.name in given or value.shape is None:
            continue
        is_image = image_conv(value) is not None
        rank = len(value.shape)
        for axis, dim in enumerate(value.shape):
            name = _symbol(dim)
            if axis == 0 or (is_image and axis == 1):
                continue
            spatial = is_image and axis >= rank - 2
            if name is None:
                unnamed = unnamed or (spatial and not (isinstance(dim, int) and dim > 0))
                continue
            if name in given or name in batch or _is_expression(name):
                continue
            if spatial:
                image.setdefault(name, axis - rank)
            elif name not in other:
                other.append(name)
    other = [name for name in other if name not in image]
    return FreeDims(image, other, unnamed)


def image_conv(value: ir.Value) -> ir.Node | None:
    """The Conv reading ``value`` (directly or through a Cast/Identity) when it is an image
    input (rank 3 or more), else None."""
    if value.shape is None or len(value.shape) < 3:
        return None
    pending = [value]
    while pending:
        current = pending.pop()
        for use in current.uses():
            node = use.node
            if node.op_type == "Conv" and use.idx == 0:
                return node
            if node.op_type in ("Cast", "Identity") and use.idx == 0:
                pending.extend(node.outputs)
    return None


def image_sizes(model: ir.Model, inputs: Sequence[ir.Value]) -> list[ImpliedSize]:
    """Image sizes to try, most telling first (see the module docstring), without repeats."""
    strides = [_conv_stride(conv) for value in inputs if (conv := image_conv(value)) is not None]
    found: list[ImpliedSize] = []
    for length, source in _position_lengths(model):
        for stride in dict.fromkeys(stride for stride in strides if stride):
            for tokens in _CLASS_TOKENS:
                side = math.isqrt(max(length - tokens, 0))
                if side > 0 and side * side == length - tokens:
                    found.append(
                        ImpliedSize(side * stride, side * stride, f"{source}, patch stride {stride}")
                    )
                    break
    for graph in model_graphs(model):
        for node in graph:
            if node.op_type == "Resize" and len(node.inputs) > 3:
                sizes = constant_array(node.inputs[3])
                if sizes is not None and sizes.size >= 2 and (sizes[-2:] > 0).all():
                    height, width = (int(size) for size in sizes[-2:])
                    found.append(ImpliedSize(height, width, f"Resize {node.name} to {height}x{width}"))
    found += [ImpliedSize(size, size, "a common image size") for size in COMMON_IMAGE_SIZES]
    return _unique(found)


def deployment_image_dims(
    model: ir.Model, inputs: Sequence[ir.Value], given: Iterable[str] = ()
) -> tuple[dict[str, int], str]:
    """``({dim: size}, why)`` for the free height/width dims of the image inputs at the size the
    model is deployed at (the first of ``image_sizes``); ``({}, "")`` when it has none."""
    free = free_dims(inputs, given)
    if not free.image:
        return {}, ""
    first = image_sizes(model, inputs)[0]
    dims = {name: first.height if axis == -2 else first.width for name, axis in free.image.items()}
    return dims, first.source


def sequence_sizes(model: ir.Model) -> list[ImpliedSize]:
    """Sizes for the other dynamic dims: position-embedding rows, then Reshape constants."""
    found = [ImpliedSize(length, length, source) for length, source in _position_lengths(model)]
    counts: collections.Counter[int] = collections.Counter()
    for graph in model_graphs(model):
        for node in graph:
            if node.op_type == "Reshape" and len(node.inputs) > 1:
                shape = constant_array(node.inputs[1])
                if shape is not None and shape.dtype.kind in "iu":
                    counts.update(int(size) for size in shape.ravel() if 1 < size <= MAX_IMPLIED_SIZE)
    found += [
        ImpliedSize(size, size, f"a Reshape constant ({count}x)")
        for size, count in counts.most_common(MAX_RESHAPE_SIZES)
    ]
    return _unique(found)


def scalar_values(model: ir.Model, inputs: Sequence[ir.Value]) -> dict[str, list[ImpliedValue]]:
    """For each scalar input (one element), the constants it is compared with where the result
    decides an If or a Where, in graph order (the main graph's first)."""
    found: dict[str, list[ImpliedValue]] = {}
    for value in inputs:
        if value.shape is None or math.prod(dim if isinstance(dim, int) else 2 for dim in value.shape) != 1:
            continue
        values: dict[float, ImpliedValue] = {}
        for node, other in _comparisons(value):
            constant = constant_array(other)
            if constant is None or constant.size != 1 or not _decides_branch(node):
                continue
            number = constant.ravel()[0].item()
            values.setdefault(number, ImpliedValue(number, f"{node.op_type} {node.name} with {number:g}"))
        if values:
            found[value.name] = list(values.values())
    return found


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value of an initializer or a Constant node's output, else None."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is None or producer.op_type != "Constant":
        return None
    for name, attr in producer.attributes.items():
        if name == "value":
            return attr.as_tensor().numpy()
        if name in ("value_int", "value_ints"):
            return np.asarray(attr.value, dtype=np.int64)
        if name in ("value_float", "value_floats"):
            return np.asarray(attr.value, dtype=np.float32)
    return None


def _position_lengths(model: ir.Model) -> list[tuple[int, str]]:
    """Rows of learned position embeddings: a constant ``[1, L, D]`` added to activations, or
    the constant indices (``L`` of them) a Gather takes from a ``[rows, D]`` constant table."""
    found: list[tuple[int, str]] = []
    for graph in model_graphs(model):
        for node in graph:
            if node.op_type == "Add":
                for operand in node.inputs:
                    shape = _constant_shape(operand)
                    if shape is not None and len(shape) == 3 and shape[0] == 1 and shape[1] > 1:
                        found.append((shape[1], f"position embedding {operand.name} {list(shape)}"))
            elif node.op_type == "Gather" and len(node.inputs) > 1:
                table, indices = _constant_shape(node.inputs[0]), constant_array(node.inputs[1])
                if table is not None and len(table) == 2 and indices is not None and indices.ndim >= 1:
                    length = indices.shape[-1]
                    if 1 < length <= table[0]:
                        found.append((length, f"position embedding {node.inputs[0].name} ({length} rows)"))
    return list(dict.fromkeys(found))


def _constant_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The shape of a constant without reading its data (an initializer's), else None."""
    if value is None:
        return None
    if value.const_value is not None:
        return tuple(int(dim) for dim in value.const_value.shape)
    array = constant_array(value)
    return None if array is None else tuple(array.shape)


def _conv_stride(conv: ir.Node) -> int | None:
    strides = conv.attributes.get("strides")
    if strides is not None and strides.as_ints():
        return int(strides.as_ints()[-1])
    weight = conv.inputs[1] if len(conv.inputs) > 1 else None
    if weight is not None and weight.shape is not None and isinstance(weight.shape[-1], int):
        return int(weight.shape[-1])
    return None


def _comparisons(value: ir.Value) -> list[tuple[ir.Node, ir.Value | None]]:
    """(compare node, its other operand) for each comparison ``value`` reaches unchanged."""
    return [
        (use.node, use.node.inputs[1 - use.idx])
        for use in forward_uses([value], lambda use: use.node.op_type in _PASS_THROUGH and use.idx == 0)
        if use.node.op_type in _COMPARES and len(use.node.inputs) == 2
    ]


def _decides_branch(compare: ir.Node) -> bool:
    """Whether ``compare``'s result reaches an If's condition or a Where's (through boolean ops)."""
    return any(
        use.node.op_type in ("If", "Where") and use.idx == 0
        for use in forward_uses(compare.outputs, lambda use: use.node.op_type in _BOOLEAN)
    )


def _symbol(dim: object) -> str | None:
    return dim.value if isinstance(dim, ir.SymbolicDim) and dim.value else None


def _is_expression(name: str) -> bool:
    return any(operator in name for operator in "+-*/")


def _unique(sizes: Iterable[ImpliedSize]) -> list[ImpliedSize]:
    seen: dict[tuple[int, int], ImpliedSize] = {}
    for size in sizes:
        if 0 < size.height <= MAX_IMPLIED_SIZE and 0 < size.width <= MAX_IMPLIED_SIZE:
            seen.setdefault((size.height, size.width), size)
    return list(seen.values())


def describe_values(values: Mapping[str, float | int]) -> str:
    return ", ".join(f"{name}={value:g}" for name, value in values.items())
