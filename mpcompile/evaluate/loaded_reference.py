"""The range run's session recipe made from the protobuf a model was loaded from, without the IR.

``model_io.load_model_and_proto`` parses a model, checks it, infers its types and then
deserializes the IR from that protobuf (1.5 s of a 26k-node model). The range run's session
(every main-graph node output exposed, large weights handed over as arrays) needs only the
protobuf, and ONNX Runtime releases the GIL while it builds a session, so ``passes/range_run.py``
starts building it on a worker thread before the IR is deserialized (docs/performance.md).

``LoadedRecipe.describes`` says whether the IR, as the passes before the range run left it, is
still what the recipe evaluates: the same main-graph nodes by name and op type, the same outputs
and exposed values with the same dtypes, the same weights. Where it is not (a pass renamed or
rewrote nodes), the IR is serialized instead (``faithful.serialize_reference``).
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import pathlib
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_ir as ir

from mpcompile.evaluate.faithful import (
    SessionRecipe,
    forget_proto_shapes,
    mapped_array,
    only_a_private_copy_evaluates,
    wanted_intermediates,
)
from mpcompile.evaluate.ort_session import APART_LOCATION, held_apart
from mpcompile.io import model_io
from mpcompile.io.proto_tensors import graph_protos
from mpcompile.irtools.graphs import model_graphs


@dataclasses.dataclass
class LoadedRecipe:
    """A range-run ``SessionRecipe`` (``ReferenceSession(model, intermediates=True,
    prepack=False, spin=False)``'s) and what it was made from, to check against the IR."""

    recipe: SessionRecipe | None  # None once taken (take_recipe)
    declared: dict[str, ir.DataType | None]  # the recipe's outputs and exposed values, with dtypes
    nodes: tuple[tuple[str, str], ...]  # the main graph's (name, op_type), in order
    outputs: int  # the main graph's declared outputs
    ir_version: int  # as the recipe's model declares it (model_io.output_ir_version)
    apart: tuple[str, ...]  # the main-graph weights handed over as arrays

    def take_recipe(self) -> SessionRecipe:
        """The recipe, no longer held here (its session holds what it needs)."""
        recipe, self.recipe = self.recipe, None
        assert recipe is not None, "the recipe was taken already"
        return recipe

    def describes(self, model: ir.Model) -> bool:
        """Whether evaluating the recipe is evaluating ``model`` as it is now."""
        graph = model.graph
        if (
            only_a_private_copy_evaluates(model)
            or len(graph.outputs) != self.outputs
            or len(graph) != len(self.nodes)
            or any(
                (node.name, node.op_type) != source for node, source in zip(graph, self.nodes, strict=True)
            )
            or model_io.output_ir_version(model) != self.ir_version
        ):
            return False
        if any(  # weights of subgraphs in data files: read as serialize_reference reads them
            isinstance(value.const_value, ir.ExternalTensor)
            for subgraph in model_graphs(model)[1:]
            for value in subgraph.initializers.values()
        ):
            return False
        initializers = graph.initializers
        if any(
            initializers.get(name) is None or initializers[name].const_value is None for name in self.apart
        ):
            return False
        declared = {value.name: value.dtype for value in graph.outputs}
        declared.update((value.name, value.dtype) for value in wanted_intermediates(graph, True))
        return declared == self.declared


def loaded_recipe(
    proto: onnx.ModelProto, base_dir: str | pathlib.Path, threads: int | None = None
) -> LoadedRecipe | None:
    """The range run's recipe of the model ``proto`` (types inferred, as loaded from a file in
    ``base_dir``; not modified; ``threads``: the recipe's), or None where only the IR can make it: local functions, a named
    main-graph node output without a type, weights of subgraphs in data files, or a main-graph
    weight in a data file that is not a plain array of whole bytes."""
    graph = proto.graph
    if proto.functions or any(_subgraph_external_tensors(graph)):
        return None
    types = {info.name: info.type for info in graph.value_info}
    types.update((info.name, info.type) for info in graph.output)
    exposed: dict[str, int] = {}  # typed tensor node outputs -> elem_type, in graph order
    for node in graph.node:
        for name in node.output:
            if not name:
                continue
            type_proto = types.get(name)
            if type_proto is None or type_proto.WhichOneof("value") is None:
                return None  # untyped: only shape inference on a private copy would type it
            if type_proto.HasField("tensor_type"):
                exposed.setdefault(name, type_proto.tensor_type.elem_type)
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    weights = _weights_apart(copy.graph, pathlib.Path(base_dir))
    if weights is None:
        return None
    copy.ir_version = model_io.ir_version_for(
        copy.ir_version, {opset.domain: opset.version for opset in copy.opset_import}
    )
    forget_proto_shapes(copy.graph)
    declared: dict[str, ir.DataType | None] = {info.name: _dtype(info.type) for info in copy.graph.output}
    listed = set(declared)
    added: set[str] = set()
    for name, elem_type in exposed.items():
        declared[name] = ir.DataType(elem_type)
        if name not in listed:
            copy.graph.output.add(name=name).type.tensor_type.elem_type = elem_type  # no shape
            listed.add(name)
            added.add(name)
    if added:  # a graph output is no value_info entry
        kept = [info for info in copy.graph.value_info if info.name not in added]
        del copy.graph.value_info[:]
        copy.graph.value_info.extend(kept)
    recipe = SessionRecipe(
        copy.SerializeToString(), weights, declared, prepack=False, spin=False, threads=threads
    )
    return LoadedRecipe(
        recipe,
        declared,
        tuple((node.name, node.op_type) for node in graph.node),
        len(graph.output),
        copy.ir_version,
        tuple(weights),
    )


def _weights_apart(graph: onnx.GraphProto, base_dir: pathlib.Path) -> dict[str, np.ndarray] | None:
    """The main-graph weights in data files (the model file's own mapped ones included) as views
    of their files, each replaced by a reference that holds no bytes (``APART_LOCATION``), or
    read in place where ``ort_session.proto_apart`` keeps them in the proto (small ones, types
    numpy lacks); None where one is not a plain array of whole bytes in a file of ``base_dir``."""
    maps: dict[tuple[str, str], mmap.mmap | None] = {}
    weights: dict[str, np.ndarray] = {}
    for tensor in graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        dtype = ir.DataType(tensor.data_type)
        size = math.prod(tensor.dims)
        if dtype.bitwidth < 8 or dtype.bitwidth % 8 or size == 0 or "location" not in entries:
            return None
        array = mapped_array(
            base_dir / entries["location"], base_dir, int(entries.get("offset", 0)), dtype, tensor.dims, maps
        )
        if array is None:
            return None
        del tensor.external_data[:]
        if not held_apart(dtype, array.nbytes):  # inline, as proto_apart keeps them: ORT's
            tensor.data_location = onnx.TensorProto.DEFAULT  # inference reads axes and shapes
            tensor.raw_data = array.tobytes()
            continue
        weights[tensor.name] = array
        for key, value in (("location", APART_LOCATION), ("offset", "0"), ("length", str(array.nbytes))):
            tensor.external_data.add(key=key, value=value)
    return weights


def _subgraph_external_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """The initializers in data files of ``graph``'s subgraphs, at any depth."""
    subgraphs = graph_protos(graph)
    next(subgraphs)  # ``graph`` itself
    for subgraph in subgraphs:
        yield from (
            tensor for tensor in subgraph.initializer if tensor.data_location == onnx.TensorProto.EXTERNAL
        )


def _dtype(type_proto: onnx.TypeProto) -> ir.DataType | None:
    """The dtype onnx-ir gives a value of this type (``ir.Value.dtype``)."""
    return (
        ir.serde.deserialize_type_proto_for_type(type_proto).dtype if type_proto.WhichOneof("value") else None
    )
