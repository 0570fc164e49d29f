"""Kernel tables: which (domain, op, schema-version range, types) an execution provider registers.

The shipped tables come from ONNX Runtime's ``docs/OperatorKernels.md`` (parsed by
``tools/gen_kernel_tables.py`` into ``mpcompile/data/kernels_ort.json``); live tables come from
the installed onnxruntime (``mpcompile.targets.live``). Both are ``KernelTable`` objects.

Lookup rule (how ORT itself matches kernels): a kernel's version range is keyed by the op's
*schema* version. A model at opset 14 using Relu (schema versions 1, 6, 13, 14) needs the kernel
whose range covers 14; one using Softmax (schemas 1, 11, 13) needs the range covering 13. So the
model opset is first mapped to the op's ``since_version`` with ``onnx.defs.get_schema``; for ops
onnx does not know (``com.microsoft`` contrib ops, ORT-only ops), the registered range containing
the domain's opset is used.

Dtype rule: "the op supports dtype" means the type parameter that binds the op's float data lists
``tensor(dtype)``. That parameter is the one of the op's first input whose type parameter is
constrained, in that kernel, to at least one float type (float, double, float16, bfloat16); when no
input qualifies (generators such as RandomNormal), the first such output. Parameter names come
from the Parameters column of OperatorKernels.md, or from the onnx schema for ops the column lacks.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
from collections.abc import Iterator, Mapping

import onnx
import onnx_ir as ir

ONNX_DOMAIN = "ai.onnx"
SHIPPED_TABLES_RESOURCE = "kernels_ort.json"
FLOAT_TENSOR_TYPES = frozenset({"tensor(float)", "tensor(double)", "tensor(float16)", "tensor(bfloat16)"})


def normalize_domain(domain: str) -> str:
    """ORT's tables name the default domain ``ai.onnx``; ONNX protos use ``""``."""
    return ONNX_DOMAIN if domain in ("", ONNX_DOMAIN) else domain


def ort_type_name(dtype: ir.DataType) -> str:
    """``ir.DataType.FLOAT16`` -> ``"tensor(float16)"`` (ORT's spelling)."""
    return f"tensor({dtype.name.lower()})"


@dataclasses.dataclass(frozen=True)
class KernelRange:
    """One registered kernel version range and the union of its type constraints."""

    since: int
    until: int | None  # None: open range (``N+``)
    constraints: Mapping[str, tuple[str, ...]]

    def covers(self, version: int) -> bool:
        return self.since <= version and (self.until is None or version <= self.until)

    @property
    def label(self) -> str:
        """The markdown's notation: ``13``, ``[6, 12]`` or ``14+``."""
        if self.until is None:
            return f"{self.since}+"
        if self.until == self.since:
            return str(self.since)
        return f"[{self.since}, {self.until}]"


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One input or output of an op signature: its name and type parameter (or a literal type)."""

    name: str
    type: str  # a type parameter such as "T", or a literal such as "tensor(int64)"
    variadic: bool = False


@dataclasses.dataclass(frozen=True)
class Signature:
    """Inputs and outputs of one schema version, as listed in OperatorKernels.md."""

    inputs: tuple[Parameter, ...]
    outputs: tuple[Parameter, ...]


@dataclasses.dataclass(frozen=True)
class OpKernels:
    """Everything a table records for one (domain, op)."""

    signatures: tuple[Signature, ...]
    kernels: tuple[KernelRange, ...]  # newest first


class KernelTable:
    """The kernels one execution provider registers, with lookups by model opset and dtype."""

    def __init__(self, provider: str, ops: Mapping[tuple[str, str], OpKernels]):
        self.provider = provider
        self._ops = dict(ops)
        self._answers: dict[tuple[str, str, int, ir.DataType], KernelAnswer] = {}

    def __contains__(self, key: tuple[str, str]) -> bool:
        domain, op_type = key
        return (normalize_domain(domain), op_type) in self._ops

    def __len__(self) -> int:
        return len(self._ops)

    def items(self) -> Iterator[tuple[tuple[str, str], OpKernels]]:
        yield from sorted(self._ops.items())

    def op(self, domain: str, op_type: str) -> OpKernels | None:
        return self._ops.get((normalize_domain(domain), op_type))

    def kernel_for(self, domain: str, op_type: str, opset: int) -> KernelRange | None:
        """The kernel ORT would pick for ``op_type`` in a model importing ``domain`` at ``opset``."""
        entry = self.op(domain, op_type)
        if entry is None:
            return None
        version = schema_since_version(domain, op_type, opset)
        if version is None:
            version = opset  # unknown to onnx: ranges are matched on the domain's opset
        return next((kernel for kernel in entry.kernels if kernel.covers(version)), None)

    def data_type_parameter(self, domain: str, op_type: str, kernel: KernelRange) -> str | None:
        """The type parameter binding the op's float data in ``kernel`` (see the module docstring)."""
        signatures = op_signatures(domain, op_type)
        own = self.op(domain, op_type)
        if own is not None and own.signatures:
            signatures = own.signatures
        for direction in ("inputs", "outputs"):
            for signature in signatures:
                for parameter in getattr(signature, direction):
                    types = kernel.constraints.get(parameter.type)
                    if types and FLOAT_TENSOR_TYPES.intersection(types):
                        return parameter.type
        floating = [
            name for name, types in kernel.constraints.items() if FLOAT_TENSOR_TYPES.intersection(types)
        ]
        return floating[0] if len(floating) == 1 else None

    def supports(self, domain: str, op_type: str, opset: int, dtype: ir.DataType) -> bool:
        return self.explain(domain, op_type, opset, dtype).supported

    def explain(self, domain: str, op_type: str, opset: int, dtype: ir.DataType) -> KernelAnswer:
        """Whether a kernel exists, and a one-line reason either way."""
        key = (domain, op_type, opset, dtype)
        answer = self._answers.get(key)
        if answer is None:
            answer = self._answers[key] = self._explain(domain, op_type, opset, dtype)
        return answer

    def _explain(self, domain: str, op_type: str, opset: int, dtype: ir.DataType) -> KernelAnswer:
        where = f"{self.provider} {normalize_domain(domain)}::{op_type}"
        if self.op(domain, op_type) is None:
            return KernelAnswer(False, f"{where}: no kernel registered")
        kernel = self.kernel_for(domain, op_type, opset)
        if kernel is None:
            return KernelAnswer(False, f"{where}: no kernel for opset {opset}")
        parameter = self.data_type_parameter(domain, op_type, kernel)
        if parameter is None:
            return KernelAnswer(False, f"{where} {kernel.label}: no float type parameter")
        wanted = ort_type_name(dtype)
        if wanted in kernel.constraints[parameter]:
            return KernelAnswer(True, f"{where} {kernel.label}: {parameter} includes {wanted}", kernel)
        return KernelAnswer(False, f"{where} {kernel.label}: {parameter} lacks {wanted}", kernel)


@dataclasses.dataclass(frozen=True)
class KernelAnswer:
    """A kernel lookup's result with a human-readable detail (for ``--explain``)."""

    supported: bool
    detail: str
    kernel: KernelRange | None = None

    def __bool__(self) -> bool:
        return self.supported


@functools.lru_cache(maxsize=4096)
def schema_since_version(domain: str, op_type: str, opset: int) -> int | None:
    """The since_version of the schema onnx resolves for ``op_type`` at ``opset``, or None if unknown."""
    onnx_domain = "" if normalize_domain(domain) == ONNX_DOMAIN else domain
    try:
        return onnx.defs.get_schema(op_type, opset, onnx_domain).since_version
    except onnx.defs.SchemaError:
        return None


@functools.lru_cache(maxsize=1)
def shipped_document() -> dict:
    """The parsed ``kernels_ort.json`` package data (source facts and all providers)."""
    text = importlib.resources.files("mpcompile").joinpath("data", SHIPPED_TABLES_RESOURCE).read_text("ascii")
    return json.loads(text)


def shipped_source() -> dict[str, str]:
    """Where the shipped tables came from: file, sha256, upstream, upstream_commit, ort_version."""
    return dict(shipped_document()["source"])


def shipped_providers() -> list[str]:
    return sorted(shipped_document()["providers"])


@functools.lru_cache(maxsize=8)
def shipped_table(provider: str) -> KernelTable:
    """The shipped kernel table of ``provider`` (e.g. ``"CUDAExecutionProvider"``)."""
    providers = shipped_document()["providers"]
    if provider not in providers:
        raise KeyError(f"no shipped kernel table for {provider}; have {sorted(providers)}")
    ops = {}
    for domain, domain_ops in providers[provider].items():
        for op_type, entry in domain_ops.items():
            ops[(domain, op_type)] = OpKernels(
                signatures=tuple(_signature(item) for item in entry["signatures"]),
                kernels=tuple(
                    KernelRange(since, until, {name: tuple(types) for name, types in constraints.items()})
                    for since, until, constraints in entry["kernels"]
                ),
            )
    return KernelTable(provider, ops)


def _signature(item: dict) -> Signature:
    def parameters(entries: list) -> tuple[Parameter, ...]:
        return tuple(Parameter(entry[0], entry[1], len(entry) > 2 and bool(entry[2])) for entry in entries)

    return Signature(parameters(item["inputs"]), parameters(item["outputs"]))


@functools.lru_cache(maxsize=4096)
def op_signatures(domain: str, op_type: str) -> tuple[Signature, ...]:
    """Per-input/output type parameters of an op: from the shipped tables (CPU, then CUDA, then DML)
    or, for ops none of them lists, from the onnx schema at its newest version. Empty if unknown.

    This is how type parameters of contrib (``com.microsoft``) ops that onnx has no schema for
    are known: e.g. ``op_signatures("com.microsoft", "SkipLayerNormalization")``.
    """
    for provider in ("CPUExecutionProvider", "CUDAExecutionProvider", "DmlExecutionProvider"):
        if provider not in shipped_document()["providers"]:
            continue
        entry = shipped_table(provider).op(domain, op_type)
        if entry is not None and entry.signatures:
            return entry.signatures
    onnx_domain = "" if normalize_domain(domain) == ONNX_DOMAIN else domain
    try:
        schema = onnx.defs.get_schema(op_type, onnx_domain)
    except onnx.defs.SchemaError:
        return ()
    variadic = onnx.defs.OpSchema.FormalParameterOption.Variadic
    return (
        Signature(
            tuple(Parameter(p.name, p.type_str, p.option == variadic) for p in schema.inputs),
            tuple(Parameter(p.name, p.type_str, p.option == variadic) for p in schema.outputs),
        ),
    )
