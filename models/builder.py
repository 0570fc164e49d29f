"""The one place test and benchmark models are built in code.

``GraphBuilder`` (over onnx-ir) builds every model of the zoo; the protobuf helpers at the end
(``make_model``, ``value_info``, ``weight``, ``constant``, ``tiny_fp32_model``) build the small
hand-written graphs of the tests.

GraphBuilder: a small deterministic graph builder.

Nodes and values get readable, deterministic names (``<scope>/<OpType>_<n>``). Weights come
from a numpy generator seeded by the builder seed and the weight's name, so a weight's values
do not depend on the order in which the model is built, and a weight can be generated lazily
(at save time) for models too large to hold in memory.
"""

from __future__ import annotations

import collections
import contextlib
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

FLOAT = ir.DataType.FLOAT
INT64 = ir.DataType.INT64
BOOL = ir.DataType.BOOL

Dim = int | str | None


def min_ir_version(opset: int) -> int:
    """The lowest IR version that carries ``opset`` of the default domain (ORT loads it)."""
    return onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)])


def weight_rng(seed: int, name: str) -> np.random.Generator:
    """A generator that depends only on the model seed and the weight's name."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def normal_weights(seed: int, name: str, shape: Sequence[int], scale: float) -> np.ndarray:
    """Deterministic N(0, scale^2) float32 weights for ``name``."""
    values = weight_rng(seed, name).standard_normal(tuple(shape), dtype=np.float32)
    values *= np.float32(scale)
    return values


class GraphBuilder:
    """Collects inputs, initializers, nodes and outputs of one graph (main graph or subgraph)."""

    def __init__(self, name: str = "main", seed: int = 0) -> None:
        self.name = name
        self.seed = seed
        self.inputs: list[ir.Value] = []
        self.outputs: list[ir.Value] = []
        self.initializers: list[ir.Value] = []
        self.nodes: list[ir.Node] = []
        self._scopes: list[str] = []
        self._counts: collections.Counter[str] = collections.Counter()
        self._names: set[str] = set()

    # -- naming -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Prefix the names of nodes and weights created inside the block with ``name/``."""
        self._scopes.append(name)
        try:
            yield
        finally:
            self._scopes.pop()

    def scoped(self, name: str) -> str:
        return "/".join([*self._scopes, name])

    def _unique(self, name: str) -> str:
        if name in self._names:
            raise ValueError(f"duplicate name {name!r} in graph {self.name!r}")
        self._names.add(name)
        return name

    # -- graph interface --------------------------------------------------------------------
    def input(self, name: str, dtype: ir.DataType, shape: Sequence[Dim]) -> ir.Value:
        value = ir.val(self._unique(name), dtype, list(shape))
        self.inputs.append(value)
        return value

    def output(
        self, value: ir.Value, dtype: ir.DataType, shape: Sequence[Dim], name: str | None = None
    ) -> None:
        """Declare ``value`` a graph output (renaming it to ``name`` if given)."""
        if name is not None and name != value.name:
            self._names.discard(value.name or "")
            value.name = self._unique(name)
        value.dtype = dtype
        value.shape = ir.Shape(list(shape))
        self.outputs.append(value)

    def const(
        self, name: str, array: np.ndarray | float | int | Sequence[Any], dtype: Any = None
    ) -> ir.Value:
        """An initializer holding ``array`` (numpy dtype kept unless ``dtype`` is given)."""
        tensor = np.asarray(array, dtype=dtype)
        full = self._unique(self.scoped(name))
        value = ir.val(full, ir.DataType.from_numpy(tensor.dtype), list(tensor.shape))
        value.const_value = ir.tensor(tensor, name=full)
        self.initializers.append(value)
        return value

    def weight(self, name: str, shape: Sequence[int], scale: float = 0.02, lazy: bool = False) -> ir.Value:
        """A float32 initializer of N(0, scale^2) values; ``lazy`` defers generation to save time."""
        full = self._unique(self.scoped(name))
        value = ir.val(full, FLOAT, list(shape))
        if lazy:
            seed = self.seed

            def generate(full: str = full, shape: tuple[int, ...] = tuple(shape)) -> ir.TensorProtocol:
                return ir.tensor(normal_weights(seed, full, shape, scale), name=full)

            value.const_value = ir.LazyTensor(generate, dtype=FLOAT, shape=ir.Shape(list(shape)), name=full)
        else:
            value.const_value = ir.tensor(normal_weights(self.seed, full, shape, scale), name=full)
        self.initializers.append(value)
        return value

    def op(
        self,
        op_type: str,
        inputs: Sequence[ir.Value | None],
        attributes: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        domain: str = "",
    ) -> ir.Value:
        """Append one node with one output and return it (use :meth:`op_multi` for several)."""
        return self.op_multi(op_type, inputs, attributes, name=name, domain=domain)[0]

    def op_multi(
        self,
        op_type: str,
        inputs: Sequence[ir.Value | None],
        attributes: Mapping[str, Any] | None = None,
        *,
        outputs: int = 1,
        name: str | None = None,
        domain: str = "",
    ) -> tuple[ir.Value, ...]:
        if name is None:
            self._counts[self.scoped(op_type)] += 1
            name = f"{op_type}_{self._counts[self.scoped(op_type)]}"
        node_name = self._unique(self.scoped(name))
        out_values = [ir.Value(name=self._unique(f"{node_name}:{i}")) for i in range(outputs)]
        node = ir.node(
            op_type, inputs, dict(attributes or {}), domain=domain, outputs=out_values, name=node_name
        )
        self.nodes.append(node)
        return tuple(out_values)

    # -- results ----------------------------------------------------------------------------
    def graph(self, opset: int | None = None) -> ir.Graph:
        """The collected graph (pass ``opset`` only for the main graph)."""
        return ir.Graph(
            self.inputs,
            self.outputs,
            nodes=self.nodes,
            initializers=self.initializers,
            opset_imports={"": opset} if opset is not None else None,
            name=self.name,
        )

    def ir_model(self, opset: int, doc: str = "") -> ir.Model:
        return ir.Model(
            self.graph(opset),
            ir_version=min_ir_version(opset),
            producer_name="mpcompile-models",
            producer_version="1",
            doc_string=doc or None,
        )

    def model(self, opset: int, doc: str = "") -> onnx.ModelProto:
        """The graph as an ``onnx.ModelProto`` (weights embedded)."""
        return ir.to_proto(self.ir_model(opset, doc))


# -- protobuf helpers for small hand-written test graphs ------------------------------------
PROTO_FLOAT = TensorProto.FLOAT


def value_info(
    name: str, shape: Sequence[int | str] | None, elem_type: int = PROTO_FLOAT
) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def weight(
    name: str, shape: Sequence[int], seed: int = 0, scale: float = 1.0, dtype: type = np.float32
) -> onnx.TensorProto:
    """A deterministic N(0, scale^2) initializer (FP32 unless ``dtype`` says otherwise)."""
    array = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * scale
    return numpy_helper.from_array(array.astype(dtype, copy=False), name)


def constant(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = 17,
    ir_version: int = 8,
    name: str = "test",
) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    onnx.checker.check_model(model, full_check=True)
    return model


def tiny_fp32_model(opset: int = 17) -> onnx.ModelProto:
    """y = Relu(x @ W + b): one MatMul for the allow list, small and deterministic."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
        helper.make_node("Add", ["h", "b"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [value_info("x", [2, 4])],
        [value_info("y", [2, 3])],
        [weight, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
