"""A precision policy: the default op classes plus the user's overrides."""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable

from mpcompile.errors import PolicyError
from mpcompile.policy import op_classes


class OpClass(str, enum.Enum):
    ALLOW = "allow"
    FOLLOW = "follow"
    PASS_THROUGH = "pass-through"
    BLOCK = "block"
    UNLISTED = "unlisted"


@dataclasses.dataclass(frozen=True)
class ClassifiedOp:
    op_class: OpClass
    rule: str  # e.g. "policy.allow[MatMul]" or "user.block_ops[Softmax]"
    by_user: bool = False


def _parse_op(spec: str) -> tuple[str, str]:
    """'MatMul' -> ('', 'MatMul'); 'com.microsoft::Attention' -> ('com.microsoft', 'Attention')."""
    spec = spec.strip()
    if "::" in spec:
        domain, op = spec.rsplit("::", 1)
        domain = "" if domain in ("ai.onnx", "") else domain
    else:
        domain, op = "", spec
    if not op or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", op):
        raise PolicyError(f"invalid op name {spec!r} (use OpType or domain::OpType)")
    return domain, op


def _compile_node_pattern(spec: str) -> re.Pattern[str]:
    try:
        return re.compile(spec)
    except re.error as exc:
        raise PolicyError(f"invalid --block-node pattern {spec!r}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class Policy:
    """Op classes and overrides that decide which nodes may run in low precision."""

    allow_ops: frozenset[tuple[str, str]] = frozenset()
    block_ops: frozenset[tuple[str, str]] = frozenset()
    block_nodes: tuple[str, ...] = ()  # exact names or regular expressions (full match)
    # BLOCK-list ops classed FOLLOW instead (rule auto.measured[...]): --auto measures them.
    measured_ops: frozenset[tuple[str, str]] = frozenset()
    # block_nodes compiled once (Python's pattern cache holds only 512).
    _node_patterns: tuple[tuple[str, re.Pattern[str]], ...] = dataclasses.field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        compiled = tuple((pattern, _compile_node_pattern(pattern)) for pattern in self.block_nodes)
        object.__setattr__(self, "_node_patterns", compiled)

    @classmethod
    def from_options(
        cls,
        allow_ops: Iterable[str] = (),
        block_ops: Iterable[str] = (),
        block_nodes: Iterable[str] = (),
        measured_ops: Iterable[str] = (),
    ) -> Policy:
        allow = frozenset(_parse_op(op) for op in allow_ops)
        block = frozenset(_parse_op(op) for op in block_ops)
        both = allow & block
        if both:
            names = ", ".join(sorted(op for _, op in both))
            raise PolicyError(f"ops both allowed and blocked: {names}")
        patterns = tuple(block_nodes)
        for pattern in patterns:  # refused here, before measured_ops are checked
            _compile_node_pattern(pattern)
        measured = frozenset(_parse_op(op) for op in measured_ops)
        unmeasurable = measured - op_classes.MEASURABLE
        if unmeasurable:
            names = ", ".join(sorted(op for _, op in unmeasurable))
            raise PolicyError(f"measured_ops: {names} not measurable (see op_classes.MEASURABLE)")
        return cls(allow_ops=allow, block_ops=block, block_nodes=patterns, measured_ops=measured)

    def merged(self, other: Policy) -> Policy:
        """This policy with ``other``'s overrides added (other wins on conflicts)."""
        return Policy(
            allow_ops=(self.allow_ops - other.block_ops) | other.allow_ops,
            block_ops=(self.block_ops - other.allow_ops) | other.block_ops,
            block_nodes=self.block_nodes + other.block_nodes,
            measured_ops=self.measured_ops | other.measured_ops,
        )

    def classify(self, domain: str, op_type: str, *, measured: bool = True) -> ClassifiedOp:
        """The class of an op under this policy, with the rule that decided it; ``measured``:
        whether ``measured_ops`` apply (they do only where --auto measured the values)."""
        key = ("" if domain == "ai.onnx" else domain, op_type)
        if key in self.block_ops:
            return ClassifiedOp(OpClass.BLOCK, f"user.block_ops[{op_type}]", by_user=True)
        if key in self.allow_ops:
            return ClassifiedOp(OpClass.ALLOW, f"user.allow_ops[{op_type}]", by_user=True)
        if key[0] in op_classes.BLOCKED_DOMAINS:
            return ClassifiedOp(OpClass.BLOCK, f"policy.blocked_domains[{key[0]}]")
        for op_class, members in (
            (OpClass.ALLOW, op_classes.ALLOW),
            (OpClass.FOLLOW, op_classes.FOLLOW),
            (OpClass.PASS_THROUGH, op_classes.PASS_THROUGH),
            (OpClass.BLOCK, op_classes.BLOCK),
        ):
            if key in members:
                if op_class == OpClass.BLOCK and measured and key in self.measured_ops:
                    return ClassifiedOp(OpClass.FOLLOW, f"auto.measured[{op_type}]")
                return ClassifiedOp(op_class, f"policy.{op_class.value}[{op_type}]")
        return ClassifiedOp(OpClass.UNLISTED, f"policy.unlisted[{op_type}]")

    def node_blocked(self, node_name: str) -> str | None:
        """The --block-node pattern that matches ``node_name``, if any."""
        for pattern, compiled in self._node_patterns:
            if pattern == node_name or compiled.fullmatch(node_name or ""):
                return pattern
        return None
