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
import functools
from collections.abc import Callable, Collection, Mapping

import onnx_ir as ir

from mpcompile.core.plan import Decision, NodeTyping, Reason
from mpcompile.core.precision import LowPrecisionFormat, Precision
from mpcompile.core.ranges import ConstantRange
from mpcompile.irtools.graphs import node_opset
from mpcompile.policy import op_classes, op_types
from mpcompile.policy.attention_mask import mask_softmaxes
from mpcompile.policy.policy import ClassifiedOp, OpClass, Policy
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


@dataclasses.dataclass(frozen=True)
class _SignatureRules:
    """What the cascade says of every node of one signature (``op_types.typing_key``).

    ``final``: the verdict of every such node (steps 1-2, source ops); else the node's ``typing``,
    its op class as the policy gives it (``classified``), whether an attribute may block it
    (``attribute_rule``), and the schema or kernel decision keeping it FP32 (``not_eligible``).
    The verdicts that need nothing of the node itself are made once, here.
    """

    final: Verdict | None
    typing: NodeTyping | None = None
    classified: ClassifiedOp | None = None
    attribute_rule: bool = False
    not_eligible: Decision | None = None

    @property
    def classified_fields(self) -> tuple[OpClass, str, bool]:
        return self.classified.op_class, self.classified.rule, self.classified.by_user

    @functools.cached_property
    def unlisted(self) -> Verdict:
        decision = Decision(Precision.FP32, Reason.UNLISTED, self.classified.rule)
        return Verdict(self.typing, decision, *self.classified_fields)

    @functools.cached_property
    def blocked(self) -> Verdict:
        return Verdict(self.typing, None, *self.classified_fields)

    @functools.cached_property
    def eligible(self) -> Verdict:
        return Verdict(self.typing, self.not_eligible, *self.classified_fields)


# Stands for the rules of a signature with inputs or outputs of unknown dtype (see NodeRules.verdict).
_SPLIT_BY_NAMES = _SignatureRules(None)


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
    _signature_rules: dict[tuple, _SignatureRules] = dataclasses.field(default_factory=dict, repr=False)

    def verdict(self, node: ir.Node) -> Verdict:
        """Steps 1-6 of the cascade (see the module docstring).

        What depends only on the node's signature (``op_types.typing_key``: op, domain, opset,
        the dtypes of its inputs and outputs, Cast's ``to``) is worked out once per signature
        (``_SignatureRules``); per node remain the rules that read its name (block_nodes,
        node_overrides), an attribute that makes the op accumulate, and its constant inputs' ranges.
        """
        typing_key = op_types.typing_key(
            node, node_opset(node, self.opset, self.opset_imports), self.low.dtype
        )
        rules = self._signature_rules.get(typing_key)
        if rules is None:
            # The untyped rule reads whether the values of unknown dtype have names: a signature
            # with such values is split by that (_SPLIT_BY_NAMES).
            rules = (
                _SPLIT_BY_NAMES if _has_untyped(typing_key) else self._rules_of_signature(node, typing_key)
            )
            self._signature_rules[typing_key] = rules
        if rules is _SPLIT_BY_NAMES:
            key = (typing_key, _untyped(node))
            rules = self._signature_rules.get(key)
            if rules is None:
                rules = self._signature_rules[key] = self._rules_of_signature(node, typing_key)
        if rules.final is not None:
            return rules.final
        typing = rules.typing
        pattern = self.policy.node_blocked(node.name or "")
        if pattern is not None:
            return Verdict(
                typing, Decision(Precision.FP32, Reason.USER_BLOCK_NODE, f"user.block_nodes[{pattern}]")
            )
        override = self.node_overrides.get(node.name) if node.name else None
        if override is not None:
            return Verdict(typing, override)
        classified = rules.classified
        if rules.attribute_rule:
            attribute = blocking_attribute(node)
            if attribute:
                rule = f"policy.block_when_attribute[{node.op_type} {attribute}]"
                return Verdict(typing, None, OpClass.BLOCK, rule, classified.by_user)
        if classified.op_class == OpClass.UNLISTED:
            return rules.unlisted
        if classified.op_class == OpClass.BLOCK:
            return rules.blocked
        decision = rules.not_eligible or self._range_decision(node, typing)
        return rules.eligible if decision is None else Verdict(typing, decision, *rules.classified_fields)

    def _rules_of_signature(self, node: ir.Node, typing_key: tuple) -> _SignatureRules:
        """Steps 1-2 and what steps 5-6 decide from the signature alone, for ``node``'s signature."""
        op = (node.domain, node.op_type)
        fp32 = Precision.FP32
        if op in op_classes.CONTROL_FLOW:
            return _SignatureRules(
                Verdict(None, Decision(fp32, Reason.CONTROL_FLOW, "subgraphs converted separately"))
            )
        if op in self.functions:
            return _SignatureRules(
                Verdict(None, Decision(fp32, Reason.FUNCTION_CALL, "model-local function"))
            )
        if op in op_classes.QDQ_OPS:
            return _SignatureRules(Verdict(None, Decision(fp32, Reason.QDQ, "quantization op")))
        typing = op_types.typing_of(node, typing_key)
        if typing is None:
            if touches_float(node):
                rule = f"no schema for {node.domain or 'ai.onnx'}::{node.op_type}"
                return _SignatureRules(Verdict(None, Decision(fp32, Reason.UNKNOWN_OP, rule)))
            return _SignatureRules(Verdict(None, Decision(Precision.NONE, Reason.NO_FLOAT)))
        if _untyped(node):
            return _SignatureRules(
                Verdict(typing, Decision(fp32, Reason.UNTYPED, "input or output type unknown"))
            )
        if not typing.touches_float:
            return _SignatureRules(Verdict(typing, Decision(Precision.NONE, Reason.NO_FLOAT)))
        if op in SOURCE_OPS:
            # decided from its consumers
            return _SignatureRules(Verdict(typing, op_class=OpClass.PASS_THROUGH))
        classified = self.policy.classify(node.domain, node.op_type, measured=self.measured)
        attribute_rule = op in op_classes.BLOCK_WHEN_ATTRIBUTE and not classified.by_user
        not_eligible = None
        if classified.op_class not in (OpClass.UNLISTED, OpClass.BLOCK):
            not_eligible = self._schema_or_kernel_decision(node, typing)
        return _SignatureRules(None, typing, classified, attribute_rule, not_eligible)

    def eligibility(self, node: ir.Node, typing: NodeTyping) -> Decision | None:
        """Why a candidate node cannot go low precision (schema, kernel, range), or None if it can."""
        return self._schema_or_kernel_decision(node, typing) or self._range_decision(node, typing)

    def _schema_or_kernel_decision(self, node: ir.Node, typing: NodeTyping) -> Decision | None:
        """The schema and kernel rules of ``eligibility``: they read only the node's signature."""
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
        return None

    def _range_decision(self, node: ir.Node, typing: NodeTyping) -> Decision | None:
        """The range rule of ``eligibility``: a constant float input beyond the low-precision
        range keeps the node FP32, unless it is an attention mask to clamp."""
        for index in typing.float_inputs:
            value = node.inputs[index]
            measured = self.float_constant_range(value)
            if measured is not None and not measured.in_range and not self.is_clampable_mask(value, measured):
                return Decision(
                    Precision.FP32,
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


def _has_untyped(key: tuple) -> bool:
    """Whether a ``typing_key`` lists an input or output of unknown dtype."""
    return any(
        signature is not None and signature[0] is None for values in (key[4], key[5]) for signature in values
    )


def _untyped(node: ir.Node) -> bool:
    """A named input or output of unknown dtype (the ``untyped`` rule)."""
    return any(
        value is not None and value.name and value.dtype is None for value in (*node.inputs, *node.outputs)
    )
