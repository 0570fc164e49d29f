"""The precision plan: one decision per node, with the reason and the rule that made it.

AssignPrecisionPass fills a ``PrecisionPlan`` (decisions, and the per-input dtypes and mask
clamps they imply); ApplyPrecisionPass applies it; StampDecisionsPass stamps each decision into
its node's ``metadata_props`` so a saved model can be audited later.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import onnx_ir as ir

from mpcompile.core.precision import LowPrecisionFormat, Precision

if TYPE_CHECKING:
    from mpcompile.core.ranges import ConstantRange, ConstantRanges

# Keys stamped into node.metadata_props and model.metadata_props.
PRECISION_KEY = "mpcompile.precision"
REASON_KEY = "mpcompile.reason"
RULE_KEY = "mpcompile.rule"
MODEL_VERSION_KEY = "mpcompile.version"
MODEL_PRECISION_KEY = "mpcompile.low_precision"
MODEL_TARGET_KEY = "mpcompile.target"
TRACE_KEY = "mpcompile.auto"  # model metadata key of the saved --auto search record


class Reason:
    """Stable reason codes (documented in docs/precision-policy.md)."""

    ALLOW = "allow"  # op is on the allow list
    FOLLOW = "follow"  # follow op between low-precision nodes
    PASS_THROUGH = "pass-through"  # data-movement op joined a low-precision region
    BLOCK = "block"  # op is on the block list
    BLOCK_PROPAGATED = "block-propagated"  # follow/pass-through op downstream of a blocked op
    NOT_BETWEEN_LOW = "not-between-low"  # follow/pass-through op not inside a low-precision region
    USER_BLOCK_OP = "user-block-op"
    USER_ALLOW_OP = "user-allow-op"
    USER_BLOCK_NODE = "user-block-node"
    RANGE = "range"  # a constant input is outside the low-precision range
    RANGE_PROPAGATED = "range-propagated"  # reads a value that a range-kept node may push out of range
    RANGE_MEASURED = "range-measured"  # plain convert's range run measured a value beyond range
    SCHEMA = "schema"  # the op's schema has no low-precision type at this opset
    UNKNOWN_OP = "unknown-op"  # no schema and no typing rule: kept as it is
    UNLISTED = "unlisted"  # op is in no policy list: kept FP32
    CONSTANT = "constant"  # a Constant node takes its consumers' precision
    UNTYPED = "untyped"  # input types could not be inferred
    CONTROL_FLOW = "control-flow"  # If/Loop/Scan: bodies are converted, the node's interface stays
    FUNCTION_CALL = "function-call"
    QDQ = "qdq"  # part of a quantized (Q/DQ) path
    NO_FLOAT = "no-float"  # touches no floating-point data
    CAST = "cast"  # a Cast inserted by mpcompile
    LOSS_SCALING = "loss-scaling"
    AUTO_RANGE = "auto:range"  # --auto: FP32 reference values or reduction depth unsafe in low precision
    AUTO_SENSITIVITY = "auto:sensitivity"  # --auto: kept FP32 to meet the accuracy tolerance
    UNKNOWN = "unknown"  # model converted elsewhere; reason not recorded

    @staticmethod
    def no_kernel(provider: str) -> str:
        return f"no-kernel:{provider}"


@dataclasses.dataclass(frozen=True)
class Decision:
    """Precision of one node, why, and which rule decided it."""

    precision: Precision
    reason: str
    rule: str = ""

    @property
    def is_low(self) -> bool:
        return self.precision.is_low


@dataclasses.dataclass(frozen=True)
class NodeTyping:
    """Which of a node's inputs/outputs change type when the node goes low precision."""

    float_inputs: tuple[int, ...]
    float_outputs: tuple[int, ...]
    low_allowed: bool  # the schema (or rule) admits the low-precision type
    type_variable: str = ""  # the primary type variable, for reports

    @property
    def touches_float(self) -> bool:
        return bool(self.float_inputs or self.float_outputs)


class PrecisionPlan:
    """The one hand-off from AssignPrecisionPass to ApplyPrecisionPass and StampDecisionsPass.

    Per node (by identity; iteration follows insertion order): its ``Decision`` and the typing
    the assignment saw (which inputs and outputs carry the float data, see
    ``NodeTyping``, made by ``mpcompile.policy.op_types``), and the dtype each of its inputs must have once the plan is
    applied. Per graph output: the dtype it has once the plan is applied; per main-graph input
    that changes type, its new dtype. Per constant: whether it is an attention mask
    to clamp (``mpcompile.policy.attention_mask``). The graphs the plan covers, and the range scans of
    constants (``ranges``, one scan per value per conversion).
    """

    def __init__(self, ranges: ConstantRanges | None = None) -> None:
        self.ranges = ranges
        self.clear()

    def clear(self) -> None:
        """Forget every decision and what applying them needs; the range scans are kept."""
        self._decisions: dict[ir.Node, Decision] = {}
        self._typings: dict[ir.Node, NodeTyping | None] = {}
        self._input_dtypes: dict[ir.Node, tuple[ir.DataType | None, ...]] = {}
        self.output_dtypes: dict[ir.Value, ir.DataType | None] = {}
        # Main-graph inputs whose dtype changes (keep_io_types): the low-precision type they take.
        self.input_dtypes: dict[ir.Value, ir.DataType] = {}
        self.clamped_masks: set[ir.Value] = set()
        self.graphs: list[tuple[ir.Graph, int]] = []  # (graph, ai.onnx opset), as all_graphs lists them

    # ---- decisions ----------------------------------------------------------------

    def __setitem__(self, node: ir.Node, decision: Decision) -> None:
        self._decisions[node] = decision

    def __getitem__(self, node: ir.Node) -> Decision:
        return self._decisions[node]

    def get(self, node: ir.Node) -> Decision | None:
        return self._decisions.get(node)

    def __contains__(self, node: ir.Node) -> bool:
        return node in self._decisions

    def __len__(self) -> int:
        return len(self._decisions)

    def items(self) -> Iterator[tuple[ir.Node, Decision]]:
        yield from self._decisions.items()

    def is_low(self, node: ir.Node) -> bool:
        decision = self._decisions.get(node)
        return decision is not None and decision.is_low

    # ---- what applying the plan needs ---------------------------------------------------

    def set_typing(self, node: ir.Node, typing: NodeTyping | None) -> None:
        self._typings[node] = typing

    def typing(self, node: ir.Node) -> NodeTyping | None:
        """The typing the assignment saw for ``node`` (None: not typed, or not planned)."""
        return self._typings.get(node)

    def require_input_dtypes(self, node: ir.Node, dtypes: Iterable[ir.DataType | None]) -> None:
        self._input_dtypes[node] = tuple(dtypes)

    def required_input_dtype(self, node: ir.Node, index: int) -> ir.DataType | None:
        """The dtype input ``index`` of ``node`` must have once the plan is applied (None: any)."""
        dtypes = self._input_dtypes.get(node, ())
        return dtypes[index] if index < len(dtypes) else None

    def constant_range(self, value: ir.Value, low: LowPrecisionFormat) -> ConstantRange | None:
        """``ranges.of(value)``; the cache is made on first use when the plan was built without one."""
        if self.ranges is None:
            from mpcompile.core.ranges import ConstantRanges

            self.ranges = ConstantRanges(low)
        return self.ranges.of(value)

    def close(self) -> None:
        """Release what the range scans hold open (their external-data file maps)."""
        if self.ranges is not None:
            self.ranges.close()


def stamp_decision(node: ir.Node, decision: Decision) -> None:
    """Record a decision in the node's metadata_props."""
    node.metadata_props[PRECISION_KEY] = decision.precision.value
    node.metadata_props[REASON_KEY] = decision.reason
    if decision.rule:
        node.metadata_props[RULE_KEY] = decision.rule
    else:
        node.metadata_props.pop(RULE_KEY, None)


_PRECISION_VALUES = frozenset(precision.value for precision in Precision)


def read_decision(node: ir.Node) -> Decision | None:
    """Read a decision stamped by mpcompile, or None for nodes it never saw and for stamps that
    name no precision (edited or corrupted metadata: the node's precision is then unknown)."""
    precision = node.metadata_props.get(PRECISION_KEY)
    if precision not in _PRECISION_VALUES:
        return None
    return Decision(
        Precision(precision),
        node.metadata_props.get(REASON_KEY, Reason.UNKNOWN),
        node.metadata_props.get(RULE_KEY, ""),
    )


# FP32 reasons that only follow from other nodes' decisions (or from the node computing no float):
# they never explain why a conversion left nothing in low precision.
_CONSEQUENCE_REASONS = frozenset(
    {
        Reason.NOT_BETWEEN_LOW,
        Reason.BLOCK_PROPAGATED,
        Reason.NO_FLOAT,
        Reason.CONSTANT,
        Reason.CAST,
        Reason.CONTROL_FLOW,
        Reason.FUNCTION_CALL,
    }
)


def nothing_low_note(plan: PrecisionPlan, low: str, target: str) -> str | None:
    """A note saying why no node of ``plan`` went ``low`` (None when some did, or none is FP32).

    Names the reason that kept the most FP32 nodes, leaving out reasons that only follow from
    other nodes (not-between-low, block-propagated, ...), and the op types it kept most.
    """
    kept: dict[str, list[str]] = {}
    fp32 = 0
    for node, decision in plan.items():
        if node.graph is None:
            continue
        if decision.is_low:
            return None
        if decision.precision is Precision.FP32:
            fp32 += 1
            kept.setdefault(decision.reason, []).append(node.op_type)
    if not fp32:
        return None
    causes = {reason: ops for reason, ops in kept.items() if reason not in _CONSEQUENCE_REASONS} or kept
    reason, ops = max(causes.items(), key=lambda item: (len(item[1]), item[0]))
    by_op = sorted(Counter(ops).items(), key=lambda item: (-item[1], item[0]))
    op_list = ", ".join(f"{op} {count}" for op, count in by_op[:4]) + (", ..." if len(by_op) > 4 else "")
    others = {r: len(o) for r, o in kept.items() if r != reason}
    rest = "; the others: " + ", ".join(f"{r} {n}" for r, n in sorted(others.items())) if others else ""
    return (
        f"no node is {low} (target {target}): {reason} keeps {len(ops)} of {fp32} FP32 nodes "
        f"({op_list}){rest}"
    )
