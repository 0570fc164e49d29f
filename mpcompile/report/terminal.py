"""The terminal report: a summary and a rich table of nodes."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console
from rich.table import Table

from mpcompile.analysis.audit import ModelAudit, NodeAudit
from mpcompile.report.summary import summarize
from mpcompile.report.view import (
    ReportView,
    display_name,
    format_bytes,
    format_count,
    format_float,
    format_share,
)
from mpcompile.text import markup

PRECISION_STYLE = {"fp32": "yellow", "fp16": "green", "bf16": "cyan", "n/a": "dim", "unknown": "red"}


def _precision(text: str) -> str:
    style = PRECISION_STYLE.get(text, "")
    return f"[{style}]{markup(text)}[/]" if style else markup(text)


def _dtypes(dtypes: list[str | None]) -> str:
    return markup(",".join(d or "?" for d in dtypes))


def print_report(audit: ModelAudit, console: Console, view: ReportView | None = None) -> None:
    """Print the summary, comparison and numerics notes, then the node table.

    On a terminal, columns that do not fit its width are left out (``COLUMN_MIN_WIDTH``);
    elsewhere (pipes, files) every column is printed.
    """
    view = view or ReportView()
    summary = summarize(audit)
    console.print(_summary_table(audit, summary))
    top = summary["fp32"]["top_ops"]
    if top:
        console.print(_top_fp32_table(top))
    if audit.numerics:
        _print_numerics(audit.numerics, console)
    if audit.auto:
        _print_auto(audit.auto, console)
    for note in audit.notes:
        console.print(f"[dim]note: {markup(note)}[/]")
    console.print(node_table(audit, view, console.width if console.is_terminal else WIDE))


def _summary_table(audit: ModelAudit, summary: dict[str, Any]) -> Table:
    title = f"mpcompile report: {audit.model_name or 'model'}"
    table = Table(title=markup(title), title_justify="left")
    table.add_column("precision")
    table.add_column("nodes", justify="right")
    table.add_column("FLOPs", justify="right")
    table.add_column("weights", justify="right")
    if audit.compare:
        table.add_column("nodes before", justify="right")
        table.add_column("weights before", justify="right")
    nodes, flops, weights = (summary[k]["by_precision"] for k in ("nodes", "flops", "weight_bytes"))
    before = (audit.compare or {}).get("before") or {}
    keys = sorted(set(nodes) | set(weights) | set((before.get("nodes") or {}).get("by_precision", {})))
    for key in keys:
        n, f, w = nodes.get(key), flops.get(key), weights.get(key)
        row = [
            _precision(key),
            f"{n['count']} ({format_share(n['share'])})" if n else "0",
            f"{format_count(f['flops'])} ({format_share(f['share'])})" if f else "0",
            f"{format_bytes(w['bytes'])} ({format_share(w['share'])})" if w else "0",
        ]
        if audit.compare:
            bn = before["nodes"]["by_precision"].get(key)
            bw = before["weight_bytes"]["by_precision"].get(key)
            row += [str(bn["count"]) if bn else "0", format_bytes(bw["bytes"]) if bw else "0"]
        table.add_row(*row)
    casts = summary["casts"]
    caption = (
        f"{summary['nodes']['total']} nodes, {format_count(summary['flops']['total'])} FLOPs, "
        f"{format_bytes(summary['weight_bytes']['total'])} weights; {casts['count']} Casts moving "
        f"{format_bytes(casts['bytes_moved'])} per inference"
    )
    if audit.assumed_dims:
        caption += "; assumed dims " + ", ".join(f"{k}={v}" for k, v in audit.assumed_dims.items())
    table.caption = markup(caption)
    table.caption_justify = "left"
    return table


def _top_fp32_table(top: list[dict[str, Any]]) -> Table:
    table = Table(
        title="What keeps this model out of low precision (top FP32 ops by FLOPs)", title_justify="left"
    )
    for column in ("node", "op", "reason", "rule", "FLOPs", "share"):
        table.add_column(column, justify="right" if column in ("FLOPs", "share") else "left")
    for entry in top:
        table.add_row(
            markup(entry["name"] or f"<{entry['op_type']} #{entry['index']}>"),
            markup(entry["op_type"]),
            markup(entry["reason"]),
            markup(entry["rule"]),
            format_count(entry["flops"]),
            format_share(entry["share"]),
        )
    return table


def _print_numerics(numerics: dict[str, Any], console: Console) -> None:
    console.print(
        f"[bold]numerics[/] ({markup(numerics['low_precision'])}, inputs: {markup(numerics['inputs'])})"
    )
    if numerics["overflow_nodes"]:
        names = ", ".join(n["name"] or n["op_type"] for n in numerics["overflow_nodes"][:10])
        console.print(f"  [red]overflow in {numerics['low_precision']}[/]: {markup(names)}")
    for source in numerics["error_sources"]:
        console.print(
            f"  error introduced at [bold]{markup(source['name'] or source['op_type'])}[/] "
            f"({markup(source['op_type'])}): {format_float(source['error_introduced'])} of max |x|"
        )
    for name, err in numerics["output_errors"].items():
        console.print(f"  output {markup(name)}: error {format_float(err['error_rel'])} of max |x|")
    for note in numerics["notes"]:
        console.print(f"  [dim]{markup(note)}[/]")


def _print_auto(record: dict[str, Any], console: Console) -> None:
    """The ``convert --auto`` search saved in the model: one line, then its trace."""
    from mpcompile.auto.trace import TRACE_COLUMNS, trace_rows, trace_summary

    console.print(f"[bold]--auto search[/]: {markup(trace_summary(record))}")
    table = Table(title="--auto search trace", title_justify="left")
    for column in TRACE_COLUMNS:
        table.add_column(
            column, justify="right" if column in ("#", "error", "limit", "evaluations") else "left"
        )
    for row in trace_rows(record):
        table.add_row(*(markup(cell) for cell in row))
    console.print(table)


# Optional columns and the console width from which they are shown (narrow terminals keep
# name, op, precision, FLOPs and the compare/numerics columns).
COLUMN_MIN_WIDTH = {
    "reason": 90,
    "weights": 100,
    "rule": 140,
    "casts": 140,
    "in": 180,
    "out": 180,
    "graph": 180,
}
WIDE = 10_000  # render_text / piped output: every column


def node_table(audit: ModelAudit, view: ReportView, width: int = WIDE) -> Table:
    rows = view.select(audit.nodes)
    has_subgraphs = any(n.graph != "main" for n in audit.nodes)
    columns: list[tuple[str, str]] = []  # (header, justify)
    for header in (
        "graph",
        "node",
        "op",
        "precision",
        "reason",
        "rule",
        "in",
        "out",
        "casts",
        "weights",
        "FLOPs",
    ):
        if header == "graph" and not has_subgraphs:
            continue
        if width >= COLUMN_MIN_WIDTH.get(header, 0):
            columns.append((header, "right" if header in ("weights", "FLOPs") else "left"))
    if audit.compare is not None:
        columns.append(("before", "left"))
    if audit.numerics is not None:
        columns += [(h, "right") for h in ("max|x|", "overflow", "underflow", "error", "introduced")]
    table = Table(title=f"nodes ({len(rows)} of {len(audit.nodes)})", title_justify="left")
    for header, justify in columns:
        table.add_column(header, justify=justify, overflow="fold", min_width=12 if header == "node" else None)
    for node in rows:
        cells = _row_cells(node)
        table.add_row(*(cells[header] for header, _ in columns))
    return table


def _row_cells(node: NodeAudit) -> dict[str, str]:
    cells = {
        "graph": markup(node.graph),
        "node": markup(display_name(node)),
        "op": markup(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"),
        "precision": _precision(node.precision),
        "reason": markup(node.reason),
        "rule": markup(node.rule),
        "in": _dtypes(node.input_dtypes),
        "out": _dtypes(node.output_dtypes),
        "casts": f"{len(node.casts_before)}/{len(node.casts_after)}",
        "weights": format_bytes(node.weight_bytes) if node.weight_bytes else "",
        "FLOPs": format_count(node.flops),
        "before": _before_cell(node),
    }
    numerics = _numerics_cells(node)
    cells.update(zip(("max|x|", "overflow", "underflow", "error", "introduced"), numerics, strict=True))
    return cells


def _before_cell(node: NodeAudit) -> str:
    compare = node.compare or {}
    if compare.get("status") != "matched":
        return "[magenta]new[/]"
    return _precision(compare["before"]["precision"])


def _numerics_cells(node: NodeAudit) -> list[str]:
    numerics = node.numerics or {}
    overflow = numerics.get("overflow_share")
    underflow = None
    if numerics.get("subnormal_share") is not None:
        underflow = numerics["subnormal_share"] + numerics["zero_share"]
    return [
        format_float(numerics.get("max_abs")),
        f"[red]{format_share(overflow)}[/]" if overflow else format_share(overflow),
        format_share(underflow),
        format_float(numerics.get("error_rel")),
        format_float(numerics.get("error_introduced")),
    ]


def render_text(audit: ModelAudit, view: ReportView | None = None, width: int = 200) -> str:
    """The terminal report as plain text (no colors), for ``-o report.txt``."""
    buffer = io.StringIO()
    console = Console(
        file=buffer, width=width, no_color=True, color_system=None, highlight=False, emoji=False
    )
    print_report(audit, console, view)
    return buffer.getvalue()
