"""Which inputs and outputs of a node carry the float data that changes precision.

For ai.onnx ops this comes from the op schema at the model's opset: the node's
*primary type variable* is the type variable bound by its first float32 input (or,
for source ops, its first float32 output). Only inputs and outputs bound to that
variable are converted; others (Resize scales, LayerNormalization's stash type U,
BatchNormalization mean/var at opset >= 15, Clip bounds before opset 11, ...) keep
their own type. An op whose primary variable does not allow the low-precision type at
that opset never goes low.

Ops onnx has no schema for (contrib ops) use the explicit rules in ``CONTRIB_TYPING``, else
ONNX Runtime's own schema for them (``targets/ort_schemas.py``: the same primary-variable rule),
else the type parameters of ORT's kernel signatures.
"""

from __future__ import annotations

import dataclasses
import functools

import onnx
import onnx_ir as ir

from mpcompile.core.plan import NodeTyping
from mpcompile.irtools.graphs import node_opset
from mpcompile.policy import op_classes
from mpcompile.targets import ort_schemas

FLOAT = ir.DataType.FLOAT


@dataclasses.dataclass(frozen=True)
class ContribRule:
    """Typing rule for an op without an onnx schema: every float input/output converts
    except the listed indices, which keep their own type."""

    keep_inputs: frozenset[int] = frozenset()
    keep_outputs: frozenset[int] = frozenset()


_MS = op_classes.MICROSOFT
# Contrib ops mpcompile knows how to type. Indices listed keep FP32 (ORT's kernels bind
# them to a separate type parameter that is float-only: e.g. the U mean/inv-std outputs
# of the layer norms).
CONTRIB_TYPING: dict[tuple[str, str], ContribRule] = {
    (_MS, "Attention"): ContribRule(),
    (_MS, "MultiHeadAttention"): ContribRule(),
    (_MS, "GroupQueryAttention"): ContribRule(),
    (_MS, "PackedAttention"): ContribRule(),
    (_MS, "PackedMultiHeadAttention"): ContribRule(),
    (_MS, "DecoderMaskedMultiHeadAttention"): ContribRule(),
    (_MS, "FusedMatMul"): ContribRule(),
    (_MS, "FusedConv"): ContribRule(),
    (_MS, "BiasGelu"): ContribRule(),
    (_MS, "FastGelu"): ContribRule(),
    (_MS, "Gelu"): ContribRule(),
    (_MS, "QuickGelu"): ContribRule(),
    (_MS, "BiasAdd"): ContribRule(),
    (_MS, "BiasSplitGelu"): ContribRule(),
    (_MS, "BiasDropout"): ContribRule(),
    (_MS, "RotaryEmbedding"): ContribRule(),
    (_MS, "GroupNorm"): ContribRule(),
    (_MS, "SkipGroupNorm"): ContribRule(),
    (_MS, "LayerNormalization"): ContribRule(keep_outputs=frozenset({1, 2})),
    (_MS, "SimplifiedLayerNormalization"): ContribRule(keep_outputs=frozenset({1})),
    (_MS, "SkipLayerNormalization"): ContribRule(keep_outputs=frozenset({1, 2})),
    (_MS, "SkipSimplifiedLayerNormalization"): ContribRule(keep_outputs=frozenset({1, 2})),
}


# Type variables that the schema lets differ but that kernels and function bodies need equal:
# ai.onnx Attention (opset 23) binds V/past_value/present_value to T2 and Q/K to T1, yet its
# function body (what ORT runs when it has no kernel for the type) multiplies softmax(QK) [T1]
# by V [T2] in one MatMul. They change precision together. Likewise RMSNormalization's body
# computes Y (V) from X (T), and LinearAttention's inference types present_state (S) from T.
TIED_TYPE_VARIABLES: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {
    ("", "Attention"): {"T1": ("T2",)},
    ("", "RMSNormalization"): {"T": ("V",)},
    ("", "LinearAttention"): {"T": ("S",)},
    ("", "OptionalGetElement"): {"O": ("V",)},
    # ORT's default-domain layer norms (its fusions emit them) bind X to T, scale/bias/Y to V;
    # ORT's kernels register T == V (plus float X with a low-precision scale), never X low alone.
    ("", "SimplifiedLayerNormalization"): {"T": ("V",)},
    ("", "LayerNormalization"): {"T": ("V",)},
}


def _type_string(dtype: ir.DataType) -> str:
    return f"tensor({onnx.helper.tensor_dtype_to_string(dtype.value).replace('TensorProto.', '').lower()})"


@functools.lru_cache(maxsize=4096)
def get_schema(domain: str, op_type: str, opset: int) -> onnx.defs.OpSchema | None:
    """The onnx schema in force for ``domain::op_type`` at ``opset``, or None."""
    try:
        return onnx.defs.get_schema(op_type, opset, domain)
    except onnx.defs.SchemaError:
        return None


def _formal_type(params, index: int) -> str | None:
    """The type string input/output ``index`` binds to, for onnx's and ORT's schemas alike."""
    if index < len(params):
        return params[index].type_str
    if params and _is_variadic(params[-1]):
        return params[-1].type_str
    return None


def _is_variadic(param) -> bool:
    return param.option in (onnx.defs.OpSchema.FormalParameterOption.Variadic, ort_schemas.VARIADIC)


def _schema_for_typing(node: ir.Node, opset: int):
    """onnx's schema for the node at ``opset``, else ORT's (its contrib ops), else None."""
    schema = get_schema(node.domain, node.op_type, opset)
    if schema is not None:
        return schema
    default_domain = node.domain in ("", "ai.onnx")
    return ort_schemas.ort_schema(node.domain, node.op_type, opset if default_domain else 0)


def type_variable_conflict(node: ir.Node, opset: int, opset_imports: dict[str, int]) -> str | None:
    """Why the node's inputs/outputs bound to one schema type variable do not share a dtype, or None.

    Whether there is a conflict depends only on the op, its opset and the dtypes of the inputs
    and outputs: signatures found free of one are remembered (a deep model repeats a few)."""
    version = node_opset(node, opset, opset_imports)
    key = (
        node.domain,
        node.op_type,
        version,
        tuple(None if value is None else value.dtype for value in node.inputs),
        tuple(None if value is None else value.dtype for value in node.outputs),
    )
    if key in _CONFLICT_FREE:
        return None
    conflict = _type_variable_conflict(node, version)
    if conflict is None:
        if len(_CONFLICT_FREE) >= _TYPINGS_LIMIT:
            _CONFLICT_FREE.clear()
        _CONFLICT_FREE.add(key)
    return conflict


_CONFLICT_FREE: set[tuple] = set()


def _type_variable_conflict(node: ir.Node, version: int) -> str | None:
    schema = get_schema(node.domain, node.op_type, version)
    if schema is None:
        return None
    constraints = {c.type_param_str for c in schema.type_constraints}
    bound: dict[str, ir.DataType] = {}
    for params, values in ((schema.inputs, node.inputs), (schema.outputs, node.outputs)):
        for index, value in enumerate(values):
            formal = _formal_type(params, index)
            if value is None or value.dtype is None or formal not in constraints:
                continue
            if (
                params
                and index >= len(params) - 1
                and params[-1].option == params[-1].option.Variadic
                and not params[-1].is_homogeneous
            ):
                continue
            previous = bound.setdefault(formal, value.dtype)
            if previous != value.dtype:
                return f"node {node.name!r} ({node.op_type}): type {formal} bound to both {previous.name} and {value.dtype.name}"
    return None


def _dtype(value: ir.Value | None) -> ir.DataType | None:
    """The element type of a tensor value; None for sequences and optionals (never cast)."""
    if value is None or (value.type is not None and not isinstance(value.type, ir.TensorType)):
        return None
    return value.dtype


def _holds_float_container(node: ir.Node) -> bool:
    """A float sequence/optional in or out: its element type follows the tensors, and a
    sequence cannot be cast, so such nodes keep FP32 (SplitToSequence, SequenceConstruct,
    Optional*, Identity on a sequence, ...)."""
    return any(
        value is not None
        and value.type is not None
        and not isinstance(value.type, ir.TensorType)
        and value.dtype == FLOAT
        for value in (*node.inputs, *node.outputs)
    )


# Ops whose schema admits float16 but whose meaning changes with it: BitCast reinterprets
# bits, so a float32 -> int32 BitCast cannot take float16 input.
NEVER_LOW: frozenset[tuple[str, str]] = frozenset({("", "BitCast")})


def node_typing(node: ir.Node, opset: int, low_dtype: ir.DataType) -> NodeTyping | None:
    """The typing of ``node`` for a conversion to ``low_dtype``; None if the op is unknown."""
    return typing_of(node, typing_key(node, opset, low_dtype))


def typing_of(node: ir.Node, key: tuple) -> NodeTyping | None:
    """``node_typing`` for the ``key`` that ``typing_key`` gave for ``node``."""
    typing = _TYPINGS.get(key, _MISSING)
    if typing is _MISSING:
        opset, low_dtype = key[2], key[3]
        typing = _node_typing(node, opset, low_dtype)
        never_low = (node.domain, node.op_type) in NEVER_LOW or _holds_float_container(node)
        if typing is not None and typing.low_allowed and never_low:
            typing = dataclasses.replace(typing, low_allowed=False)
        if len(_TYPINGS) >= _TYPINGS_LIMIT:
            _TYPINGS.clear()
        _TYPINGS[key] = typing
    return typing


# A typing depends only on what typing_key lists, so nodes of one signature (every layer of
# a deep model) share one schema lookup: per-node schema work was a third of the assignment.
_TYPINGS: dict[tuple, NodeTyping | None] = {}
_TYPINGS_LIMIT = 65536
_MISSING = object()


def _value_signature(value: ir.Value | None) -> tuple | None:
    if value is None:
        return None
    value_type = value.type
    return (value.dtype, value_type is None or isinstance(value_type, ir.TensorType))


def typing_key(node: ir.Node, opset: int, low_dtype: ir.DataType) -> tuple:
    """All a node's typing depends on: (domain, op_type, opset, low_dtype, per input and per
    output its dtype and whether it is a tensor, Cast's ``to``, a float tensor attribute)."""
    attributes = node.attributes
    cast_to = None
    if node.op_type == "Cast" and "to" in attributes:
        cast_to = attributes["to"].as_int()
    float_tensor_attribute = bool(attributes) and _has_float_tensor_attribute(node)
    return (
        node.domain,
        node.op_type,
        opset,
        low_dtype,
        tuple(_value_signature(value) for value in node.inputs),
        tuple(_value_signature(value) for value in node.outputs),
        cast_to,
        float_tensor_attribute,
    )


def _node_typing(node: ir.Node, opset: int, low_dtype: ir.DataType) -> NodeTyping | None:
    key = (node.domain, node.op_type)
    if key in CONTRIB_TYPING:
        return _contrib_typing(node, CONTRIB_TYPING[key])
    schema = _schema_for_typing(node, opset)
    if schema is None:
        return kernel_signature_typing(node)
    if node.op_type == "Cast" and node.domain == "":
        return _cast_typing(node)
    constraints = _constraints(schema)
    shape_only = op_classes.SHAPE_ONLY_INPUTS.get(key, frozenset())

    primary: str | None = None
    for index, value in enumerate(node.inputs):
        if index in shape_only or _dtype(value) != FLOAT:
            continue
        formal = _formal_type(schema.inputs, index)
        if formal in constraints:
            primary = formal
            break
    if primary is None:
        for index, value in enumerate(node.outputs):
            formal = _formal_type(schema.outputs, index)
            if _dtype(value) == FLOAT and formal in constraints:
                primary = formal
                break
    if primary is None:
        return NodeTyping((), (), low_allowed=False)
    converting = {primary, *TIED_TYPE_VARIABLES.get(key, {}).get(primary, ())} & set(constraints)
    float_inputs = tuple(
        index
        for index, value in enumerate(node.inputs)
        if index not in shape_only
        and _dtype(value) == FLOAT
        and _formal_type(schema.inputs, index) in converting
    )
    float_outputs = tuple(
        index
        for index, value in enumerate(node.outputs)
        if _formal_type(schema.outputs, index) == primary
        or (_formal_type(schema.outputs, index) in converting and _dtype(value) in (FLOAT, None))
    )
    return NodeTyping(
        float_inputs,
        float_outputs,
        low_allowed=all(_type_string(low_dtype) in constraints[name] for name in converting)
        and not _has_float_tensor_attribute(node),
        type_variable=primary,
    )


def _constraints(schema) -> dict[str, set[str]]:
    """Type variable -> allowed type strings, from an onnx ``OpSchema`` or an ``OrtSchema``."""
    if isinstance(schema, ort_schemas.OrtSchema):
        return {name: set(types) for name, types in schema.type_constraints.items()}
    return {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}


def _has_float_tensor_attribute(node: ir.Node) -> bool:
    """Tensor attributes typed like the data (ai.onnx.ml TreeEnsemble's splits and weights) would
    have to be rewritten with it; only Constant/ConstantOfShape values are, so others stay FP32."""
    if node.domain == "" and node.op_type in ("Constant", "ConstantOfShape"):
        return False
    return any(
        attr.type == ir.AttributeType.TENSOR and attr.as_tensor().dtype == FLOAT
        for attr in node.attributes.values()
        if isinstance(attr, ir.Attr)
    )


def _cast_typing(node: ir.Node) -> NodeTyping:
    to_attr = node.attributes.get("to")
    to = ir.DataType(to_attr.as_int()) if to_attr is not None else None
    float_inputs = (0,) if node.inputs and _dtype(node.inputs[0]) == FLOAT else ()
    float_outputs = (0,) if to == FLOAT else ()
    return NodeTyping(float_inputs, float_outputs, low_allowed=True, type_variable="to")


def _contrib_typing(node: ir.Node, rule: ContribRule) -> NodeTyping:
    float_inputs = tuple(
        index
        for index, value in enumerate(node.inputs)
        if index not in rule.keep_inputs and _dtype(value) == FLOAT
    )
    float_outputs = tuple(
        index
        for index, value in enumerate(node.outputs)
        if index not in rule.keep_outputs and _dtype(value) in (FLOAT, None)
    )
    return NodeTyping(float_inputs, float_outputs, low_allowed=True, type_variable="T")


def kernel_signature_typing(node: ir.Node) -> NodeTyping | None:
    """Typing of an op onnx has no schema for, from ONNX Runtime's kernel signatures.

    ORT's operator-kernel tables name each input's and output's type parameter (``*in*
    X:**T**``); the parameter of the first float32 input is the primary one, as for schemas.
    None when ORT registers no such op either.
    """
    from mpcompile.targets.kernel_table import op_signatures

    signatures = op_signatures(node.domain, node.op_type)
    if not signatures:
        return None
    signature = signatures[0]

    def formal(params, index: int) -> str | None:
        if index < len(params):
            return params[index].type
        return params[-1].type if params and params[-1].variadic else None

    primary = next(
        (
            formal(signature.inputs, index)
            for index, value in enumerate(node.inputs)
            if _dtype(value) == FLOAT
            and formal(signature.inputs, index)
            and not formal(signature.inputs, index).startswith("tensor(")
        ),
        None,
    )
    if primary is None:
        return NodeTyping((), (), low_allowed=False)
    float_inputs = tuple(
        index
        for index, value in enumerate(node.inputs)
        if _dtype(value) == FLOAT and formal(signature.inputs, index) == primary
    )
    float_outputs = tuple(
        index for index, _ in enumerate(node.outputs) if formal(signature.outputs, index) == primary
    )
    return NodeTyping(float_inputs, float_outputs, low_allowed=True, type_variable=primary)


def contrib_output_dtypes(node: ir.Node, opset: int) -> list[ir.DataType | None]:
    """For an op without an onnx schema: each output's dtype from ORT's schema of the op (a type
    variable bound by an input, a literal type, or a variable allowing one type), else from ORT's
    kernel signatures; None where neither tells."""
    schema = _schema_for_typing(node, opset)
    if not isinstance(schema, ort_schemas.OrtSchema):
        return output_dtypes_from_inputs(node)
    bound: dict[str, ir.DataType] = {}
    for index, value in enumerate(node.inputs):
        formal = schema.formal(index)
        if formal is not None and value is not None and value.dtype is not None:
            bound.setdefault(formal.type_str, value.dtype)
    result: list[ir.DataType | None] = []
    for index in range(len(node.outputs)):
        formal = schema.formal(index, output=True)
        allowed = schema.type_constraints.get(formal.type_str, ()) if formal is not None else ()
        if formal is None:
            result.append(None)
        elif formal.type_str.startswith("tensor("):
            result.append(_literal_dtype(formal.type_str))
        elif formal.type_str in bound:
            result.append(bound[formal.type_str])
        else:
            result.append(_literal_dtype(allowed[0]) if len(allowed) == 1 else None)
    return result


def schema_type_errors(node: ir.Node, opset: int) -> list[str]:
    """How the node's typed inputs and outputs break ORT's schema for it (a type a variable does
    not allow, one variable bound to two types, a literal type not met); empty when none do or
    ORT has no schema for the op."""
    default_domain = node.domain in ("", "ai.onnx")
    schema = ort_schemas.ort_schema(node.domain, node.op_type, opset if default_domain else 0)
    if schema is None:
        return []
    problems: list[str] = []
    bound: dict[str, ir.DataType] = {}
    for output, values in ((False, node.inputs), (True, node.outputs)):
        for index, value in enumerate(values):
            formal = schema.formal(index, output=output)
            dtype = _dtype(value)
            if formal is None or dtype is None or (formal.variadic and not formal.homogeneous):
                continue
            where = f"{'output' if output else 'input'} {index} ({formal.name})"
            allowed = (
                (formal.type_str,)
                if formal.type_str.startswith("tensor(")
                else schema.type_constraints.get(formal.type_str, ())
            )
            if allowed and _type_string(dtype) not in allowed:
                problems.append(f"{where} is {dtype.name}, not one of {', '.join(allowed)}")
                continue
            previous = bound.setdefault(formal.type_str, dtype)
            if previous != dtype:
                problems.append(
                    f"{where}: type {formal.type_str} bound to both {previous.name} and {dtype.name}"
                )
    return problems


def output_dtypes_from_inputs(node: ir.Node) -> list[ir.DataType | None]:
    """For an op without an onnx schema: each output's dtype, taken from an input bound to the
    same type parameter in ORT's kernel signature (None where that cannot tell)."""
    from mpcompile.targets.kernel_table import op_signatures

    signatures = op_signatures(node.domain, node.op_type)
    if not signatures:
        return [None] * len(node.outputs)
    signature = signatures[0]
    by_parameter: dict[str, ir.DataType] = {}
    for param, value in zip(signature.inputs, node.inputs, strict=False):
        if value is not None and value.dtype is not None:
            by_parameter.setdefault(param.type, value.dtype)
    result: list[ir.DataType | None] = []
    for index in range(len(node.outputs)):
        param = signature.outputs[index].type if index < len(signature.outputs) else None
        if param is None:
            result.append(None)
        elif param.startswith("tensor("):
            result.append(_literal_dtype(param))
        else:
            result.append(by_parameter.get(param))
    return result


def _literal_dtype(type_string: str) -> ir.DataType | None:
    name = type_string.removeprefix("tensor(").removesuffix(")").upper()
    aliases = {"FLOAT32": "FLOAT", "FLOAT64": "DOUBLE"}
    return getattr(ir.DataType, aliases.get(name, name), None)
