"""The precision plan: one decision per node, with the reason and the rule that made it.

Analysis passes fill a ``PrecisionPlan``; rewrite passes read it; the plan is also
stamped into each node's ``metadata_props`` so a saved model can be audited later.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import onnx_ir as ir

from mpcompile.core.precision import Precision

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


class PrecisionPlan:
    """Maps nodes (by identity) to decisions; iteration follows insertion order."""

    def __init__(self) -> None:
        self._decisions: dict[int, tuple[ir.Node, Decision]] = {}

    def __setitem__(self, node: ir.Node, decision: Decision) -> None:
        self._decisions[id(node)] = (node, decision)

    def __getitem__(self, node: ir.Node) -> Decision:
        return self._decisions[id(node)][1]

    def get(self, node: ir.Node) -> Decision | None:
        entry = self._decisions.get(id(node))
        return entry[1] if entry else None

    def __contains__(self, node: ir.Node) -> bool:
        return id(node) in self._decisions

    def __len__(self) -> int:
        return len(self._decisions)

    def items(self) -> Iterator[tuple[ir.Node, Decision]]:
        yield from self._decisions.values()

    def is_low(self, node: ir.Node) -> bool:
        decision = self.get(node)
        return decision is not None and decision.is_low


def stamp_decision(node: ir.Node, decision: Decision) -> None:
    """Record a decision in the node's metadata_props."""
    node.metadata_props[PRECISION_KEY] = decision.precision.value
    node.metadata_props[REASON_KEY] = decision.reason
    if decision.rule:
        node.metadata_props[RULE_KEY] = decision.rule
    else:
        node.metadata_props.pop(RULE_KEY, None)


def read_decision(node: ir.Node) -> Decision | None:
    """Read a decision stamped by mpcompile, or None for nodes it never saw."""
    precision = node.metadata_props.get(PRECISION_KEY)
    if precision is None:
        return None
    return Decision(
        Precision(precision),
        node.metadata_props.get(REASON_KEY, Reason.UNKNOWN),
        node.metadata_props.get(RULE_KEY, ""),
    )
