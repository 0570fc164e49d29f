"""The TensorRT target: onnx-tensorrt's supported-operator matrix, CUDA kernels for the rest.

TensorRT has no per-kernel table. With TensorRT 10+ ONNX Runtime builds strongly typed networks
(always from TensorRT 11), so the ONNX tensor types decide precision, and a node can be FP16/BF16
only where the onnx-tensorrt parser supports the op for that type. The op list, the opset range and
the per-op types are data in ``mpcompile/data/tensorrt_operators.json`` (with its source and the
rule written out); nodes TensorRT does not take fall back to the next provider, CUDA.
"""

from __future__ import annotations

import functools
import importlib.resources
import json

import onnx_ir as ir

from mpcompile.targets.kernel_table import KernelAnswer, normalize_domain
from mpcompile.targets.kernel_target import cuda_target

TENSORRT_PROVIDER = "TensorrtExecutionProvider"
TENSORRT_DATA_RESOURCE = "tensorrt_operators.json"
# How the onnx-tensorrt matrix names the float types.
_TYPE_TAGS = {ir.DataType.FLOAT: "FP32", ir.DataType.FLOAT16: "FP16", ir.DataType.BFLOAT16: "BF16"}


@functools.lru_cache(maxsize=1)
def tensorrt_operators() -> dict:
    """The parsed ``tensorrt_operators.json`` (source, rule, opset range, ops -> supported types)."""
    text = importlib.resources.files("mpcompile").joinpath("data", TENSORRT_DATA_RESOURCE).read_text("utf-8")
    return json.loads(text)


class TensorRTTarget:
    """TensorRT EP; ``fallback`` (normally the CUDA target) answers for nodes TensorRT does not take."""

    name = "tensorrt"
    provider = TENSORRT_PROVIDER

    def __init__(self, fallback=None):
        self.fallback = fallback
        data = tensorrt_operators()
        self.opset_range = (int(data["opset_min"]), int(data["opset_max"]))
        self.ops: dict[str, frozenset[str]] = {op: frozenset(types) for op, types in data["ops"].items()}
        fallback_text = (
            f"; other nodes: {fallback.provider} ({fallback.source})" if fallback is not None else ""
        )
        self.source = (
            f"onnx-tensorrt operators.md (TensorRT {data['source']['tensorrt_version']}){fallback_text}"
        )

    def claims(self, domain: str, op_type: str, opset: int, dtype: ir.DataType) -> KernelAnswer:
        """Whether the onnx-tensorrt parser takes this node in ``dtype`` (per the support matrix)."""
        where = f"{TENSORRT_PROVIDER} {normalize_domain(domain)}::{op_type}"
        if normalize_domain(domain) != "ai.onnx":
            return KernelAnswer(False, f"{where}: only ai.onnx ops are in the TensorRT matrix")
        low, high = self.opset_range
        if not low <= opset <= high:
            return KernelAnswer(False, f"{where}: opset {opset} outside TensorRT's range [{low}, {high}]")
        types = self.ops.get(op_type)
        if types is None:
            return KernelAnswer(False, f"{where}: not supported by the TensorRT parser")
        tag = _TYPE_TAGS.get(dtype, dtype.name)
        if tag in types:
            return KernelAnswer(True, f"{where}: supported in {tag}")
        return KernelAnswer(False, f"{where}: supported types {', '.join(sorted(types))} lack {tag}")

    def explain(self, domain: str, op_type: str, opset: int, dtype: ir.DataType) -> KernelAnswer:
        answer = self.claims(domain, op_type, opset, dtype)
        if answer or self.fallback is None:
            return answer
        fallback = self.fallback.explain(domain, op_type, opset, dtype)
        return KernelAnswer(
            fallback.supported, f"{answer.detail}; fallback {fallback.detail}", fallback.kernel
        )

    def supports(self, domain: str, op_type: str, opset: int, dtype: ir.DataType) -> bool:
        return self.explain(domain, op_type, opset, dtype).supported

    def describe(self) -> dict[str, object]:
        """How many ops the parser's own matrix lists (CUDA answers for the rest)."""
        return {
            "ops": len(self.ops),
            "ops_with_float16": sum("FP16" in types for types in self.ops.values()),
            "ops_with_bfloat16": sum("BF16" in types for types in self.ops.values()),
        }

    def __repr__(self) -> str:
        return f"TensorRTTarget(source={self.source!r})"


def tensorrt_target(live: bool = True) -> TensorRTTarget:
    """TensorRT, with the CUDA target answering for the nodes it does not take."""
    return TensorRTTarget(fallback=cuda_target(live))
