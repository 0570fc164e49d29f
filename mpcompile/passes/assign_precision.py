"""Decide each node's precision: the analysis half of the pipeline.

Fills a ``PrecisionPlan`` and mutates nothing. The algorithm (documented in
docs/precision-policy.md) paints each graph TF-AMP style:

1. classify every node (allow / follow / pass-through / block, or fixed FP32 for a
   concrete reason: schema, kernel, range, unknown op, user override, ...);
2. allow nodes seed low precision; values that a node kept FP32 for range reasons may push
   beyond the low-precision range keep their readers FP32 until an op brings them back
   (``mpcompile.policy.range_propagation``, reason ``range-propagated``);
3. block propagates forward through follow/pass-through nodes that lead to further
   block or follow nodes;
4. follow and pass-through nodes lying between low-precision nodes go low;
5. pass-through nodes next to a low-precision region join it;
6. Constant nodes take their consumers' precision.

Step 1 is the policy's: ``mpcompile.policy.classification`` (the cascade, with every fixed
decision's reason), over the op classes, typing, attention-mask and integer-cast rules of
``mpcompile.policy``. This module is the painter: steps 2-6.

Edges are float-data edges only: a value that the producer outputs and the consumer
reads through its primary type variable (see ``mpcompile.policy.op_types``).
"""

from __future__ import annotations

import dataclasses
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping

import onnx_ir as ir

from mpcompile import errors
from mpcompile.core import ranges
from mpcompile.core.io_types import lowered_io
from mpcompile.core.plan import Decision, PrecisionPlan, Reason
from mpcompile.core.precision import Precision
from mpcompile.irtools.graphs import TYPED_FUNCTION_KEY, all_graphs, model_graphs, node_opset
from mpcompile.passes.base import PlanPass
from mpcompile.passes.context import ConversionContext
from mpcompile.policy import OpClass, integer_casts, op_classes, op_types, range_propagation
from mpcompile.policy.classification import SOURCE_OPS, NodeRules


@dataclasses.dataclass
class _NodeInfo:
    node: ir.Node
    typing: op_types.NodeTyping | None
    op_class: OpClass | None = None  # None: fixed, see fixed
    rule: str = ""
    fixed: Decision | None = None  # decided before painting
    by_user: bool = False
    low: bool = False
    denied: bool = False  # block propagated into it
    extended: bool = False  # went low in step 4b (no extra Cast)
    range_kept: str = ""  # reads a value that may be out of range: the rule saying which (step 2b)
    follows: bool = False  # a follow/pass-through node left to the painter (not fixed, not a source op)
    # Its float-data neighbours, found once (the steps walk them several times): see _GraphPainter.
    producers: list[_NodeInfo] | None = None
    consumers: list[_NodeInfo] | None = None


class AssignPrecisionPass(PlanPass):
    """Fill the plan (analysis only): a Decision and the typing seen for every node, the dtype
    every node input must have afterwards, the dtype each graph output keeps, and the attention
    masks to clamp. ``plan``: the plan to fill (a new one when not given). ``review``: called
    with the model and the plan once it is painted; True means it added node overrides
    (``RangeRunPass.review``), and the plan is painted again."""

    def __init__(
        self,
        context: ConversionContext,
        plan: PrecisionPlan | None = None,
        review: Callable[[ir.Model, PrecisionPlan], bool] | None = None,
    ):
        super().__init__(context, PrecisionPlan() if plan is None else plan)
        self.review = review

    def requires(self, model: ir.Model) -> None:
        """A plan of low-precision nodes needs Casts to the low type (a minimum ai.onnx opset),
        and is made for a QDQ-quantized model only when ``context.allow_qdq`` says so."""
        low = self.context.low
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
        # A model without an ai.onnx import (only ai.onnx.ml, say) has nothing that changes precision.
        if 0 < opset < low.min_opset:
            raise errors.UnsupportedOpsetError(
                f"{low.precision.value} needs ai.onnx opset >= {low.min_opset} (Cast to {low.precision.value}); the model "
                f"has {opset}. Upgrade it with onnx.version_converter.convert_version(model, {low.min_opset})"
            )
        if not self.context.allow_qdq and any(
            (node.domain, node.op_type) in op_classes.QDQ_OPS
            for graph in model_graphs(model)
            for node in graph
        ):
            raise errors.QdqModelError(
                "model is QDQ-quantized (QuantizeLinear/DequantizeLinear); pass --allow-qdq to convert only its float parts"
            )

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self._paint(model)
        # ``review`` (the range run, finished now) may add node overrides: then paint again.
        if self.review is not None and self.review(model, self.plan):
            self.plan.clear()
            self._paint(model)
        plan = self.plan
        unknown = Counter(
            f"{node.domain or 'ai.onnx'}::{node.op_type}"
            for node, decision in plan.items()
            if decision.reason == Reason.UNKNOWN_OP
        )
        if unknown:
            listed = ", ".join(
                f"{op} ({count} node{'s' * (count > 1)})" for op, count in sorted(unknown.items())
            )
            self.context.notes.append(f"kept FP32, no schema or typing rule: {listed}")
        untyped = [name for (_, name, _), f in model.functions.items() if not f.meta.get(TYPED_FUNCTION_KEY)]
        if untyped:
            self.context.notes.append(
                f"local function(s) {', '.join(sorted(untyped))} kept as they are: their call sites disagree on types"
            )
        return ir.passes.PassResult(model, modified=False)

    def _paint(self, model: ir.Model) -> None:
        """Steps 1-6 of the module docstring, into the (empty) plan."""
        plan = self.plan
        plan.graphs = list(all_graphs(model))  # valid once InferTypesPass typed the functions
        low_inputs, low_outputs = lowered_io(model, self.context.fp32_io)
        plan.input_dtypes = dict.fromkeys(low_inputs, self.context.low.dtype)
        functions = {(function.domain, function.name) for function in model.functions.values()}
        masks: dict[ir.Value, list[ir.Node]] = {}  # clampable attention masks -> the Softmaxes they reach
        # Quantized paths need a Q/DQ node in some graph (a subgraph's may read an outer one's output).
        has_qdq = any(node.op_type in _QDQ_OP_TYPES for graph, _ in plan.graphs for node in graph)
        for graph, opset in plan.graphs:
            # --auto measures values of the main graph only: its measured ops and Casts stay as the
            # static lists say inside subgraphs and functions.
            main = graph is model.graph
            _GraphPainter(
                self.context, plan, masks, graph, opset, functions, model.opset_imports, measured=main,
                low_inputs=frozenset(low_inputs) if main else frozenset(),
                low_outputs=frozenset(low_outputs) if main else frozenset(), has_qdq=has_qdq,
            ).paint()  # fmt: skip
        # A mask is clamped when one of its Softmaxes runs in low precision: its values will.
        plan.clamped_masks = {value for value, softmaxes in masks.items() if any(map(plan.is_low, softmaxes))}
        self._require_dtypes(model, frozenset(low_outputs))

    def _require_dtypes(self, model: ir.Model, low_outputs: frozenset[ir.Value]) -> None:
        """Per node input, the dtype it must have once the plan is applied: the low-precision
        type where a low-precision node reads float data, its present dtype elsewhere, any dtype
        where a node reads only the shape of an input that goes low. Per graph output, its
        present dtype, or the low-precision type for the main-graph outputs that go low
        (InsertCastsPass casts each output to it)."""
        low = self.context.low.dtype
        plan = self.plan
        for graph, opset in plan.graphs:
            for node in graph:
                typing = None
                if plan.is_low(node):
                    typing = plan.typing(node) or op_types.node_typing(
                        node, node_opset(node, opset, model.opset_imports), low
                    )
                    plan.set_typing(node, typing)
                shape_only = op_classes.SHAPE_ONLY_INPUTS.get((node.domain, node.op_type), frozenset())
                plan.require_input_dtypes(
                    node,
                    (
                        None
                        if value is None or (index in shape_only and value in plan.input_dtypes)
                        else low
                        if typing is not None and index in typing.float_inputs
                        else value.dtype
                        for index, value in enumerate(node.inputs)
                    ),
                )
            for value in graph.outputs:
                plan.output_dtypes[value] = low if value in low_outputs else value.dtype


class _GraphPainter:
    def __init__(
        self,
        context: ConversionContext,
        plan: PrecisionPlan,
        masks: dict[ir.Value, list[ir.Node]],
        graph: ir.Graph,
        opset: int,
        functions: set[tuple[str, str]],
        opset_imports: Mapping[str, int],
        measured: bool = True,
        low_inputs: frozenset[ir.Value] = frozenset(),
        low_outputs: frozenset[ir.Value] = frozenset(),
        has_qdq: bool = True,
    ):
        self.context = context
        self.has_qdq = has_qdq  # False: no node of the model is a Q/DQ op (step 1's quantized paths)
        # Graph inputs and outputs that go low precision (keep_io_types): such an input is a
        # low-precision producer, such an output a low-precision reader.
        self.low_inputs = low_inputs
        self.low_outputs = low_outputs
        self.plan = plan
        self.measured = measured
        self.graph = graph
        self.rules = NodeRules(
            low=context.low,
            target=context.target,
            policy=context.policy,
            opset=opset,
            opset_imports=opset_imports,
            constant_range=lambda value: plan.constant_range(value, context.low),
            functions=functions,
            node_overrides=context.node_overrides,
            measured=measured,
            masks=masks,
        )
        self.masks = masks
        self.infos: dict[ir.Node, _NodeInfo] = {}
        self.order: list[ir.Node] = list(graph)

    # ---- classification -------------------------------------------------------------

    def paint(self) -> None:
        for node in self.order:
            self.infos[node] = self._classify(node)
        self._mark_qdq_paths()
        for info in self._infos():  # decided once the fixed decisions are known (steps 1 and 1b)
            info.follows = (
                info.fixed is None
                and info.op_class in (OpClass.FOLLOW, OpClass.PASS_THROUGH)
                and (info.node.domain, info.node.op_type) not in SOURCE_OPS
            )
        if range_propagation.needed(self.context.low):
            self._propagate_range()
        candidates = [info for info in self._infos() if info.fixed is None]
        self._propagate_block(candidates)
        self._paint_between_low(candidates)
        self._extend_without_casts()
        self._spread_through_pass_through()
        self._decide_constants()
        self._record()

    def _infos(self) -> Iterable[_NodeInfo]:
        return (self.infos[node] for node in self.order)

    def _classify(self, node: ir.Node) -> _NodeInfo:
        verdict = self.rules.verdict(node)
        return _NodeInfo(
            node, verdict.typing, verdict.op_class, verdict.rule, verdict.decision, verdict.by_user
        )

    def _mark_qdq_paths(self) -> None:
        """Nodes fed by DequantizeLinear or feeding QuantizeLinear form quantized paths."""
        if not self.has_qdq:
            return
        for info in self._infos():
            if info.fixed is not None or info.typing is None:
                continue
            node = info.node
            fed_by_dq = any(
                value is not None
                and value.producer() is not None
                and value.producer().op_type == "DequantizeLinear"
                for value in node.inputs
            )
            feeds_q = any(
                use.node.op_type == "QuantizeLinear" for value in node.outputs for use in value.uses()
            )
            if fed_by_dq or feeds_q:
                info.fixed = Decision(Precision.FP32, Reason.QDQ, "quantized path kept as is")

    def _propagate_range(self) -> None:
        """Step 2b: values a range-kept node may push beyond the low-precision range stay FP32
        in their readers until a node brings them back (``mpcompile.policy.range_propagation``).
        One pass in graph (topological) order: linear and deterministic."""
        low = self.context.low
        origin: dict[ir.Value, str] = {}  # value that may be out of range -> the seed node's name
        for node in self.order:
            info = self.infos[node]
            if info.typing is None:
                continue
            carried = [
                node.inputs[index]
                for index in info.typing.float_inputs
                if node.inputs[index] is not None and node.inputs[index] in origin
            ]
            if carried:
                value = carried[0]
                info.range_kept = (
                    f"reads {value.name!r}, which may exceed {low.precision.value} range "
                    f"(from {origin[value]!r})"
                )
            seeds = self._seeds_range(info)
            if not (seeds or carried) or range_propagation.brings_into_range(
                node, _carried_by(node, origin), low
            ):
                continue
            source = (node.name or node.op_type) if seeds else origin[carried[0]]
            for index in info.typing.float_outputs:
                origin[node.outputs[index]] = source

    @staticmethod
    def _seeds_range(info: _NodeInfo) -> bool:
        """Kept FP32 for a constant beyond range, or a blocked op that grows magnitudes."""
        if info.fixed is not None:
            return info.fixed.reason == Reason.RANGE
        return info.op_class == OpClass.BLOCK and range_propagation.grows_range(info.node)

    # ---- float-data edges -----------------------------------------------------------

    def _info_of(self, node: ir.Node | None) -> _NodeInfo | None:
        return None if node is None else self.infos.get(node)

    def _float_producers(self, info: _NodeInfo) -> list[_NodeInfo]:
        if info.producers is not None:
            return info.producers
        result = []
        for index in info.typing.float_inputs if info.typing else ():
            value = info.node.inputs[index]
            producer = self._info_of(value.producer()) if value is not None else None
            if producer is not None and producer.typing and value.index() in producer.typing.float_outputs:
                result.append(producer)
        info.producers = result
        return result

    def _float_consumers(self, info: _NodeInfo) -> list[_NodeInfo]:
        if info.consumers is not None:
            return info.consumers
        result = []
        for index in info.typing.float_outputs if info.typing else ():
            for use in info.node.outputs[index].uses():
                consumer = self._info_of(use.node)
                if consumer is not None and consumer.typing and use.idx in consumer.typing.float_inputs:
                    result.append(consumer)
        info.consumers = result
        return result

    # ---- painting -------------------------------------------------------------------

    def _propagate_block(self, candidates: list[_NodeInfo]) -> None:
        """Step 3: block flows forward through follow/pass-through nodes that lead to block/follow nodes."""
        leads_to_block_or_follow: set[ir.Node] = set()
        queue = deque(info for info in candidates if info.op_class in (OpClass.BLOCK, OpClass.FOLLOW))
        leads_to_block_or_follow.update(info.node for info in queue)
        while queue:
            info = queue.popleft()
            for producer in self._float_producers(info):
                if (
                    producer.fixed is None
                    and producer.op_class == OpClass.PASS_THROUGH
                    and producer.node not in leads_to_block_or_follow
                ):
                    leads_to_block_or_follow.add(producer.node)
                    queue.append(producer)
        queue = deque(info for info in candidates if info.op_class == OpClass.BLOCK)
        while queue:
            info = queue.popleft()
            for consumer in self._float_consumers(info):
                if (
                    consumer.fixed is None
                    and consumer.op_class in (OpClass.FOLLOW, OpClass.PASS_THROUGH)
                    and not consumer.denied
                    and consumer.node in leads_to_block_or_follow
                    and (consumer.node.domain, consumer.node.op_type) not in SOURCE_OPS
                ):
                    consumer.denied = True
                    queue.append(consumer)

    def _paintable(self, info: _NodeInfo) -> bool:
        return info.follows and not info.denied and not info.range_kept

    def _paint_between_low(self, candidates: list[_NodeInfo]) -> None:
        """Steps 2 and 4: allow nodes go low; follow/pass-through nodes between them too.

        Nodes that read only weights (an embedding Gather) start low-precision paths as allow
        nodes do: nothing FP32 flows into them, so a path from them into an allow node crosses
        no boundary when it is low.
        """
        seeds = [info for info in candidates if info.op_class == OpClass.ALLOW and not info.range_kept]
        for info in seeds:
            info.low = True
        weight_fed = [info for info in candidates if self._paintable(info) and self._reads_only_weights(info)]
        for info in weight_fed:
            if not info.typing.float_inputs:
                info.rule = f"{info.rule}; {integer_casts.INTEGER_SOURCE}"
        downstream = self._reach(seeds, self._float_consumers) | self._reach(
            weight_fed, self._float_consumers
        )
        downstream.update(info.node for info in weight_fed)
        upstream = self._reach(seeds, self._float_producers)
        for key in downstream & upstream:
            self.infos[key].low = True

    def _reads_only_weights(self, info: _NodeInfo) -> bool:
        """Nothing FP32 flows in: only weights, or (``measured_casts``) a Cast from integers."""
        inputs = [info.node.inputs[index] for index in info.typing.float_inputs]
        if not inputs:
            return integer_casts.starts_low_path(
                info.node, measured_casts=self.context.measured_casts, measured=self.measured
            )
        return all(self._is_low_source(value) for value in inputs)

    def _is_low_source(self, value: ir.Value) -> bool:
        """A weight, or a graph input that goes low precision: nothing FP32 flows from it."""
        return _is_weight(value) or value in self.low_inputs

    def _reach(self, seeds: list[_NodeInfo], step) -> set[ir.Node]:
        reached: set[ir.Node] = set()
        queue = deque(seeds)
        while queue:
            info = queue.popleft()
            for neighbour in step(info):
                if self._paintable(neighbour) and neighbour.node not in reached:
                    reached.add(neighbour.node)
                    queue.append(neighbour)
        return reached

    def _extend_without_casts(self) -> None:
        """Step 4b: a follow/pass-through node fed only by low-precision nodes (weights, inputs
        that go low) goes
        low when that needs no more Casts: the Cast moves from its inputs to its output, or two
        input Casts become one output Cast. More work in low precision, never more boundaries."""
        for info in self._infos():
            if (
                info.low
                or not self._paintable(info)
                or not info.typing.float_inputs
                or self._feeds_blocked(info)
            ):
                continue
            producers = []
            for index in info.typing.float_inputs:
                value = info.node.inputs[index]
                producer = self._info_of(value.producer())
                if value in self.low_inputs or (
                    producer is not None and producer.low and value.index() in producer.typing.float_outputs
                ):
                    producers.append(value)
                elif not self._is_low_source(value):
                    break  # an FP32 input: going low would add a Cast
            else:
                if not producers:
                    continue
                casts_saved = sum(
                    1 for value in set(producers) if self._only_low_readers_besides(value, info.node)
                )
                casts_needed = 1 if self._has_fp32_reader(info) else 0
                if casts_needed <= casts_saved:
                    info.low = True
                    info.extended = True

    def _feeds_blocked(self, info: _NodeInfo) -> bool:
        """Inputs of unsafe (blocked) ops stay computed in FP32, as TF-AMP keeps them."""
        for value in info.node.outputs:
            for use in value.uses():
                reader = self.infos.get(use.node)
                if reader is not None and (
                    reader.denied or (reader.fixed is None and reader.op_class == OpClass.BLOCK)
                ):
                    return True
        return False

    def _reads_as_low(self, node: ir.Node, index: int) -> bool:
        reader = self.infos.get(node)
        return (
            reader is not None
            and reader.low
            and reader.typing is not None
            and index in reader.typing.float_inputs
        )

    def _only_low_readers_besides(self, value: ir.Value, node: ir.Node) -> bool:
        """True if ``value``'s Cast back to FP32 would exist only for ``node``."""
        if value.is_graph_output() and value not in self.low_outputs:
            return False
        return all(use.node is node or self._reads_as_low(use.node, use.idx) for use in value.uses())

    def _has_fp32_reader(self, info: _NodeInfo) -> bool:
        for index in info.typing.float_outputs:
            value = info.node.outputs[index]
            if (value.is_graph_output() and value not in self.low_outputs) or any(
                not self._reads_as_low(use.node, use.idx) for use in value.uses()
            ):
                return True
        return False

    def _spread_through_pass_through(self) -> None:
        """Step 5: pass-through nodes touching a low region join it (both directions)."""
        queue = deque(info for info in self._infos() if info.low)
        while queue:
            info = queue.popleft()
            for neighbour in (*self._float_producers(info), *self._float_consumers(info)):
                if (
                    not neighbour.low
                    and self._paintable(neighbour)
                    and neighbour.op_class == OpClass.PASS_THROUGH
                ):
                    neighbour.low = True
                    queue.append(neighbour)

    def _decide_constants(self) -> None:
        """Step 6: Constant/ConstantOfShape go low when every float consumer is low."""
        for info in self._infos():
            if (info.node.domain, info.node.op_type) not in SOURCE_OPS or info.fixed is not None:
                continue
            consumers = [
                self.infos.get(use.node)
                for index in info.typing.float_outputs
                for use in info.node.outputs[index].uses()
            ]
            consumer_low = [
                c is not None and c.low and c.typing is not None and _reads_as_float(c, info.node)
                for c in consumers
            ]
            measured = self.rules.float_constant_range(info.node.outputs[0])
            in_range = measured is None or measured.in_range or info.node.outputs[0] in self.masks
            info.low = (
                bool(consumer_low)
                and all(consumer_low)
                and in_range
                and not info.node.outputs[0].is_graph_output()
            )

    def _record(self) -> None:
        low = self.context.low.precision
        for info in self._infos():
            self.plan[info.node] = self._decision(info, low)
            self.plan.set_typing(info.node, info.typing)

    def _decision(self, info: _NodeInfo, low: Precision) -> Decision:
        if info.fixed is not None:
            return info.fixed
        is_source = (info.node.domain, info.node.op_type) in SOURCE_OPS
        if is_source:
            rule = "all float consumers are low precision" if info.low else "a consumer stays FP32"
            return Decision(low if info.low else Precision.FP32, Reason.CONSTANT, rule)
        if info.op_class == OpClass.BLOCK:
            return Decision(Precision.FP32, Reason.USER_BLOCK_OP if info.by_user else Reason.BLOCK, info.rule)
        if info.range_kept and not info.denied:
            return Decision(Precision.FP32, Reason.RANGE_PROPAGATED, info.range_kept)
        if info.low:
            if info.op_class == OpClass.ALLOW:
                return Decision(low, Reason.USER_ALLOW_OP if info.by_user else Reason.ALLOW, info.rule)
            reason = Reason.FOLLOW if info.op_class == OpClass.FOLLOW else Reason.PASS_THROUGH
            rule = (
                f"{info.rule}; extends a low-precision region without extra Casts"
                if info.extended
                else info.rule
            )
            return Decision(low, reason, rule)
        if info.denied:
            return Decision(Precision.FP32, Reason.BLOCK_PROPAGATED, info.rule)
        return Decision(Precision.FP32, Reason.NOT_BETWEEN_LOW, info.rule)


# The op types _mark_qdq_paths looks for, in any domain.
_QDQ_OP_TYPES = frozenset({"QuantizeLinear", "DequantizeLinear"})


def _carried_by(node: ir.Node, origin: Mapping[ir.Value, str]):
    """Whether input ``index`` of ``node`` may be beyond range."""
    return lambda index: node.inputs[index] is not None and node.inputs[index] in origin


def _reads_as_float(consumer: _NodeInfo, producer: ir.Node) -> bool:
    """Whether ``consumer`` reads ``producer``'s output through its converted inputs."""
    return any(
        consumer.node.inputs[index] is not None and consumer.node.inputs[index].producer() is producer
        for index in consumer.typing.float_inputs
    )


def _is_weight(value: ir.Value) -> bool:
    """A constant the conversion may convert (initializers that are also inputs can be fed)."""
    return ranges.constant_tensor(value) is not None and not value.is_graph_input()
