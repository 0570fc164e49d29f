"""What would stop ONNX Runtime loading a conversion, settled before converting (``OrtLoadablePass``).

- Complex tensors: ONNX Runtime has no complex tensor type, so such a model (and its
  conversion) never loads: refused.
- ai.onnx ops that neither ONNX nor ONNX Runtime defines: refused. ORT's own default-domain ops
  (``SimplifiedLayerNormalization``, ``LayerNormalization`` below opset 17, ..., which its fusion
  tools emit) are accepted: ORT's schemas type them (``targets/ort_schemas.py``).
- Ops that neither ONNX, ONNX Runtime's kernels nor a model-local function define (a custom
  domain): ONNX Runtime loads the model only with that op's library registered, so the
  conversion is refused unless ``allow_custom_ops`` (the op then stays FP32, listed in a note).
- Two nodes with one name in a graph: ONNX Runtime refuses the model, but the names mean
  nothing to the computation, so the later ones are renamed (a note says which).
"""

from __future__ import annotations

import functools

import onnx
import onnx_ir as ir

from mpcompile import errors
from mpcompile.irtools.graphs import all_graphs
from mpcompile.irtools.names import NameAuthority
from mpcompile.passes.base import ConversionPass
from mpcompile.targets import ort_schemas
from mpcompile.targets.kernel_table import normalize_domain, shipped_document

COMPLEX_DTYPES = frozenset({ir.DataType.COMPLEX64, ir.DataType.COMPLEX128})
CUSTOM_OPS_FLAG = "--allow-custom-ops"
NOTE_NAMES_SHOWN = 3


class OrtLoadablePass(ConversionPass):
    """Requires a model ONNX Runtime can load (``refuse_unloadable``); makes node names unique."""

    def requires(self, model: ir.Model) -> None:
        refuse_unloadable(model, allow_custom_ops=self.context.allow_custom_ops)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        renamed = make_node_names_unique(model)
        if renamed is not None:
            self.context.notes.append(renamed)
        return ir.passes.PassResult(model, modified=renamed is not None)


def refuse_unloadable(model: ir.Model, *, allow_custom_ops: bool = False) -> None:
    """Raise ``InvalidModelError`` for complex tensors, ai.onnx ops ONNX does not define, and
    custom-domain ops unless allowed."""
    functions = {(function.domain, function.name) for function in model.functions.values()}
    known: dict[tuple[str, str, int], bool] = {}  # per (domain, op, opset): defined somewhere
    for graph, _ in all_graphs(model, every_function=True):
        for value in (*graph.inputs, *graph.outputs, *graph.initializers.values()):
            if value.dtype in COMPLEX_DTYPES:
                _refuse_complex(value.dtype, f"value {value.name!r}")
        for node in graph:
            for value in node.outputs:
                if value.dtype in COMPLEX_DTYPES:
                    _refuse_complex(value.dtype, f"value {value.name!r}")
            for attribute in node.attributes.values():
                dtype = _attribute_dtype(node, attribute)
                if dtype in COMPLEX_DTYPES:
                    _refuse_complex(dtype, f"attribute {attribute.name!r} of {_label(node)}")
            key = (node.domain, node.op_type, _domain_opset(model, node))
            if key not in known:
                known[key] = key[:2] in functions or is_known_op(node, key[2])
            if known[key]:
                continue
            label = _label(node)
            if node.domain in ("", "ai.onnx"):
                raise errors.InvalidModelError(
                    f"{label}: {node.op_type} is not an ONNX operator (nor one ONNX Runtime registers)"
                )
            if allow_custom_ops:
                continue
            raise errors.InvalidModelError(
                f"{label} is {node.domain}::{node.op_type}, an op that neither ONNX, ONNX Runtime "
                f"nor a local function defines, so ONNX Runtime cannot load the model without that op's "
                f"library; pass {CUSTOM_OPS_FLAG} to convert it anyway (the op stays FP32)"
            )


def _label(node: ir.Node) -> str:
    return f"node {node.name or node.op_type!r}"


def is_known_op(node: ir.Node, opset: int = 0) -> bool:
    """Whether ONNX has a schema for the node's (domain, op), ONNX Runtime a schema for it (its
    contrib and default-domain ops, at the domain's ``opset``; 0: any), or, outside ai.onnx,
    ONNX Runtime a kernel."""
    domain = "" if node.domain == "ai.onnx" else node.domain
    if onnx.defs.has(node.op_type, domain):
        return True
    if ort_schemas.ort_schema(domain, node.op_type, opset) is not None:
        return True
    return bool(domain) and (normalize_domain(domain), node.op_type) in _ort_ops()


def _domain_opset(model: ir.Model, node: ir.Node) -> int:
    domain = "" if node.domain == "ai.onnx" else node.domain
    return model.opset_imports.get(domain, model.opset_imports.get("ai.onnx", 0) if not domain else 0)


@functools.lru_cache(maxsize=1)
def _ort_ops() -> frozenset[tuple[str, str]]:
    """(domain, op) of every kernel in the shipped ONNX Runtime tables, any execution provider."""
    providers = shipped_document()["providers"].values()
    return frozenset((domain, op) for domains in providers for domain, ops in domains.items() for op in ops)


def _attribute_dtype(node: ir.Node, attribute: ir.Attr | ir.RefAttr) -> ir.DataType | None:
    """The dtype an attribute makes: a tensor value's, or a Cast's ``to``."""
    if not isinstance(attribute, ir.Attr):
        return None
    if attribute.type == ir.AttributeType.TENSOR:
        return attribute.value.dtype
    if attribute.name == "to" and node.op_type == "Cast" and attribute.type == ir.AttributeType.INT:
        try:
            return ir.DataType(attribute.value)
        except ValueError:  # not a dtype: the checker reports it
            return None
    return None


def _refuse_complex(dtype: ir.DataType | None, label: str) -> None:
    if dtype in COMPLEX_DTYPES:
        raise errors.InvalidModelError(
            f"{label} is {dtype.name.lower()}: ONNX Runtime has no complex tensors, so neither the model "
            "nor its conversion would load"
        )


def make_node_names_unique(model: ir.Model) -> str | None:
    """Rename, with the model's ``NameAuthority``, the second and later nodes sharing a name within
    one graph; returns a note, or None when there were none."""
    duplicates: list[ir.Node] = []
    for graph, _ in all_graphs(model, every_function=True):
        seen: set[str] = set()
        for node in graph:
            if node.name and node.name in seen:
                duplicates.append(node)
            seen.add(node.name or "")
    if not duplicates:
        return None
    names = NameAuthority(model)
    renamed = []
    for node in duplicates:
        old, node.name = node.name, names.unique(node.name)
        renamed.append(f"{old!r} -> {node.name!r}")
    shown = ", ".join(renamed[:NOTE_NAMES_SHOWN]) + (", ..." if len(renamed) > NOTE_NAMES_SHOWN else "")
    return (
        f"{len(renamed)} duplicate node name(s) made unique, since ONNX Runtime refuses two nodes with "
        f"one name: {shown}"
    )
