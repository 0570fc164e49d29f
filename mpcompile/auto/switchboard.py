"""One ONNX Runtime session that evaluates every candidate of the search: the switchboard.

A candidate's FP16-faithful run (``mpcompile.evaluate.faithful``) computes every node in FP32
and rounds what the converted model stores in low precision. Which values those are is all that
differs between candidates, so one FP32 model with a switch at every place a rounding can
happen evaluates them all, and each search step costs a run instead of a session build:

* every float node output (and graph input) ``v`` is *stored* as ``Where(store, fl(v), v)``:
  the converted model keeps it in FP16/BF16, so every reader sees it rounded;
* every float input slot of a node (and every graph output) *reads*
  ``Where(read, fl(v), stored v)``: the converted model hands this reader a low-precision copy
  (an inserted Cast), as it does for a low-precision node reading an FP32 value;
* every float constant a node reads is a graph input, fed with the converted model's own
  constant for that reader (converted, copied or clamped as the core made it).

``fl`` is the same ``Cast(to=FLOAT16)`` → ``Cast(to=FLOAT)`` pair as the faithful evaluation's,
``Where`` selects exactly, and the session runs with graph optimizations off, so a candidate's
switchboard run equals its faithful run bit for bit (``tests/test_auto_switchboard.py``).
``Switchboard.settings`` reads the switches off a converted candidate; it returns None when the
candidate changed the graph in a way the switches cannot express (a node removed or added other
than Casts and low-precision constant copies), and the search then builds that candidate's own
session. The answer is always checked once more in its own session.

Models with subgraphs (If/Loop/Scan) or local functions get no switchboard (``build`` returns
None): their conversions may retype values the switches do not reach.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from mpcompile.evaluate.ort_session import run_linear
from mpcompile.irtools.graphs import model_graphs
from mpcompile.irtools.names import NameAuthority

FLOAT = ir.DataType.FLOAT
LOW_DTYPES = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
Slot = tuple[str, int]  # (node name, input index); ("", k) is graph output k


@dataclasses.dataclass(frozen=True)
class Settings:
    """One candidate on the switchboard: the session inputs besides the model's own."""

    switches: dict[str, np.ndarray]  # switch input -> bool scalar
    constants: dict[str, np.ndarray]  # constant input -> the FP32 array the reader sees
    output_dtypes: dict[str, ir.DataType | None]  # graph output -> dtype the candidate declares


class Switchboard:
    """An FP32 model with a rounding switch at every store and read of a float value."""

    def __init__(
        self, model: ir.Model, low: ir.DataType, *, before_session: Callable[[], None] | None = None
    ):
        """The switchboard model and its session; prefer ``Switchboard.build``, which returns None
        for models it cannot serve. ``before_session``: called between the wiring and the
        session build (``--auto``'s load probe)."""
        from mpcompile.evaluate.ort_session import make_session, serialize_for_session

        self.low = low
        board = _board_copy(model)
        self._op_types = {node.name: node.op_type for node in board.graph}  # before the rewiring
        wiring = _Wiring(board, low)
        self._node_names = set(self._op_types)
        self._stored = wiring.stored
        self._read = wiring.read
        self._constant = wiring.constant
        self._constant_outputs = wiring.constant_outputs
        self._reference_constants = wiring.reference_constants
        self.outputs = wiring.output_names
        self.model = board
        serialized = serialize_for_session(board)
        if before_session is not None:
            before_session()
        self._session = make_session(
            serialized, ["CPUExecutionProvider"], optimize=False, prepack=False, memory_pattern=False
        )

    @classmethod
    def build(
        cls, model: ir.Model, low: ir.DataType, *, before_session: Callable[[], None] | None = None
    ) -> Switchboard | None:
        """The switchboard of ``model`` (not modified), or None for a model with subgraphs or
        local functions, or with a graph output that is a constant."""
        if model.functions or len(list(model_graphs(model))) > 1:
            return None
        outputs = model.graph.outputs
        if any((value.dtype == FLOAT and _is_constant(value)) or value.is_graph_input() for value in outputs):
            return None
        return cls(model, low, before_session=before_session)

    # ---- reading a candidate ---------------------------------------------------------

    def settings(self, converted: ir.Model) -> Settings | None:
        """The switch positions and constants of ``converted`` (a conversion of the same model),
        or None when its graph differs from the original other than by Casts and constant copies."""
        graph = converted.graph
        nodes = {node.name: node for node in graph}
        for node in graph:
            if node.name not in self._node_names and not _is_inserted(node):
                return None
        if any(nodes.get(name) is None or nodes[name].op_type != op for name, op in self._op_types.items()):
            return None
        switches: dict[str, np.ndarray] = {}
        for (node_name, index), flag in self._stored.items():
            if node_name:
                value = nodes[node_name].outputs[index]
            elif index < len(graph.inputs):
                value = graph.inputs[index]
            else:
                return None
            if value.dtype is None:  # the faithful evaluation would guess; do not
                return None
            switches[flag] = np.array(value.dtype in LOW_DTYPES)
        for node in graph:  # a low-precision store with no switch: nothing here can express it
            if node.name in self._node_names:
                for index, value in enumerate(node.outputs):
                    key = (node.name, index)
                    if (
                        value.dtype in LOW_DTYPES
                        and key not in self._stored
                        and key not in self._constant_outputs
                    ):
                        return None
        constants: dict[str, np.ndarray] = {}
        for slot, (flag, (producer, index)) in self._read.items():
            value = self._slot_value(graph, nodes, slot)
            if value is None:
                return None
            source, low_on_way = _source(value, self._node_names)
            if producer:
                found = source.producer()
                if found is None or found.name != producer or source.index() != index:
                    return None  # reads something other than what the original reads
            elif not (index < len(graph.inputs) and source is graph.inputs[index]):
                return None
            switches[flag] = np.array(low_on_way)
        for slot, name in self._constant.items():
            value = self._slot_value(graph, nodes, slot)
            if value is None:
                return None
            source, low_on_way = _source(value, self._node_names)
            array = _constant_array(source)
            if array is None:
                return None
            if low_on_way and source.dtype not in LOW_DTYPES:
                array = array.astype(self.low.numpy()).astype(np.float32)
            constants[name] = array
        outputs = {value.name: value.dtype for value in graph.outputs}
        return Settings(switches, constants, outputs)

    @staticmethod
    def _slot_value(graph: ir.Graph, nodes: Mapping[str, ir.Node], slot: Slot) -> ir.Value | None:
        node_name, index = slot
        if not node_name:
            return graph.outputs[index] if index < len(graph.outputs) else None
        node = nodes[node_name]
        return node.inputs[index] if index < len(node.inputs) else None

    # ---- running ---------------------------------------------------------------------

    def reference_settings(self) -> Settings:
        """No switch on, the original constants: the FP32 model itself."""
        return Settings(
            {flag: np.array(False) for flag in self._switch_names()}, dict(self._reference_constants), {}
        )

    def _switch_names(self) -> list[str]:
        return [*self._stored.values(), *(flag for flag, _ in self._read.values())]

    def run(
        self, feeds: Sequence[Mapping[str, np.ndarray]], settings: Settings, *, intermediates: bool = False
    ) -> list[dict[str, np.ndarray]]:
        """Graph outputs per batch, as the candidate's faithful run gives them; ``intermediates``:
        every node output too, by its original name (as ``ReferenceSession`` gives them)."""
        from mpcompile.evaluate.faithful import as_declared

        names = [output.name for output in self._session.get_outputs()]
        if not intermediates:
            names = self.outputs
        results = []
        for batch in feeds:
            inputs = {**batch, **settings.switches, **settings.constants}
            arrays = run_linear(self._session, names, inputs)
            results.append(
                {
                    name: as_declared(array, settings.output_dtypes.get(name))
                    for name, array in zip(names, arrays, strict=True)
                }
            )
        return results


class _Wiring:
    """Rewires a prepared FP32 copy into the switchboard, in place, recording every switch.

    Linear in nodes, inputs and outputs: each store is inserted once, and each node's inputs
    (and the graph outputs) are rewired in one step (``_rewire``), so a node reading 100,000
    values does not copy its input list once per input."""

    def __init__(self, board: ir.Model, low: ir.DataType):
        self.graph, self.low, self.names = board.graph, low, NameAuthority(board)
        self.stored: dict[tuple[str, int], str] = {}  # (node or "" for graph input, index) -> switch
        self.read: dict[Slot, tuple[str, tuple[str, int]]] = {}  # slot -> switch, what it reads
        self.constant: dict[Slot, str] = {}  # slot reading a constant -> its fed input
        self.constant_outputs: set[tuple[str, int]] = set()  # Constant nodes' outputs
        self.reference_constants: dict[str, np.ndarray] = {}  # fed input -> the original constant
        self.output_names = [value.name for value in self.graph.outputs]
        self._selected: dict[ir.Value, ir.Value] = {}  # stored value -> Where(store, fl(v), v)
        self._rounded: dict[ir.Value, ir.Value] = {}  # stored value -> its rounding fl(v)
        self._origin: dict[ir.Value, tuple[str, int]] = {}  # stored value -> (producer or "", index)
        nodes = list(self.graph)
        constants = _constant_values(self.graph)
        outputs = {id(value) for value in self.graph.outputs}
        intermediates = [
            value for node in nodes for value in node.outputs
            if value.name and isinstance(value.type, ir.TensorType) and id(value) not in outputs
        ]  # fmt: skip
        for index, value in enumerate(list(self.graph.inputs)):
            if value.dtype == FLOAT and any(True for _ in value.uses()):
                self._store(value, ("", index), None)
        for node in nodes:
            for index, value in enumerate(node.outputs):
                if id(value) in constants:
                    self.constant_outputs.add((node.name, index))
                elif value.dtype == FLOAT:
                    self._store(value, (node.name, index), node)
        moved: dict[ir.Value, ir.Value] = {}  # outputs of rebuilt nodes -> their successors
        for node in nodes:
            replacements: dict[int, ir.Value] = {}
            for index, value in enumerate(node.inputs):
                if value is not None and value.dtype == FLOAT:
                    if id(value) in constants:
                        replacements[index] = self._feed_constant(node, index, value, constants[id(value)])
                    elif value in self._selected:
                        replacements[index] = self._read_switch(node, index, value)
            for old, new in _rewire(self.graph, node, replacements):  # rebuilt: its outputs are new
                moved[old] = new
                for table in (self._selected, self._rounded, self._origin):
                    if old in table:
                        table[new] = table.pop(old)
        for index, value in enumerate(list(self.graph.outputs)):
            if value in self._selected:
                self._read_output(index, value)
        self._drop_unread_initializers()
        self.graph.outputs.extend(moved.get(value, value) for value in intermediates)  # reference run only

    def _switch(self, kind: str) -> ir.Value:
        value = ir.Value(
            name=self.names.unique(f"mpcompile.switch.{kind}"), type=ir.TensorType(ir.DataType.BOOL),
            shape=ir.Shape([]),
        )  # fmt: skip
        self.graph.inputs.append(value)
        return value

    def _store(self, value: ir.Value, key: tuple[str, int], after: ir.Node | None) -> None:
        """``value``'s readers will read Where(store, fl(value), value) (``_read_switch`` rewires
        them)."""
        graph, names = self.graph, self.names
        narrow = ir.node("Cast", [value], {"to": self.low})
        widen = ir.node("Cast", [narrow.outputs[0]], {"to": FLOAT})
        flag = self._switch("store")
        select = ir.node("Where", [flag, widen.outputs[0], value])
        narrow.outputs[0].name = names.unique(f"{value.name}__{self.low.name.lower()}")
        widen.outputs[0].name = names.unique(f"{value.name}__rounded")
        select.outputs[0].name = names.unique(f"{value.name}__stored")
        # The inserted values stay untyped: ONNX Runtime infers them, and value_info for four
        # values per store made serialising the board the largest part of building it.
        if after is None:
            graph.insert_before(graph[0], [narrow, widen, select])
        else:
            graph.insert_after(after, [narrow, widen, select])
        self._selected[value] = select.outputs[0]
        self._rounded[value] = widen.outputs[0]
        self._origin[value] = key
        self.stored[key] = flag.name

    def _read_switch(self, node: ir.Node, index: int, value: ir.Value) -> ir.Value:
        """Where(read, fl(value), stored value), inserted before ``node`` for its input ``index``
        (the caller rewires the input)."""
        flag = self._switch("read")
        select = ir.node("Where", [flag, self._rounded[value], self._selected[value]])
        select.outputs[0].name = self.names.unique(f"{value.name}__stored__read")  # untyped: see _store
        self.graph.insert_before(node, select)
        self.read[(node.name, index)] = (flag.name, self._origin[value])
        return select.outputs[0]

    def _read_output(self, index: int, value: ir.Value) -> None:
        """Graph output ``index`` reads Where(read, fl(value), stored value), under its own name;
        the raw value is renamed."""
        flag = self._switch("read")
        select = ir.node("Where", [flag, self._rounded[value], self._selected[value]])
        select.outputs[0].type, select.outputs[0].shape = ir.TensorType(FLOAT), value.shape
        value.name = self.names.unique(f"{value.name}__raw")
        self.graph.append(select)
        self.graph.outputs[index] = select.outputs[0]
        select.outputs[0].name = self.output_names[index]
        self.read[("", index)] = (flag.name, self._origin[value])

    def _feed_constant(self, node: ir.Node, index: int, value: ir.Value, array: np.ndarray) -> ir.Value:
        """A graph input fed with the candidate's constant (``array``, the original, in the
        reference run) for input ``index`` of ``node`` (the caller rewires the input)."""
        fed = ir.Value(
            name=self.names.unique(f"mpcompile.constant.{value.name}"), type=ir.TensorType(FLOAT),
            shape=ir.Shape(array.shape),
        )  # fmt: skip
        self.graph.inputs.append(fed)
        self.reference_constants[fed.name] = array
        self.constant[(node.name, index)] = fed.name
        return fed

    def _drop_unread_initializers(self) -> None:
        """Constants are fed now; an initializer that is also a graph input keeps its default."""
        for name, value in list(self.graph.initializers.items()):
            unread = not any(True for _ in value.uses())
            if unread and not value.is_graph_output() and not value.is_graph_input():
                del self.graph.initializers[name]


# A node with more inputs than this to rewire is rebuilt once instead: ``replace_input_with``
# copies the whole input tuple, so rewiring each input of a Sum of n values costs n².
REBUILD_INPUTS = 32


def _rewire(
    graph: ir.Graph, node: ir.Node, replacements: Mapping[int, ir.Value]
) -> list[tuple[ir.Value, ir.Value]]:
    """Replace the inputs of ``node`` given by index. A node with many is rebuilt in its place
    (same name, attributes, and outputs with the same names, types and readers): then the
    (old, new) pairs of its outputs, else []."""
    if len(replacements) <= REBUILD_INPUTS:
        for index, value in replacements.items():
            node.replace_input_with(index, value)
        return []
    inputs = [replacements.get(index, value) for index, value in enumerate(node.inputs)]
    rebuilt = ir.Node(
        node.domain, node.op_type, inputs, list(node.attributes.values()), overload=node.overload,
        num_outputs=len(node.outputs), version=node.version, name=node.name,
        doc_string=node.doc_string, metadata_props=dict(node.metadata_props),
    )  # fmt: skip
    graph.insert_before(node, rebuilt)
    for old, new in zip(node.outputs, rebuilt.outputs, strict=True):
        new.type, new.shape = old.type, old.shape
        old.replace_all_uses_with(new, replace_graph_outputs=True)
        new.name, old.name = old.name, None
    _detach(node)
    graph.remove(node)
    return list(zip(node.outputs, rebuilt.outputs, strict=True))


def _detach(node: ir.Node) -> None:
    """Remove ``node`` from the uses of its inputs in one pass (``Graph.remove(safe=True)``
    detaches input by input through ``replace_input_with``, quadratic again). Uses onnx-ir's
    own per-use bookkeeping (``Value._remove_usage``), with the safe removal as the fallback."""
    try:
        for index, value in enumerate(node.inputs):
            if value is not None:
                value._remove_usage(node, index)  # what replace_input_with calls
    except AttributeError:  # a later onnx-ir without it: detach the slow way
        for index in range(len(node.inputs)):
            node.replace_input_with(index, None)


def _board_copy(model: ir.Model) -> ir.Model:
    """A private copy of ``model`` to wire (``faithful.prepared_copy``: onnx shape inference
    only where a node output has no type)."""
    from mpcompile.evaluate.faithful import prepared_copy

    return prepared_copy(model)


def _constant_values(graph: ir.Graph) -> dict[int, np.ndarray]:
    """id -> FP32 values of every float constant a node can read: initializers (not graph
    inputs) and Constant outputs."""
    constants: dict[int, np.ndarray] = {}
    candidates = [
        *graph.initializers.values(),
        *(node.outputs[0] for node in graph if node.domain == "" and node.op_type == "Constant"),
    ]
    for value in candidates:
        if value.dtype == FLOAT and _is_constant(value):
            array = _constant_array(value)
            if array is not None:
                constants[id(value)] = array
    return constants


def _is_constant(value: ir.Value) -> bool:
    """An initializer that is not a graph input, or a Constant node's output."""
    if value.const_value is not None and value.is_initializer():
        return not value.is_graph_input()
    return _constant_producer(value) is not None


def _is_inserted(node: ir.Node) -> bool:
    """A node a conversion adds: a Cast, or a Constant holding a low-precision copy."""
    return node.domain == "" and node.op_type in ("Cast", "Constant")


def _source(value: ir.Value, original: set[str]) -> tuple[ir.Value, bool]:
    """Walk back through inserted Casts: the value they start from, and whether any value on the
    way (that one included) is low precision."""
    low = value.dtype in LOW_DTYPES
    producer = value.producer()
    while producer is not None and producer.name not in original and producer.op_type == "Cast":
        value = producer.inputs[0]
        low = low or value.dtype in LOW_DTYPES
        producer = value.producer()
    return value, low


def _constant_producer(value: ir.Value) -> ir.Node | None:
    producer = value.producer()
    if producer is not None and producer.domain == "" and producer.op_type == "Constant":
        return producer
    return None


def _constant_array(value: ir.Value) -> np.ndarray | None:
    """The FP32 values of a float constant (initializer or Constant output), low precision widened."""
    tensor = value.const_value
    if tensor is None:
        producer = _constant_producer(value)
        if producer is None:
            return None
        attribute = producer.attributes.get("value")
        if attribute is not None and attribute.type == ir.AttributeType.TENSOR:
            tensor = attribute.as_tensor()
        elif "value_float" in producer.attributes:
            return np.array(producer.attributes["value_float"].as_float(), np.float32)
        elif "value_floats" in producer.attributes:
            return np.array(list(producer.attributes["value_floats"].as_floats()), np.float32)
        else:
            return None
    if tensor.dtype != FLOAT and tensor.dtype not in LOW_DTYPES:
        return None
    return np.asarray(tensor.numpy()).astype(np.float32, copy=False)
