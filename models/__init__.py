"""Deterministic FP32 ONNX models for tests and benchmarks of mpcompile.

``ZOO`` maps a name to a zero-argument builder returning an ``onnx.ModelProto``; ``make_inputs``
makes valid feeds for any of them; ``save`` writes one to disk. ``python -m models --list``
lists the zoo and ``python -m models NAME -o PATH`` writes a model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import numpy as np
import onnx

from models import bert_encoder, control_flow, gpt_block, mlp, qdq, regressions, resnet

ZOO: dict[str, Callable[[], onnx.ModelProto]] = {
    "mlp": mlp.build,
    "resnet": resnet.build,
    "bert_encoder": bert_encoder.build,
    "gpt_block": gpt_block.build,
    "control_flow": control_flow.build,
    "qdq": qdq.build,
    **{f"regression_{name}": builder for name, builder in regressions.REGRESSIONS.items()},
}

# Sizes given to symbolic dimensions that ``dims`` does not name; any other symbolic dim gets 2.
DEFAULT_DIMS: dict[str, int] = {"batch": 2, "sequence": 16}

_NUMPY_TYPES = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.BOOL: np.bool_,
}


def build(name: str) -> onnx.ModelProto:
    """Build the zoo model ``name``; raises ``KeyError`` listing the known names otherwise."""
    try:
        return ZOO[name]()
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(ZOO))}") from None


def make_inputs(
    model: onnx.ModelProto, seed: int = 0, dims: Mapping[str, int] | None = None
) -> dict[str, np.ndarray]:
    """Valid feeds for every graph input that is not an initializer.

    Floats are standard normal; int64 inputs used as Gather indices into an initializer hold
    ids in ``[0, rows)``; inputs named ``*mask*`` hold 0/1 with the first row all ones and each
    other row padded at the end (at least one 1 per row); booleans are True; other integers 0.
    Symbolic dimensions take their size from ``dims``, then ``DEFAULT_DIMS``, else 2.
    """
    sizes = {**DEFAULT_DIMS, **(dims or {})}
    rng = np.random.default_rng(seed)
    graph = model.graph
    initializer_names = {init.name for init in graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for value in graph.input:
        if value.name in initializer_names:
            continue
        tensor_type = value.type.tensor_type
        shape = tuple(_dim_size(d, sizes) for d in tensor_type.shape.dim)
        dtype = _NUMPY_TYPES.get(tensor_type.elem_type)
        if dtype is None:
            raise ValueError(f"input {value.name!r}: no feed rule for element type {tensor_type.elem_type}")
        feeds[value.name] = _feed(value.name, shape, dtype, _index_rows(graph, value.name), rng)
    return feeds


def save(name: str, path: str | os.PathLike) -> None:
    """Build the zoo model ``name`` and write it to ``path`` (weights embedded)."""
    onnx.save_model(build(name), os.fspath(path))


def _dim_size(dim: onnx.TensorShapeProto.Dimension, sizes: Mapping[str, int]) -> int:
    if dim.HasField("dim_value"):
        return dim.dim_value
    return sizes.get(dim.dim_param, 2)


def _index_rows(graph: onnx.GraphProto, name: str) -> int | None:
    """Rows of the initializer that ``name`` indexes via Gather (the vocabulary size), if any."""
    shapes = {init.name: list(init.dims) for init in graph.initializer}
    for node in graph.node:
        if (
            node.op_type == "Gather"
            and len(node.input) > 1
            and node.input[1] == name
            and node.input[0] in shapes
        ):
            return shapes[node.input[0]][0]
    return None


def _feed(
    name: str, shape: tuple[int, ...], dtype: type, rows: int | None, rng: np.random.Generator
) -> np.ndarray:
    if dtype == np.bool_:
        return np.ones(shape, dtype=np.bool_)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if "mask" in name.lower() and len(shape) == 2:
        batch, seq = shape
        lengths = rng.integers(1, seq + 1, size=batch)
        if batch:
            lengths[0] = seq
        return (np.arange(seq)[None, :] < lengths[:, None]).astype(dtype)
    if rows is not None:
        return rng.integers(0, rows, size=shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


__all__ = ["DEFAULT_DIMS", "ZOO", "build", "make_inputs", "save"]
