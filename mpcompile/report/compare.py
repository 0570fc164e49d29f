"""Before/after comparison of a converted model with its original.

Nodes are matched by (graph label, name); unnamed nodes by their first output's name, and
unnamed nodes left over after that by op type and order within their graph.
Nodes only in the converted model (inserted Casts) are ``new``; nodes only in the original
are listed as ``removed``.
"""

from __future__ import annotations

from typing import Any

from mpcompile.analysis.audit import ModelAudit, NodeAudit
from mpcompile.report.summary import summarize

STATUS_MATCHED = "matched"
STATUS_NEW = "new"


def match_key(node: NodeAudit) -> tuple[str, str]:
    if node.name:
        return (node.graph, node.name)
    return (node.graph, "output:" + (node.output_names[0] if node.output_names else ""))


def match_nodes(converted: list[NodeAudit], original: list[NodeAudit]) -> dict[int, NodeAudit]:
    """Pairs (id of converted node -> original node): by key, then unnamed leftovers in order.

    The second pass pairs unnamed nodes of the same op in the same graph, in graph order: a
    converter may rename the output of an unnamed node that feeds a graph output.
    """
    by_key: dict[tuple[str, str], NodeAudit] = {}
    for node in original:
        by_key.setdefault(match_key(node), node)
    pairs: dict[int, NodeAudit] = {}
    used: set[int] = set()
    for node in converted:
        before = by_key.get(match_key(node))
        if before is not None and id(before) not in used:
            pairs[id(node)] = before
            used.add(id(before))
    leftovers: dict[tuple[str, str], list[NodeAudit]] = {}
    for node in original:
        if id(node) not in used and not node.name:
            leftovers.setdefault((node.graph, node.op_type), []).append(node)
    for node in converted:
        if id(node) in pairs or node.name:
            continue
        queue = leftovers.get((node.graph, node.op_type))
        if queue:
            pairs[id(node)] = queue.pop(0)
    return pairs


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
    pairs = match_nodes(converted.nodes, original.nodes)
    matched = {id(before) for before in pairs.values()}
    for node in converted.nodes:
        before = pairs.get(id(node))
        if before is None:
            node.compare = {"status": STATUS_NEW, "before": None}
        else:
            node.compare = {"status": STATUS_MATCHED, "before": _before(before)}
    removed = [
        {"name": n.name, "graph": n.graph, "op_type": n.op_type}
        for n in original.nodes
        if id(n) not in matched
    ]
    before_summary = summarize(original)
    converted.compare = {
        "original": original.model_name,
        "matched": len(pairs),
        "new": sum(1 for n in converted.nodes if n.compare and n.compare["status"] == STATUS_NEW),
        "removed": removed,
        "before": {
            "nodes": before_summary["nodes"],
            "flops": {k: v for k, v in before_summary["flops"].items() if k != "by_op"},
            "weight_bytes": before_summary["weight_bytes"],
            "casts": before_summary["casts"],
        },
    }
