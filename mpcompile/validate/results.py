"""Typed, JSON-serializable validation results; each is truthy when it passes.

The JSON schema (``SCHEMA``) is documented in docs/validate.md; change it only with a new
schema version.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from mpcompile.validate.compare import OutputComparison
from mpcompile.validate.jsonable import jsonable_float
from mpcompile.validate.latency import LatencyStats

SCHEMA = "mpcompile.validate/1"

ROLE_CONVERTED = "converted"  # the converted model on this EP, against the FP32 reference
ROLE_TRT_FP16_BASELINE = "tensorrt-fp16-baseline"  # the FP32 model with TensorRT's own FP16 mode
MODE_NATIVE = "native"
MODE_FAITHFUL = "fp16-faithful"

STATUS_PASSED = "passed"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"


@dataclasses.dataclass
class Latency:
    """Latency of the original and the evaluated model on one EP, and the speedup (p50 ratio)."""

    original: LatencyStats | None = None
    converted: LatencyStats | None = None
    speedup: float | None = None

    def to_dict(self) -> dict:
        return {
            "original": self.original.to_dict() if self.original else None,
            "converted": self.converted.to_dict() if self.converted else None,
            "speedup": jsonable_float(self.speedup),
        }


@dataclasses.dataclass
class EpResult:
    """One row: a model run on one EP and compared against the reference."""

    ep: str  # short name: cpu, cuda, tensorrt
    provider: str
    role: str = ROLE_CONVERTED
    status: str = STATUS_SKIPPED
    reason: str | None = None
    accuracy_mode: str = MODE_NATIVE
    io_binding: bool = False
    outputs: list[OutputComparison] = dataclasses.field(default_factory=list)
    latency: Latency | None = None

    @property
    def counts_for_verdict(self) -> bool:
        return self.role == ROLE_CONVERTED and self.status != STATUS_SKIPPED

    def __bool__(self) -> bool:
        return self.status == STATUS_PASSED

    def to_dict(self) -> dict:
        return {
            "ep": self.ep,
            "provider": self.provider,
            "role": self.role,
            "status": self.status,
            "reason": self.reason,
            "accuracy_mode": self.accuracy_mode,
            "io_binding": self.io_binding,
            "outputs": [output.to_dict() for output in self.outputs],
            "latency": self.latency.to_dict() if self.latency else None,
        }


@dataclasses.dataclass
class ValidationResult:
    """Everything ``mpcompile validate`` measured; truthy when every converted-model row passes."""

    original: str
    converted: str
    low_precision: str
    rtol: dict
    atol: dict
    inputs: dict
    onnxruntime: str
    eps: list[EpResult] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def passed(self) -> bool:
        rows = [row for row in self.eps if row.counts_for_verdict]
        return bool(rows) and all(rows)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "passed": self.passed,
            "original": self.original,
            "converted": self.converted,
            "low_precision": self.low_precision,
            "tolerances": {"rtol": self.rtol, "atol": self.atol},
            "inputs": self.inputs,
            "onnxruntime": self.onnxruntime,
            "eps": [row.to_dict() for row in self.eps],
            "notes": list(self.notes),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)
