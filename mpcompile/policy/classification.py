"""The classification cascade: what the rules say of one node before the painter runs.

``NodeRules.verdict(node)`` returns a ``Verdict``: either a fixed ``Decision`` (precision,
reason code, rule) or, for a node the painter decides, its op class with the rule that gave it.
A non-match is data, as in onnxscript's rewriter: every fixed verdict carries its reason. In
order (the first rule that applies wins):

1. control-flow nodes (If/Loop/Scan) and calls of model-local functions: FP32, their bodies are
   converted separately (``control-flow``, ``function-call``); Q/DQ ops: FP32 (``qdq``);
2. the node's typing (``mpcompile.policy.op_types``): no schema and no typing rule -> FP32
   (``unknown-op``) if it touches float data, else ``no-float``; a float input or output whose
   type is unknown -> FP32 (``untyped``); no float data -> ``no-float``;
3. Constant/ConstantOfShape: pass-through, decided by the painter from their consumers;
4. the user's ``block_nodes`` patterns (``user-block-node``), then ``node_overrides`` by exact
   name (--auto's ``auto:range``/``auto:sensitivity``, stamped as given);
5. the op class (``Policy.classify``: user block/allow lists, blocked domains, the default
   allow/follow/pass-through/block lists of ``op_classes``, --auto's measured ops); an attribute
   that makes the op accumulate (``op_classes.BLOCK_WHEN_ATTRIBUTE``) blocks it unless the user
   classed it; an op on no list -> FP32 (``unlisted``);
6. for allow/follow/pass-through nodes, ``eligibility``: no low-precision type in the schema at
   this opset (``schema``), no kernel on the target (``no-kernel:<provider>``), or a constant
   float input beyond the low-precision range (``range``) unless it is an attention mask to
   clamp (``mpcompile.policy.attention_mask``).

Then the painter (``passes/assign_precision.py``) propagates: allow nodes seed low precision,
block propagates, follow/pass-through nodes between low-precision nodes go low; Casts from
integers may start low paths under --auto (``mpcompile.policy.integer_casts``). --auto's own
measurement rules, which choose its ``node_overrides``, are ``mpcompile.analysis.range_rules`` and
``mpcompile.auto.sensitivity``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping

import onnx_ir as ir

from mpcompile.core.plan import Decision, NodeTyping, Reason
from mpcompile.core.precision import LowPrecisionFormat, Precision
from mpcompile.core.ranges import ConstantRange
from mpcompile.irtools.graphs import node_opset
from mpcompile.policy import op_classes, op_types
from mpcompile.policy.attention_mask import mask_softmaxes
from mpcompile.policy.policy import OpClass, Policy
from mpcompile.targets.base import Target

SOURCE_OPS = frozenset({("", "Constant"), ("", "ConstantOfShape")})


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What the rules say of one node: a fixed ``decision``, or the ``op_class`` the painter
    starts from (with its ``rule``; ``by_user``: the user's allow/block lists classed it)."""

    typing: NodeTyping | None
    decision: Decision | None = None
    op_class: OpClass | None = None
    rule: str = ""
    by_user: bool = False

    @property
    def fixed(self) -> bool:
        return self.decision is not None


@dataclasses.dataclass
class NodeRules:
    """The rules for the nodes of one graph.

    ``constant_range(value)``: the range of a float constant (None for other values), scanned
    once per conversion (``PrecisionPlan.constant_range``). ``masks``: the attention masks found
    so far, with the Softmaxes each reaches (shared by the graphs of one conversion).
    ``measured``: --auto measured this graph's values (its measured ops apply; main graph only).
    """

    low: LowPrecisionFormat
    target: Target
    policy: Policy
    opset: int
    opset_imports: Mapping[str, int]
    constant_range: Callable[[ir.Value], ConstantRange | None]
    functions: Collection[tuple[str, str]] = ()
    node_overrides: Mapping[str, Decision] = dataclasses.field(default_factory=dict)
    measured: bool = True
    masks: dict[ir.Value, list[ir.Node]] = dataclasses.field(default_factory=dict)

    def verdict(self, node: ir.Node) -> Verdict:
        """Steps 1-6 of the cascade (see the module docstring)."""
        key = (node.domain, node.op_type)
        fp32 = Precision.FP32
        if key in op_classes.CONTROL_FLOW:
            return Verdict(None, Decision(fp32, Reason.CONTROL_FLOW, "subgraphs converted separately"))
        if key in self.functions:
            return Verdict(None, Decision(fp32, Reason.FUNCTION_CALL, "model-local function"))
        if key in op_classes.QDQ_OPS:
            return Verdict(None, Decision(fp32, Reason.QDQ, "quantization op"))
        typing = op_types.node_typing(node, node_opset(node, self.opset, self.opset_imports), self.low.dtype)
        if typing is None:
            if touches_float(node):
                rule = f"no schema for {node.domain or 'ai.onnx'}::{node.op_type}"
                return Verdict(None, Decision(fp32, Reason.UNKNOWN_OP, rule))
            return Verdict(None, Decision(Precision.NONE, Reason.NO_FLOAT))
        if any(
            value is not None and value.name and value.dtype is None
            for value in (*node.inputs, *node.outputs)
        ):
            return Verdict(typing, Decision(fp32, Reason.UNTYPED, "input or output type unknown"))
        if not typing.touches_float:
            return Verdict(typing, Decision(Precision.NONE, Reason.NO_FLOAT))
        if key in SOURCE_OPS:
            return Verdict(typing, op_class=OpClass.PASS_THROUGH)  # decided from its consumers
        pattern = self.policy.node_blocked(node.name or "")
        if pattern is not None:
            return Verdict(typing, Decision(fp32, Reason.USER_BLOCK_NODE, f"user.block_nodes[{pattern}]"))
        override = self.node_overrides.get(node.name) if node.name else None
        if override is not None:
            return Verdict(typing, override)
        classified = self.policy.classify(node.domain, node.op_type, measured=self.measured)
        op_class, rule = classified.op_class, classified.rule
        attribute = blocking_attribute(node)
        if attribute and not classified.by_user:
            op_class, rule = OpClass.BLOCK, f"policy.block_when_attribute[{node.op_type} {attribute}]"
        if op_class == OpClass.UNLISTED:
            return Verdict(
                typing, Decision(fp32, Reason.UNLISTED, classified.rule), op_class, rule, classified.by_user
            )
        decision = None if op_class == OpClass.BLOCK else self.eligibility(node, typing)
        return Verdict(typing, decision, op_class, rule, classified.by_user)

    def eligibility(self, node: ir.Node, typing: NodeTyping) -> Decision | None:
        """Why a candidate node cannot go low precision (schema, kernel, range), or None if it can."""
        fp32 = Precision.FP32
        if not typing.low_allowed:
            return Decision(
                fp32,
                Reason.SCHEMA,
                f"{node.op_type}-{self.opset} type {typing.type_variable} has no {self.low.precision.value}",
            )
        domain_opset = node_opset(node, self.opset, self.opset_imports)
        kernel = self.target.explain(node.domain, node.op_type, domain_opset, self.low.dtype)
        if not kernel.supported:
            provider = self.target.provider or self.target.name
            return Decision(fp32, Reason.no_kernel(provider), kernel.detail)
        for index in typing.float_inputs:
            value = node.inputs[index]
            measured = self.float_constant_range(value)
            if measured is not None and not measured.in_range and not self.is_clampable_mask(value, measured):
                return Decision(
                    fp32,
                    Reason.RANGE,
                    f"input {value.name!r} holds {measured.overflowing} value(s) beyond "
                    f"{self.low.precision.value} range (max |x| {measured.max_abs:.3g})",
                )
        return None

    def float_constant_range(self, value: ir.Value | None) -> ConstantRange | None:
        """The range of an FP32 constant; None for any other value."""
        if value is None or value.dtype != ir.DataType.FLOAT:
            return None
        return self.constant_range(value)

    def is_clampable_mask(self, value: ir.Value, measured: ConstantRange) -> bool:
        """Whether ``value`` is an attention mask (``attention_mask``); found ones are remembered."""
        if value in self.masks:
            return True
        softmaxes = mask_softmaxes(value, measured, self._follows_low)
        if softmaxes:
            self.masks[value] = softmaxes
        return bool(softmaxes)

    def _follows_low(self, node: ir.Node) -> bool:
        classified = self.policy.classify(node.domain, node.op_type, measured=self.measured)
        return classified.op_class in (OpClass.FOLLOW, OpClass.PASS_THROUGH)


def blocking_attribute(node: ir.Node) -> str | None:
    """``name=value`` when an attribute value makes this op accumulate (see BLOCK_WHEN_ATTRIBUTE)."""
    rule = op_classes.BLOCK_WHEN_ATTRIBUTE.get((node.domain, node.op_type))
    if rule is None:
        return None
    name, values = rule
    attr = node.attributes.get(name)
    value = attr.as_string() if attr is not None and attr.type == ir.AttributeType.STRING else None
    return f"{name}={value}" if value in values else None


def touches_float(node: ir.Node) -> bool:
    return any(
        value is not None and value.dtype is not None and value.dtype.is_floating_point()
        for value in (*node.inputs, *node.outputs)
    )
