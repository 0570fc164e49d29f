"""Before/after comparison of a converted model with its original.

Nodes are matched by (graph label, name); unnamed nodes by their first output's name.
Nodes only in the converted model (inserted Casts) are ``new``; nodes only in the original
are listed as ``removed``.
"""

from __future__ import annotations

from typing import Any

from mpcompile.report.audit import ModelAudit, NodeAudit
from mpcompile.report.summary import summarize

STATUS_MATCHED = "matched"
STATUS_NEW = "new"


def match_key(node: NodeAudit) -> tuple[str, str]:
    if node.name:
        return (node.graph, node.name)
    return (node.graph, "output:" + (node.output_names[0] if node.output_names else ""))


def _before(node: NodeAudit) -> dict[str, Any]:
    return {
        "precision": node.precision,
        "input_dtypes": node.input_dtypes,
        "output_dtypes": node.output_dtypes,
        "weight_bytes": node.weight_bytes,
        "flops": node.flops,
    }


def attach_comparison(converted: ModelAudit, original: ModelAudit) -> None:
    """Fill ``node.compare`` for every converted node and ``converted.compare`` (in place)."""
    originals: dict[tuple[str, str], NodeAudit] = {}
    for node in original.nodes:
        originals.setdefault(match_key(node), node)
    matched: set[tuple[str, str]] = set()
    for node in converted.nodes:
        key = match_key(node)
        before = originals.get(key)
        if before is None or key in matched:
            node.compare = {"status": STATUS_NEW, "before": None}
            continue
        matched.add(key)
        node.compare = {"status": STATUS_MATCHED, "before": _before(before)}
    removed = [
        {"name": n.name, "graph": n.graph, "op_type": n.op_type}
        for n in original.nodes
        if match_key(n) not in matched
    ]
    before_summary = summarize(original)
    converted.compare = {
        "original": original.model_name,
        "matched": len(matched),
        "new": sum(1 for n in converted.nodes if n.compare and n.compare["status"] == STATUS_NEW),
        "removed": removed,
        "before": {
            "nodes": before_summary["nodes"],
            "flops": {k: v for k, v in before_summary["flops"].items() if k != "by_op"},
            "weight_bytes": before_summary["weight_bytes"],
            "casts": before_summary["casts"],
        },
    }
