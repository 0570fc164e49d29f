"""Model-level summary of an audit: shares per precision, Cast traffic, what stays in FP32."""

from __future__ import annotations

from typing import Any

from mpcompile.analysis.audit import ModelAudit, NodeAudit

TOP_FP32 = 10


def _share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def summarize(audit: ModelAudit, top: int = TOP_FP32) -> dict[str, Any]:
    """The summary block of the report (plain data, JSON-ready)."""
    nodes = audit.nodes
    precisions = sorted({n.precision for n in nodes})

    node_counts = {p: sum(1 for n in nodes if n.precision == p) for p in precisions}
    known = [n for n in nodes if n.flops is not None]
    total_flops = sum(n.flops or 0 for n in known)
    flops_by = {p: sum(n.flops or 0 for n in known if n.precision == p) for p in precisions}
    total_weights = sum(audit.weights_by_dtype.values())

    casts = [n for n in nodes if n.is_cast]
    cast_known = [n.cast_bytes for n in casts if n.cast_bytes is not None]
    return {
        "nodes": {
            "total": len(nodes),
            "by_precision": {p: {"count": c, "share": _share(c, len(nodes))} for p, c in node_counts.items()},
        },
        "flops": {
            "total": total_flops,
            "unknown_nodes": len(nodes) - len(known),
            "by_precision": {p: {"flops": f, "share": _share(f, total_flops)} for p, f in flops_by.items()},
            "by_op": flops_by_op(nodes),
        },
        "weight_bytes": {
            "total": total_weights,
            "by_precision": {
                p: {"bytes": b, "share": _share(b, total_weights)}
                for p, b in sorted(audit.weights_by_dtype.items())
            },
        },
        "casts": {
            "count": len(casts),
            "bytes_moved": sum(cast_known),
            "unknown_size": len(casts) - len(cast_known),
        },
        "fp32": {
            "top_ops": top_fp32(nodes, total_flops, top),
            "by_reason": fp32_by_reason(nodes, total_flops),
        },
    }


def top_fp32(nodes: list[NodeAudit], total_flops: int, top: int) -> list[dict[str, Any]]:
    """FP32 compute nodes (Casts left out) with the most FLOPs, and why they stayed in FP32."""
    fp32 = [n for n in nodes if n.precision == "fp32" and not n.is_cast and n.flops]
    fp32.sort(key=lambda n: (-(n.flops or 0), n.index))
    return [
        {
            "index": n.index,
            "name": n.name,
            "graph": n.graph,
            "op_type": n.op_type,
            "reason": n.reason,
            "rule": n.rule,
            "flops": n.flops,
            "share": _share(n.flops or 0, total_flops),
        }
        for n in fp32[:top]
    ]


def fp32_by_reason(nodes: list[NodeAudit], total_flops: int) -> dict[str, dict[str, Any]]:
    """FP32 nodes (Casts left out) grouped by reason: count and FLOPs."""
    groups: dict[str, dict[str, Any]] = {}
    for n in nodes:
        if n.precision != "fp32" or n.is_cast:
            continue
        group = groups.setdefault(n.reason, {"count": 0, "flops": 0, "share": 0.0})
        group["count"] += 1
        group["flops"] += n.flops or 0
    for group in groups.values():
        group["share"] = _share(group["flops"], total_flops)
    return dict(sorted(groups.items(), key=lambda item: (-item[1]["flops"], item[0])))


def flops_by_op(nodes: list[NodeAudit]) -> dict[str, dict[str, int]]:
    """FLOPs per op type and precision, op types by total FLOPs (largest first)."""
    table: dict[str, dict[str, int]] = {}
    for n in nodes:
        if not n.flops:
            continue
        row = table.setdefault(n.op_type, {})
        row[n.precision] = row.get(n.precision, 0) + n.flops
    return dict(sorted(table.items(), key=lambda item: (-sum(item[1].values()), item[0])))
