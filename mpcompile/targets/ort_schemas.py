"""ONNX Runtime's own op schemas for the ops onnx does not define (contrib and ORT-internal ops).

ORT registers schemas for its contrib ops (``com.microsoft``: Attention, SkipLayerNormalization,
...) and for a few ops in the default domain that onnx does not define
(``SimplifiedLayerNormalization``, ``LayerNormalization`` below opset 17, ...). Its fusion tools
(the transformers optimizer, optimum, Olive) emit them, and ORT loads them. onnx's checker and
shape inference know none of them; these schemas say how each is typed.

Where onnxruntime is installed, its registry
(``onnxruntime.capi.onnxruntime_pybind11_state.get_all_operator_schema()``, private) is read
live; without it (or without that function), the table ``tools/gen_ort_schemas.py`` generated
into ``mpcompile/data/ort_schemas.json`` is used.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
from collections.abc import Iterable, Mapping

import onnx

SHIPPED_SCHEMAS_RESOURCE = "ort_schemas.json"
FORMAT_VERSION = 1
SINGLE, OPTIONAL, VARIADIC = "single", "optional", "variadic"


@dataclasses.dataclass(frozen=True)
class FormalParameter:
    """One input or output of a schema: its name, type (a type variable or ``tensor(...)``),
    option (single, optional or variadic) and, for variadic ones, whether all share one type."""

    name: str
    type_str: str
    option: str = SINGLE
    homogeneous: bool = True

    @property
    def variadic(self) -> bool:
        return self.option == VARIADIC


@dataclasses.dataclass(frozen=True)
class OrtSchema:
    """ORT's schema of one (domain, op) from ``since_version`` on."""

    domain: str  # "" for the default domain
    name: str
    since_version: int
    inputs: tuple[FormalParameter, ...]
    outputs: tuple[FormalParameter, ...]
    type_constraints: Mapping[str, tuple[str, ...]]  # type variable -> allowed "tensor(...)" types

    def formal(self, index: int, *, output: bool = False) -> FormalParameter | None:
        """The formal parameter that input (or output) ``index`` binds to, or None past the end."""
        params = self.outputs if output else self.inputs
        if index < len(params):
            return params[index]
        return params[-1] if params and params[-1].variadic else None

    def to_json(self) -> dict:
        return {
            "since": self.since_version,
            "inputs": [_param_json(p) for p in self.inputs],
            "outputs": [_param_json(p) for p in self.outputs],
            "constraints": {name: list(types) for name, types in sorted(self.type_constraints.items())},
        }


def _param_json(param: FormalParameter) -> list:
    entry: list = [param.name, param.type_str, param.option]
    return entry if param.homogeneous else [*entry, False]


def _param_from_json(entry: list) -> FormalParameter:
    return FormalParameter(entry[0], entry[1], entry[2], len(entry) < 4 or bool(entry[3]))


def onnx_defines(domain: str, name: str, since_version: int) -> bool:
    """Whether onnx itself has this schema version (then onnx's checker and inference know it)."""
    try:
        return onnx.defs.get_schema(name, since_version, domain).since_version == since_version
    except onnx.defs.SchemaError:
        return False


def live_schemas() -> list[OrtSchema] | None:
    """The installed onnxruntime's schemas that onnx does not define; None without onnxruntime
    or without its (private) schema registry function."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as state
    except ImportError:
        return None
    get_schemas = getattr(state, "get_all_operator_schema", None)
    if get_schemas is None:
        return None
    found = []
    for schema in get_schemas():
        domain = "" if schema.domain == "ai.onnx" else schema.domain
        if onnx_defines(domain, schema.name, schema.since_version):
            continue
        found.append(
            OrtSchema(
                domain,
                schema.name,
                int(schema.since_version),
                tuple(_live_param(p) for p in schema.inputs),
                tuple(_live_param(p) for p in schema.outputs),
                {c.type_param_str: tuple(c.allowed_type_strs) for c in schema.type_constraints},
            )
        )
    return found


def _live_param(param) -> FormalParameter:
    option = {0: SINGLE, 1: OPTIONAL, 2: VARIADIC}.get(int(param.option), SINGLE)
    return FormalParameter(param.name, param.typeStr, option, bool(param.isHomogeneous))


def live_runtime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def to_document(schemas: Iterable[OrtSchema], ort_version: str) -> dict:
    """The JSON document ``tools/gen_ort_schemas.py`` writes: schemas by domain and op, oldest first."""
    by_op: dict[str, dict[str, list[dict]]] = {}
    for schema in sorted(schemas, key=lambda s: (s.domain, s.name, s.since_version)):
        by_op.setdefault(schema.domain, {}).setdefault(schema.name, []).append(schema.to_json())
    return {
        "format": FORMAT_VERSION,
        "source": {"ort_version": ort_version, "onnx_version": onnx.__version__},
        "schemas": by_op,
    }


@functools.lru_cache(maxsize=1)
def shipped_document() -> dict:
    """The parsed ``ort_schemas.json`` package data."""
    text = (
        importlib.resources.files("mpcompile").joinpath("data", SHIPPED_SCHEMAS_RESOURCE).read_text("ascii")
    )
    return json.loads(text)


def _from_document(document: dict) -> list[OrtSchema]:
    return [
        OrtSchema(
            domain,
            name,
            entry["since"],
            tuple(_param_from_json(p) for p in entry["inputs"]),
            tuple(_param_from_json(p) for p in entry["outputs"]),
            {key: tuple(types) for key, types in entry["constraints"].items()},
        )
        for domain, ops in document["schemas"].items()
        for name, entries in ops.items()
        for entry in entries
    ]


@functools.lru_cache(maxsize=1)
def _registry() -> tuple[dict[tuple[str, str], tuple[OrtSchema, ...]], str]:
    """Schemas by (domain, op), newest first, and where they came from."""
    live = live_schemas()
    if live is not None:
        schemas, source = live, f"onnxruntime {live_runtime_version()} (live)"
    else:
        document = shipped_document()
        schemas, source = (
            _from_document(document),
            f"shipped table (onnxruntime {document['source']['ort_version']})",
        )
    by_op: dict[tuple[str, str], list[OrtSchema]] = {}
    for schema in schemas:
        by_op.setdefault((schema.domain, schema.name), []).append(schema)
    return {key: tuple(sorted(found, key=lambda s: -s.since_version)) for key, found in by_op.items()}, source


def schemas_source() -> str:
    """Where the schemas in use come from: the live onnxruntime, or the shipped table."""
    return _registry()[1]


def ort_schema(domain: str, op_type: str, opset: int) -> OrtSchema | None:
    """ORT's schema in force for ``domain::op_type`` at the domain's ``opset`` (0: the newest),
    for ops onnx does not define; None otherwise."""
    domain = "" if domain == "ai.onnx" else domain
    for schema in _registry()[0].get((domain, op_type), ()):
        if opset <= 0 or schema.since_version <= opset:
            return schema
    return None


def is_ort_default_domain_op(op_type: str, opset: int) -> bool:
    """An op ORT registers in the default domain at ``opset`` that onnx does not define there."""
    if ort_schema("", op_type, opset) is None:
        return False
    try:
        onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return True
    return False
