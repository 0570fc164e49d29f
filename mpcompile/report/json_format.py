"""The JSON report: a stable, versioned document described by ``schema.json``.

Non-finite numbers (an error of ``inf`` after FP16 overflow) are written as the strings
``"inf"``, ``"-inf"`` and ``"nan"``, since JSON has no such numbers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any

from mpcompile.analysis.audit import ModelAudit, NodeAudit
from mpcompile.evaluate.shapes import DEFAULT_BATCH, DEFAULT_DIM
from mpcompile.report.summary import summarize
from mpcompile.report.view import ReportView

SCHEMA_VERSION = 1
SCHEMA_PATH = pathlib.Path(__file__).with_name("schema.json")

NODE_FIELDS = (
    "index",
    "name",
    "op_type",
    "domain",
    "graph",
    "precision",
    "reason",
    "rule",
    "source",
    "input_dtypes",
    "output_dtypes",
    "casts_before",
    "casts_after",
    "weight_bytes",
    "flops",
    "flops_method",
    "cast_bytes",
    "compare",
    "numerics",
)


def _tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mpcompile")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def node_dict(node: NodeAudit) -> dict[str, Any]:
    data = dataclasses.asdict(node)
    return {key: data[key] for key in NODE_FIELDS}


def report_dict(audit: ModelAudit, view: ReportView | None = None) -> dict[str, Any]:
    """The whole report as plain data (JSON-ready once non-finite floats are encoded)."""
    view = view or ReportView()
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "mpcompile", "version": _tool_version()},
        "model": {
            "name": audit.model_name,
            "producer": audit.producer,
            "opsets": audit.opsets,
            "mpcompile": audit.mpcompile,
            "converted_by_mpcompile": bool(audit.mpcompile)
            or any(n.source == "metadata" for n in audit.nodes),
        },
        "assumptions": {
            "assumed_dims": audit.assumed_dims,
            "shape_overrides": audit.shape_overrides,
            "defaults": {"batch": DEFAULT_BATCH, "dim": DEFAULT_DIM},
            "shape_inference_ok": audit.shape_inference_ok,
        },
        "summary": summarize(audit),
        "compare": audit.compare,
        "numerics": audit.numerics,
        "auto": audit.auto,
        "filters": view.as_dict(),
        "nodes": [node_dict(n) for n in view.select(audit.nodes)],
        "notes": list(audit.notes),
    }


def encode_non_finite(value: Any) -> Any:
    """Replace inf/nan floats (at any depth) by strings so the output is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {key: encode_non_finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_non_finite(item) for item in value]
    return value


def render_json(audit: ModelAudit, view: ReportView | None = None) -> str:
    return json.dumps(encode_non_finite(report_dict(audit, view)), indent=2, allow_nan=False) + "\n"


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
