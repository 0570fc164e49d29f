"""The CSV report: one row per node, a fixed set of columns (empty cells where not measured)."""

from __future__ import annotations

import csv
import io

from mpcompile.analysis.audit import ModelAudit, NodeAudit
from mpcompile.report.view import ReportView
from mpcompile.text import csv_cell

COLUMNS = (
    "index",
    "graph",
    "name",
    "op_type",
    "domain",
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
    "status",
    "before_precision",
    "before_output_dtypes",
    "before_weight_bytes",
    "max_abs",
    "overflow_share",
    "subnormal_share",
    "zero_share",
    "error_abs",
    "error_rel",
    "error_introduced",
)
LIST_SEPARATOR = ";"


def _cell(value) -> str:
    """One cell; text (names, op types, reasons: strings the model provides) is made inert."""
    if value is None:
        return ""
    if isinstance(value, list):
        return csv_cell(LIST_SEPARATOR.join("" if v is None else str(v) for v in value))
    if isinstance(value, str):
        return csv_cell(value)
    return str(value)  # numbers, including inf/nan


def csv_row(node: NodeAudit) -> dict[str, str]:
    compare = node.compare or {}
    before = compare.get("before") or {}
    numerics = node.numerics or {}
    row = {
        "index": node.index,
        "graph": node.graph,
        "name": node.name,
        "op_type": node.op_type,
        "domain": node.domain,
        "precision": node.precision,
        "reason": node.reason,
        "rule": node.rule,
        "source": node.source,
        "input_dtypes": node.input_dtypes,
        "output_dtypes": node.output_dtypes,
        "casts_before": node.casts_before,
        "casts_after": node.casts_after,
        "weight_bytes": node.weight_bytes,
        "flops": node.flops,
        "flops_method": node.flops_method,
        "cast_bytes": node.cast_bytes,
        "status": compare.get("status"),
        "before_precision": before.get("precision"),
        "before_output_dtypes": before.get("output_dtypes"),
        "before_weight_bytes": before.get("weight_bytes"),
        **{key: numerics.get(key) for key in COLUMNS[21:]},
    }
    return {key: _cell(row[key]) for key in COLUMNS}


def render_csv(audit: ModelAudit, view: ReportView | None = None) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for node in (view or ReportView()).select(audit.nodes):
        writer.writerow(csv_row(node))
    return buffer.getvalue()
