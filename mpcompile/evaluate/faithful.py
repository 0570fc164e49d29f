"""FP16-faithful evaluation on the CPU.

ONNX Runtime's CPU EP runs FP16 nodes that lack an FP16 kernel in FP32 behind Casts it
inserts, and removes Cast pairs, so a value that overflows FP16 on a GPU (``Mul(4, 65504)``)
comes back as 262016 instead of inf. This module evaluates a mixed-precision model so that
every FP16/BF16 node output is rounded to its declared type exactly as a GPU stores it.

How: ``build_faithful_model`` rewrites a copy of the model so that all arithmetic is FP32
(low-precision initializers, inputs, constants and Cast targets widened, which is exact) and
every low-precision node output is followed by an explicit rounding ``Cast(to=FLOAT16)`` →
``Cast(to=FLOAT)``. The rounded value takes the original name, so intermediates keep their
names. The evaluation session runs with every graph optimization disabled; then the only
FP16/BF16 tensors are the rounding Casts' outputs, which have CPU kernels, so ORT inserts no
Casts of its own and has nothing to fold (``check_faithful_model`` asserts this, and the
tests prove the rounding survives and matches numpy's per-node rounding).

What is modelled: each node computes internally in FP32 and stores its output rounded to
FP16/BF16 (round to nearest even, overflow to inf, subnormals kept), as GPU kernels that
accumulate in FP32 (cuBLAS/cuDNN defaults in ORT) do. Arithmetic *inside* one node in
FP16 (FP16 accumulation) is not modelled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import mmap
import os
import pathlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common

from mpcompile.evaluate.ort_session import (
    ModelLike,
    make_session,
    proto_apart,
    run_linear,
    serialize_apart,
    serialize_for_session,
    tensors_swapped,
    to_ir_model,
)
from mpcompile.io import model_io
from mpcompile.io.proto_tensors import graph_protos
from mpcompile.irtools.graphs import model_graphs
from mpcompile.irtools.names import NameAuthority

LOW_PRECISION = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
ROUNDING_TAG = "mpcompile.evaluate.rounding"  # metadata key marking the Casts this module inserts
# ORT training ops (registered in the ONNX domain) whose output shape has no inference: ORT
# 1.19.2 crashes (segfault) creating a session for a MaxPoolGrad whose output has no declared shape.
SHAPE_KEPT_OPS = frozenset({("", "MaxPoolGrad"), ("", "AveragePoolGrad")})
_DTYPE_ATTRIBUTES = ("to", "dtype", "output_dtype")
_NUMPY_DTYPES = {
    ir.DataType.FLOAT16: np.dtype(np.float16),
    ir.DataType.BFLOAT16: np.dtype(ml_dtypes.bfloat16),
}

Intermediates = bool | Sequence[str]


def run(
    model: ModelLike, feeds: Mapping[str, np.ndarray], *, intermediates: Intermediates = False
) -> dict[str, np.ndarray]:
    """Evaluate a mixed-precision model on CPU with FP16/BF16 node outputs rounded as on a GPU.

    ``model`` is an ``onnx.ModelProto``, ``ir.Model`` (not modified) or path. ``intermediates``:
    ``True`` also returns every main-graph node output, or a list of value names to return.
    Results are keyed by the original value names and have their declared dtypes
    (``np.float16``, ``ml_dtypes.bfloat16``, ...).
    """
    return FaithfulSession(model, intermediates=intermediates).run(feeds)


def run_reference(
    model: ModelLike, feeds: Mapping[str, np.ndarray], *, intermediates: Intermediates = False
) -> dict[str, np.ndarray]:
    """Evaluate a model as it is (normally the FP32 original) on CPU, intermediates exposed.

    Graph optimizations are disabled so exposed intermediates are the values the graph
    defines, not those of fused kernels.
    """
    return ReferenceSession(model, intermediates=intermediates).run(feeds)


class FaithfulSession:
    """A reusable FP16-faithful CPU evaluation of one model (built once, run on many feeds)."""

    def __init__(self, model: ModelLike, *, intermediates: Intermediates = False, prepack: bool = True):
        evaluation, self.declared = build_faithful_model(model, intermediates=intermediates)
        self._session = make_session(
            serialize_for_session(evaluation), ["CPUExecutionProvider"], optimize=False, prepack=prepack
        )

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _run_session(self._session, feeds, self.declared, widen_inputs=True)


class ReferenceSession:
    """A reusable CPU evaluation of a model as it is, graph optimizations off.

    ``serialized``: ``model`` (an ``ir.Model``) as ``serialize_reference`` gave it; the session is
    then built from that proto (which it edits) instead of from a private copy with shapes
    inferred again (``prepared_copy``): the same values, without the copy, the inference and a
    second serialization (the range run on 26k nodes: docs/performance.md, "Range run cost").
    ``spin``: as ``make_session``'s (False for a session run once).

    ``reference_recipe`` + ``SessionRecipe.build`` make the same session in two steps: the first
    reads the IR, the second only bytes (so it may run on a worker thread)."""

    def __init__(
        self,
        model: ModelLike,
        *,
        intermediates: Intermediates = False,
        prepack: bool = True,
        serialized: SessionProto | None = None,
        spin: bool = True,
    ):
        recipe = reference_recipe(
            model, intermediates=intermediates, prepack=prepack, serialized=serialized, spin=spin
        )
        self.declared, self._session = recipe.declared, recipe.session()

    @classmethod
    def from_recipe(cls, recipe: SessionRecipe) -> ReferenceSession:
        """The session of ``recipe`` (``SessionRecipe.build``)."""
        session = cls.__new__(cls)
        session.declared, session._session = recipe.declared, recipe.session()
        return session

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _run_session(self._session, feeds, self.declared, widen_inputs=False)


@dataclasses.dataclass
class SessionRecipe:
    """What a ``ReferenceSession`` is built from: the serialized model, its large weights apart,
    the dtype each output is declared with, and the session's options. Holds no IR."""

    model: bytes
    weights: dict[str, np.ndarray]
    declared: dict[str, ir.DataType | None]
    prepack: bool = True
    spin: bool = True
    threads: int | None = None  # ORT's intra-op threads (None: its default, one per core)

    def session(self) -> Any:
        """ONNX Runtime's session for the recipe (CPU, graph optimizations off)."""
        return make_session(
            self.model,
            ["CPUExecutionProvider"],
            optimize=False,
            prepack=self.prepack,
            initializers=self.weights,
            spin=self.spin,
            options=None if self.threads is None else {"intra_op_num_threads": self.threads},
        )

    def build(self) -> ReferenceSession:
        """The ``ReferenceSession``. It reads no IR, and ONNX Runtime releases the GIL while it
        builds the session, so a worker thread may build it while the conversion goes on
        (the range run: ``passes/range_run.py``)."""
        return ReferenceSession.from_recipe(self)


def reference_recipe(
    model: ModelLike,
    *,
    intermediates: Intermediates = False,
    prepack: bool = True,
    serialized: SessionProto | None = None,
    spin: bool = True,
    threads: int | None = None,
) -> SessionRecipe:
    """The ``SessionRecipe`` of ``ReferenceSession(model, ...)`` (same arguments): the part that
    reads ``model`` (exposing the intermediates, serializing). ``threads``: the recipe's."""
    if serialized is not None and isinstance(model, ir.Model):
        declared = {value.name: value.dtype for value in model.graph.outputs}
        declared.update(_expose_in_proto(model, serialized.proto, intermediates))
        session_model, weights = serialized.proto.SerializeToString(), serialized.weights
    else:
        reference = prepared_copy(model)
        declared = {value.name: value.dtype for value in reference.graph.outputs}
        declared.update(_expose_intermediates(reference, intermediates))
        session_model, weights = serialize_apart(reference)  # large weights stay arrays
    return SessionRecipe(session_model, weights, declared, prepack, spin, threads)


@dataclasses.dataclass
class SessionProto:
    """A model serialized once for ONNX Runtime: its proto, whose large main-graph weights hold no
    bytes, and those weights as arrays by name (``make_session(initializers=...)``)."""

    proto: onnx.ModelProto
    weights: dict[str, np.ndarray]


def serialize_reference(model: ir.Model) -> SessionProto | None:
    """``model`` (not modified) serialized for ``ReferenceSession(serialized=...)``, or None when
    only ``prepared_copy`` evaluates it as it is: local functions (inlined there), or a named
    main-graph value without a type (shape inference there may type it, and only typed values
    are exposed).

    External weights are read into memory as ``prepared_copy`` does."""
    if only_a_private_copy_evaluates(model):
        return None
    with _external_weights_in_memory(model):
        proto, weights = proto_apart(model)
    proto.ir_version = model_io.output_ir_version(model)  # what the installed ORT loads
    return SessionProto(proto, weights)


def only_a_private_copy_evaluates(model: ir.Model) -> bool:
    """Local functions (``prepared_copy`` inlines them), or a named main-graph value without a
    type (shape inference there may type it, and only typed values are exposed)."""
    return bool(model.functions) or _has_untyped_output([model.graph])


def _has_untyped_output(graphs: Iterable[ir.Graph]) -> bool:
    """Whether a named node output of ``graphs`` has no type."""
    return any(
        value.name and value.type is None for graph in graphs for node in graph for value in node.outputs
    )


@contextlib.contextmanager
def _external_weights_in_memory(model: ir.Model) -> Iterator[None]:
    """External initializers in memory for the block (the values ``prepared_copy`` loads), the
    model's own tensors put back after.

    Each data file is mapped once and every tensor is a view of that one mapping (the bytes stay
    the file's, shared with the page cache, for as long as the session holds them). Not the
    tensors' own ``numpy()``: each maps its whole file again, and ORT reading 1,537 such maps
    held 3.3 GB resident (the 768-layer encoder); nor copies, which cost time."""
    in_memory: dict[ir.Value, ir.TensorProtocol] = {}
    maps: dict[tuple[str, str], mmap.mmap | None] = {}
    for graph in model_graphs(model):
        for value in graph.initializers.values():
            tensor = value.const_value
            if not isinstance(tensor, ir.ExternalTensor):
                continue
            view = _mapped_view(tensor, maps)
            in_memory[value] = (
                ir.Tensor(view, dtype=tensor.dtype, name=tensor.name)
                if view is not None
                else ir.external_data.convert_tensors_from_external([tensor])[0]
            )
    with tensors_swapped(in_memory):
        yield


def _mapped_view(
    tensor: ir.ExternalTensor, maps: dict[tuple[str, str], mmap.mmap | None]
) -> np.ndarray | None:
    """``tensor``'s array as a view of its file's one mapping in ``maps`` (``mapped_array``), or
    None where onnx-ir's own loading is needed (sub-byte types, empty tensors, a file outside
    the model's folder)."""
    if tensor.dtype.bitwidth < 8 or tensor.dtype.bitwidth % 8 or tensor.size == 0:
        return None
    return mapped_array(
        pathlib.Path(tensor.path),
        tensor.base_dir,
        tensor.offset or 0,
        tensor.dtype,
        tensor.shape.numpy(),
        maps,
    )


def mapped_array(
    path: pathlib.Path,
    base_dir: str | os.PathLike,
    offset: int,
    dtype: ir.DataType,
    shape: Sequence[int],
    maps: dict[tuple[str, str], mmap.mmap | None],
) -> np.ndarray | None:
    """The little-endian array of ``dtype`` and ``shape`` at ``offset`` of ``path``, as a view of
    the file's one mapping in ``maps`` (by file and folder); None for a file outside
    ``base_dir``. ``dtype`` is a whole number of bytes wide."""
    key = (str(path), str(base_dir))
    if key not in maps:
        maps[key] = None
        resolved = path.resolve()
        if base_dir and resolved.is_relative_to(pathlib.Path(base_dir).resolve()):
            with open(resolved, "rb") as handle:
                maps[key] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    mapped = maps[key]
    if mapped is None:
        return None
    array = np.frombuffer(
        mapped, dtype=np.dtype(dtype.numpy()).newbyteorder("<"), count=math.prod(shape), offset=offset
    )
    return array.reshape(tuple(shape))


def _expose_in_proto(
    model: ir.Model, proto: onnx.ModelProto, intermediates: Intermediates
) -> dict[str, ir.DataType | None]:
    """What ``prepared_copy`` and ``_expose_intermediates`` do, on ``serialize_reference``'s proto
    of ``model``: the shapes of values between nodes dropped (``forget_intermediate_shapes``; ORT
    infers them), the requested main-graph values appended to the outputs with their types."""
    forget_proto_shapes(proto.graph)
    wanted = wanted_intermediates(model.graph, intermediates)
    graph = proto.graph
    listed = {info.name for info in graph.output}
    exposed: dict[str, ir.DataType | None] = {}
    added: set[str] = set()
    for value in wanted:
        exposed[value.name] = value.dtype
        if value.name not in listed:
            info = graph.output.add(name=value.name)  # its type, no shape (as exposed intermediates)
            ir.serde.serialize_type_into(info.type, value.type)
            listed.add(value.name)
            added.add(value.name)
    if added:  # a graph output is no value_info entry
        kept = [info for info in graph.value_info if info.name not in added]
        del graph.value_info[:]
        graph.value_info.extend(kept)
    return exposed


def forget_proto_shapes(graph: onnx.GraphProto) -> None:
    """``forget_intermediate_shapes`` on a graph proto and its subgraphs."""
    for each in graph_protos(graph):
        outputs = {info.name for info in each.output}
        forget = {
            name
            for node in each.node
            if (node.domain if node.domain != "ai.onnx" else "", node.op_type) not in SHAPE_KEPT_OPS
            for name in node.output
            if name not in outputs
        }
        for info in each.value_info:
            if info.name in forget and info.type.HasField("tensor_type"):
                info.type.tensor_type.ClearField("shape")


def build_faithful_model(
    model: ModelLike, *, intermediates: Intermediates = False
) -> tuple[ir.Model, dict[str, ir.DataType | None]]:
    """The FP32 evaluation model with explicit rounding, and the declared dtype of each output.

    The returned dict maps every output name of the evaluation model (graph outputs and exposed
    intermediates) to the dtype the original model declares for it.
    """
    evaluation = prepared_copy(model)
    declared = {value.name: value.dtype for value in evaluation.graph.outputs}
    low_values = _mark_low_precision_outputs(evaluation)
    exposed = _expose_intermediates(evaluation, intermediates)
    declared.update(exposed)
    names = NameAuthority(evaluation)
    for graph in model_graphs(evaluation):
        _widen_graph(graph, low_values, names)
    check_faithful_model(evaluation)
    return evaluation, declared


def check_faithful_model(model: ir.Model) -> None:
    """Assert that no node but the rounding Casts reads or writes a low-precision tensor."""
    for graph in model_graphs(model):
        for node in graph:
            if node.metadata_props.get(ROUNDING_TAG) == "1":
                continue
            for value in [*node.inputs, *node.outputs]:
                if value is not None and value.dtype in LOW_PRECISION:
                    raise AssertionError(
                        f"faithful model: node {node.name!r} ({node.op_type}) still touches "
                        f"{value.dtype.name} value {value.name!r}"
                    )


def prepared_copy(model: ModelLike) -> ir.Model:
    """A private copy with local functions inlined, exporter value shapes dropped and types
    inferred. Inference is skipped when every named node output is typed already (as a loaded or
    converted model's are, with no local function to inline): onnx would only give the dtypes
    back, and ONNX Runtime infers the shapes itself (on a 10,000-node candidate the inference
    was 1.6 of the 3.9 s of building its faithful model)."""
    copy = to_ir_model(model, copy=True)
    ir.external_data.load_to_model(copy)
    inline = bool(copy.functions)
    if inline:
        onnx_ir.passes.common.InlinePass()(copy)
    forget_intermediate_shapes(copy)
    if not inline and not _has_untyped_output(model_graphs(copy)):
        copy.ir_version = model_io.output_ir_version(copy)
        return copy
    # Inference failing (an inconsistent model) leaves types as declared; ORT then reports the problem.
    shape_logger = logging.getLogger(onnx_ir.passes.common.ShapeInferencePass.__module__)
    level = shape_logger.level
    shape_logger.setLevel(logging.ERROR)
    try:
        onnx_ir.passes.common.ShapeInferencePass()(copy)
    finally:
        shape_logger.setLevel(level)
    copy.ir_version = model_io.output_ir_version(copy)  # what the installed ORT loads
    return copy


def forget_intermediate_shapes(model: ir.Model) -> None:
    """Drop the declared shapes of values between nodes (dtypes stay), in place.

    Exporters write value shapes that hold only for the input size they traced, or reuse one
    dim_param for dims that differ; ONNX Runtime plans buffer reuse from declared shapes and
    then fails on another input size ("Shape mismatch attempting to re-use buffer"). Shape
    inference then records what holds for every input size. Kept: the outputs of ops whose
    shape nothing can infer again (``SHAPE_KEPT_OPS``).
    """
    for graph in model_graphs(model):
        outputs = {id(value) for value in graph.outputs}
        for node in graph:
            if (node.domain, node.op_type) in SHAPE_KEPT_OPS:
                continue
            for value in node.outputs:
                if id(value) not in outputs:
                    value.shape = None


def _mark_low_precision_outputs(model: ir.Model) -> dict[ir.Value, ir.DataType]:
    """Every node output (all graphs) that the model stores in FP16/BF16, with that dtype."""
    low: dict[ir.Value, ir.DataType] = {}
    for graph in model_graphs(model):
        for node in graph:  # topological order, so guesses for untyped inputs are known
            for value in node.outputs:
                if not value.name:  # an optional output left out: nothing is stored
                    continue
                dtype = value.dtype if value.dtype is not None else _guess_unknown_dtype(node, low)
                if dtype in LOW_PRECISION and isinstance(value.type, (ir.TensorType, type(None))):
                    low[value] = dtype
    return low


def _guess_unknown_dtype(node: ir.Node, guessed: Mapping[ir.Value, ir.DataType]) -> ir.DataType | None:
    """Dtype of an untyped output (contrib ops shape inference does not know): that of its
    floating-point inputs when they all agree on one low-precision type."""
    float_inputs = set()
    for value in node.inputs:
        dtype = None if value is None else value.dtype if value.dtype is not None else guessed.get(value)
        if dtype is not None and dtype.is_floating_point():
            float_inputs.add(dtype)
    if len(float_inputs) == 1:
        (dtype,) = float_inputs
        if dtype in LOW_PRECISION:
            return dtype
    return None


def _expose_intermediates(model: ir.Model, intermediates: Intermediates) -> dict[str, ir.DataType | None]:
    """Add the requested main-graph values to the graph outputs; their declared dtypes."""
    graph = model.graph
    wanted = wanted_intermediates(graph, intermediates)
    already = {id(value) for value in graph.outputs}
    exposed: dict[str, ir.DataType | None] = {}
    for value in wanted:
        exposed[value.name] = value.dtype
        if id(value) not in already:
            graph.outputs.append(value)
            already.add(id(value))
    return exposed


def wanted_intermediates(graph: ir.Graph, intermediates: Intermediates) -> list[ir.Value]:
    """The main-graph node outputs ``intermediates`` asks for (``True``: every tensor)."""
    if intermediates is False:
        return []
    produced = {value.name: value for node in graph for value in node.outputs if value.name}
    if intermediates is True:
        return [value for value in produced.values() if isinstance(value.type, ir.TensorType)]
    missing = [name for name in intermediates if name not in produced and name not in _input_names(graph)]
    if missing:
        raise KeyError(f"no value named {', '.join(map(repr, missing))} in the main graph")
    return [produced[name] for name in intermediates if name in produced]


def _input_names(graph: ir.Graph) -> set[str]:
    return {value.name for value in graph.inputs if value.name}


def _widen_graph(graph: ir.Graph, low_values: Mapping[ir.Value, ir.DataType], names: NameAuthority) -> None:
    """Make all arithmetic of ``graph`` FP32 and round each low-precision node output."""
    for value in graph.inputs:
        _widen_value_type(value)
    for name, value in list(graph.initializers.items()):
        tensor = value.const_value
        if tensor is not None and tensor.dtype in LOW_PRECISION:
            value.const_value = ir.tensor(tensor.numpy().astype(np.float32), name=name)
        _widen_value_type(value)
    positions: dict[ir.Value, list[int]] = {}  # graph output -> its indices, found once
    for index, output in enumerate(graph.outputs):
        positions.setdefault(output, []).append(index)
    for node in list(graph):
        _widen_attributes(node)
        for value in node.outputs:
            dtype = low_values.get(value)
            _widen_value_type(value)
            if dtype is not None:
                _insert_rounding(graph, node, value, dtype, names, positions.pop(value, ()))


def _widen_value_type(value: ir.Value) -> None:
    if value.type is None or value.dtype not in LOW_PRECISION:
        return
    value.type = _widened_type(value.type)


def _widened_type(type_: ir.TypeProtocol) -> ir.TypeProtocol:
    if isinstance(type_, ir.TensorType):
        return ir.TensorType(ir.DataType.FLOAT)
    if isinstance(type_, ir.SequenceType):
        return ir.SequenceType(_widened_type(type_.elem_type))
    if isinstance(type_, ir.OptionalType):
        return ir.OptionalType(_widened_type(type_.elem_type))
    return type_


def _widen_attributes(node: ir.Node) -> None:
    """Low-precision target types and constant tensors in attributes become FP32 (exact)."""
    for name, attr in list(node.attributes.items()):
        if attr.type == ir.AttributeType.INT and name in _DTYPE_ATTRIBUTES:
            if attr.as_int() in (int(d) for d in LOW_PRECISION):
                node.attributes[name] = ir.AttrInt64(name, int(ir.DataType.FLOAT))
        elif attr.type == ir.AttributeType.TENSOR:
            tensor = attr.as_tensor()
            if tensor.dtype in LOW_PRECISION:
                node.attributes[name] = ir.AttrTensor(name, ir.tensor(tensor.numpy().astype(np.float32)))


def _insert_rounding(
    graph: ir.Graph,
    node: ir.Node,
    value: ir.Value,
    dtype: ir.DataType,
    names: NameAuthority,
    positions: Sequence[int] = (),
) -> None:
    """value → Cast(to=dtype) → Cast(to=FLOAT); the rounded value takes over name and uses
    (``positions``: where ``value`` is a graph output; searching the outputs for each value was
    quadratic with every intermediate exposed)."""
    original_name = value.name
    narrow = ir.node("Cast", [value], {"to": dtype}, metadata_props={ROUNDING_TAG: "1"})
    widen = ir.node(
        "Cast", [narrow.outputs[0]], {"to": ir.DataType.FLOAT}, metadata_props={ROUNDING_TAG: "1"}
    )
    narrow.outputs[0].type = ir.TensorType(dtype)
    widen.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    narrow.outputs[0].shape = widen.outputs[0].shape = value.shape
    rounded = widen.outputs[0]
    for use in list(value.uses()):
        if use.node is not narrow:
            use.node.replace_input_with(use.idx, rounded)
    for index in positions:
        graph.outputs[index] = rounded
    graph.insert_after(node, [narrow, widen])
    if original_name:
        value.name = names.unique(f"{original_name}__unrounded")
        narrow.outputs[0].name = names.unique(f"{original_name}__{dtype.name.lower()}")
        rounded.name = original_name


def _run_session(
    session: Any,
    feeds: Mapping[str, np.ndarray],
    declared: Mapping[str, ir.DataType | None],
    *,
    widen_inputs: bool,
) -> dict[str, np.ndarray]:
    session_feeds = {}
    for info in session.get_inputs():
        if info.name not in feeds:
            raise KeyError(f"missing feed for input {info.name!r}")
        array = np.asarray(feeds[info.name])
        if widen_inputs and array.dtype in (np.float16, ml_dtypes.bfloat16):
            array = array.astype(np.float32)
        elif array.dtype == ml_dtypes.bfloat16:
            raise TypeError(f"input {info.name!r}: onnxruntime's Python API takes no bfloat16 arrays")
        session_feeds[info.name] = array
    names = [output.name for output in session.get_outputs()]
    results = run_linear(session, names, session_feeds)
    return {
        name: as_declared(result, declared.get(name)) for name, result in zip(names, results, strict=True)
    }


def as_declared(array: np.ndarray, dtype: ir.DataType | None) -> np.ndarray:
    """An FP32 result as the model declares it (FP16/BF16 values were rounded already: exact)."""
    numpy_dtype = _NUMPY_DTYPES.get(dtype) if dtype is not None else None
    if numpy_dtype is not None and isinstance(array, np.ndarray) and array.dtype == np.float32:
        return array.astype(numpy_dtype)
    return array
