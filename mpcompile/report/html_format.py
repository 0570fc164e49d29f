"""The HTML report: one self-contained page (inline CSS, JS and SVG; no external assets).

Every string that comes from the model (node names, ops, reasons, rules, dtypes) goes through
``html.escape``; the page's Content-Security-Policy also forbids loading anything.
"""

from __future__ import annotations

import html
import math
from typing import Any

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
from mpcompile.text import printable

PRECISION_COLORS = {
    "fp32": "#e0a100",
    "fp16": "#2e9e44",
    "bf16": "#1f7fbf",
    "fp64": "#b5533c",
    "n/a": "#9aa0a6",
    "unknown": "#c2185b",
}
OTHER_COLOR = "#7b5ea7"
CHART_OPS = 12

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1d1d1f;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
.meta{color:#555;margin-bottom:12px} .note{color:#666;font-size:12px}
table{border-collapse:collapse;font-size:12px} th,td{padding:3px 8px;border-bottom:1px solid #e3e3e3;text-align:left;white-space:nowrap}
.scroll{overflow-x:auto;max-width:100%}
th{background:#f4f4f6;position:sticky;top:0} td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
table.sortable th{cursor:pointer;user-select:none} table.sortable th:hover{background:#e8e8ee}
th[aria-sort=ascending]::after{content:' \\25B2'} th[aria-sort=descending]::after{content:' \\25BC'}
.p{display:inline-block;padding:0 6px;border-radius:8px;color:#fff;font-size:11px}
.new{color:#8e24aa;font-weight:600} .bad{color:#c62828;font-weight:600}
#filter{margin:4px 0 8px;padding:4px 8px;width:320px}
.cards{display:flex;gap:12px;flex-wrap:wrap} .card{border:1px solid #ddd;border-radius:6px;padding:8px 12px}
.card b{display:block;font-size:18px}
"""

_JS = """
(function(){
  function key(cell, numeric){
    var v = cell.getAttribute('data-v');
    if (numeric) { var x = parseFloat(v === null ? cell.textContent : v); return isNaN(x) ? -Infinity : x; }
    return (v === null ? cell.textContent : v).toLowerCase();
  }
  document.querySelectorAll('table.sortable').forEach(function(table){
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function(th, col){
      th.addEventListener('click', function(){
        var asc = th.getAttribute('aria-sort') !== 'ascending';
        var numeric = th.classList.contains('n');
        Array.prototype.forEach.call(heads, function(h){ h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function(a, b){
          var x = key(a.cells[col], numeric), y = key(b.cells[col], numeric);
          var c = x < y ? -1 : (x > y ? 1 : 0);
          if (c === 0) { c = parseInt(a.getAttribute('data-i'), 10) - parseInt(b.getAttribute('data-i'), 10); return c; }
          return asc ? c : -c;
        });
        rows.forEach(function(r){ body.appendChild(r); });
      });
    });
  });
  var filter = document.getElementById('filter');
  if (filter) filter.addEventListener('input', function(){
    var q = filter.value.toLowerCase();
    document.querySelectorAll('#nodes tbody tr').forEach(function(r){
      r.style.display = r.textContent.toLowerCase().indexOf(q) >= 0 ? '' : 'none';
    });
  });
})();
"""


def _e(text: Any) -> str:
    """HTML-escaped, with control and bidi characters shown as escapes (``\\u202e``), not obeyed."""
    return html.escape(printable(text), quote=True)


def _color(precision: str) -> str:
    return PRECISION_COLORS.get(precision, OTHER_COLOR)


def _badge(precision: str) -> str:
    return f'<span class="p" style="background:{_color(precision)}">{_e(precision)}</span>'


def _num_cell(value: int | float | None, text: str, css: str = "n") -> str:
    """A right-aligned cell whose ``data-v`` holds the raw number the sorting script compares."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f'<td class="{css}" data-v="">{_e(text)}</td>'
    raw = "Infinity" if isinstance(value, float) and math.isinf(value) else repr(value)
    return f'<td class="{css}" data-v="{_e(raw)}">{_e(text)}</td>'


def flops_chart_svg(by_op: dict[str, dict[str, int]], by_precision: dict[str, dict[str, Any]]) -> str:
    """Horizontal stacked bars: all ops, then the top op types, split by precision."""
    rows: list[tuple[str, dict[str, int]]] = [("all ops", {p: v["flops"] for p, v in by_precision.items()})]
    rows += list(by_op.items())[:CHART_OPS]
    precisions = sorted({p for _, parts in rows for p, v in parts.items() if v})
    label_w, bar_w, value_w, row_h, top = 170, 460, 90, 24, 34
    width = label_w + bar_w + value_w
    height = top + row_h * len(rows) + 8
    biggest = max((sum(parts.values()) for _, parts in rows), default=0) or 1
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="FLOPs by precision and op" '
        'font-family="system-ui,sans-serif" font-size="12">'
    ]
    x = label_w
    for precision in precisions:  # legend
        out.append(f'<rect x="{x}" y="6" width="12" height="12" fill="{_color(precision)}"/>')
        out.append(f'<text x="{x + 16}" y="16">{_e(precision)}</text>')
        x += 24 + 8 * len(precision) + 16
    for i, (label, parts) in enumerate(rows):
        y = top + i * row_h
        total = sum(parts.values())
        shown = label if len(label) <= 24 else label[:23] + "…"
        weight = ' font-weight="bold"' if i == 0 else ""
        out.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end"{weight}>{_e(shown)}</text>')
        x = float(label_w)
        for precision in precisions:
            value = parts.get(precision, 0)
            if not value:
                continue
            w = bar_w * value / biggest
            tip = f"{label} {precision}: {format_count(value)} FLOPs ({format_share(value / total)})"
            out.append(
                f'<rect x="{x:.1f}" y="{y + 3}" width="{max(w, 0.5):.1f}" height="{row_h - 8}" '
                f'fill="{_color(precision)}"><title>{_e(tip)}</title></rect>'
            )
            x += w
        out.append(f'<text x="{x + 6:.1f}" y="{y + 15}">{_e(format_count(total))}</text>')
    out.append("</svg>")
    return "".join(out)


def _summary_section(audit: ModelAudit, summary: dict[str, Any]) -> str:
    nodes, flops, weights = (summary[k]["by_precision"] for k in ("nodes", "flops", "weight_bytes"))
    casts = summary["casts"]
    before = (audit.compare or {}).get("before")
    cards = [
        ("nodes", str(summary["nodes"]["total"])),
        ("FLOPs", format_count(summary["flops"]["total"])),
        ("weights", format_bytes(summary["weight_bytes"]["total"])),
        ("Casts", str(casts["count"])),
        ("bytes through Casts", format_bytes(casts["bytes_moved"])),
    ]
    parts = ['<div class="cards">']
    parts += [f'<div class="card">{_e(label)}<b>{_e(value)}</b></div>' for label, value in cards]
    parts.append("</div>")
    head = "<tr><th>precision</th><th class=n>nodes</th><th class=n>FLOPs</th><th class=n>weights</th>"
    if before:
        head += "<th class=n>nodes before</th><th class=n>weights before</th>"
    parts.append(f'<h2>Share per precision</h2><table id="summary"><thead>{head}</tr></thead><tbody>')
    keys = sorted(set(nodes) | set(weights) | set((before or {}).get("nodes", {}).get("by_precision", {})))
    for key in keys:
        n, f, w = nodes.get(key), flops.get(key), weights.get(key)
        cells = [
            f"<td>{_badge(key)}</td>",
            f'<td class="n">{n["count"] if n else 0} ({format_share(n["share"] if n else 0)})</td>',
            f'<td class="n">{_e(format_count(f["flops"] if f else 0))} ({format_share(f["share"] if f else 0)})</td>',
            f'<td class="n">{_e(format_bytes(w["bytes"] if w else 0))} ({format_share(w["share"] if w else 0)})</td>',
        ]
        if before:
            bn = before["nodes"]["by_precision"].get(key)
            bw = before["weight_bytes"]["by_precision"].get(key)
            cells.append(f'<td class="n">{bn["count"] if bn else 0}</td>')
            cells.append(f'<td class="n">{_e(format_bytes(bw["bytes"] if bw else 0))}</td>')
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)


def _top_fp32_section(summary: dict[str, Any]) -> str:
    top = summary["fp32"]["top_ops"]
    if not top:
        return ""
    rows = "".join(
        f"<tr><td>{_e(t['name'] or '<' + t['op_type'] + ' #' + str(t['index']) + '>')}</td>"
        f"<td>{_e(t['op_type'])}</td><td>{_e(t['reason'])}</td>"
        f"<td>{_e(t['rule'])}</td><td class=n>{_e(format_count(t['flops']))}</td>"
        f"<td class=n>{_e(format_share(t['share']))}</td></tr>"
        for t in top
    )
    return (
        "<h2>What keeps this model out of low precision</h2>"
        '<table id="top-fp32"><thead><tr><th>node</th><th>op</th><th>reason</th><th>rule</th>'
        f"<th class=n>FLOPs</th><th class=n>share</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _numerics_section(numerics: dict[str, Any] | None) -> str:
    if not numerics:
        return ""
    items = [f"<p class=meta>{_e(numerics['low_precision'])}; inputs: {_e(numerics['inputs'])}</p><ul>"]
    if numerics["overflow_nodes"]:
        names = ", ".join(n["name"] or n["op_type"] for n in numerics["overflow_nodes"][:20])
        items.append(
            f'<li><span class="bad">overflow</span> in {_e(numerics["low_precision"])}: {_e(names)}</li>'
        )
    for s in numerics["error_sources"]:
        items.append(
            f"<li>error introduced at <b>{_e(s['name'] or s['op_type'])}</b> ({_e(s['op_type'])}): "
            f"{_e(format_float(s['error_introduced']))} of max |x|</li>"
        )
    for name, err in numerics["output_errors"].items():
        items.append(f"<li>output {_e(name)}: error {_e(format_float(err['error_rel']))} of max |x|</li>")
    items.append("</ul>")
    items += [f'<p class="note">{_e(note)}</p>' for note in numerics["notes"]]
    if numerics.get("evaluation"):
        items.append(f'<p class="note">{_e(numerics["evaluation"])}</p>')
    return "<h2>Numerics: where does the accuracy go</h2>" + "".join(items)


def _auto_section(record: dict[str, Any] | None) -> str:
    """The ``convert --auto`` search saved in the model: summary and trace table."""
    if not record:
        return ""
    from mpcompile.auto.trace import TRACE_COLUMNS, trace_rows, trace_summary

    head = "".join(f"<th>{_e(column)}</th>" for column in TRACE_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>" for row in trace_rows(record)
    )
    return (
        f"<h2>--auto search</h2><p class=meta>{_e(trace_summary(record))}</p>"
        f'<div class="scroll"><table id="auto-trace"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    )


def _node_rows(audit: ModelAudit, rows: list[NodeAudit]) -> str:
    has_compare = audit.compare is not None
    has_numerics = audit.numerics is not None
    heads = ["#", "graph", "node", "op", "precision", "reason", "rule", "inputs", "outputs", "casts in/out"]
    numeric_heads = {"#", "weights", "FLOPs", "max|x|", "overflow", "underflow", "error", "introduced"}
    heads += ["weights", "FLOPs"]
    if has_compare:
        heads.append("before")
    if has_numerics:
        heads += ["max|x|", "overflow", "underflow", "error", "introduced"]
    thead = "".join(
        f'<th class="n">{_e(h)}</th>' if h in numeric_heads else f"<th>{_e(h)}</th>" for h in heads
    )
    body = []
    for n in rows:
        op = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
        cells = [
            _num_cell(n.index, str(n.index)),
            f"<td>{_e(n.graph)}</td>",
            f"<td>{_e(display_name(n))}</td>",
            f"<td>{_e(op)}</td>",
            f'<td data-v="{_e(n.precision)}">{_badge(n.precision)}</td>',
            f"<td>{_e(n.reason)}</td>",
            f"<td>{_e(n.rule)}</td>",
            f"<td>{_e(','.join(d or '?' for d in n.input_dtypes))}</td>",
            f"<td>{_e(','.join(d or '?' for d in n.output_dtypes))}</td>",
            f"<td>{len(n.casts_before)}/{len(n.casts_after)}</td>",
            _num_cell(n.weight_bytes, format_bytes(n.weight_bytes) if n.weight_bytes else ""),
            _num_cell(n.flops, format_count(n.flops)),
        ]
        if has_compare:
            compare = n.compare or {}
            if compare.get("status") == "matched":
                before = compare["before"]["precision"]
                cells.append(f'<td data-v="{_e(before)}">{_badge(before)}</td>')
            else:
                cells.append('<td class="new">new</td>')
        if has_numerics:
            num = n.numerics or {}
            underflow = None
            if num.get("subnormal_share") is not None:
                underflow = num["subnormal_share"] + num["zero_share"]
            overflow = num.get("overflow_share")
            cells += [
                _num_cell(num.get("max_abs"), format_float(num.get("max_abs"))),
                _num_cell(overflow, format_share(overflow), "n bad" if overflow else "n"),
                _num_cell(underflow, format_share(underflow)),
                _num_cell(num.get("error_rel"), format_float(num.get("error_rel"))),
                _num_cell(num.get("error_introduced"), format_float(num.get("error_introduced"))),
            ]
        body.append(f'<tr data-i="{n.index}">' + "".join(cells) + "</tr>")
    return (
        '<div class="scroll"><table id="nodes" class="sortable">'
        f"<thead><tr>{thead}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def render_html(audit: ModelAudit, view: ReportView | None = None) -> str:
    """The whole report as one HTML page."""
    view = view or ReportView()
    summary = summarize(audit)
    rows = view.select(audit.nodes)
    title = f"mpcompile report: {audit.model_name or 'model'}"
    meta = [f"producer {audit.producer}" if audit.producer else ""]
    meta.append("opsets " + ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in sorted(audit.opsets.items())))
    if audit.mpcompile:
        meta.append(
            "converted by mpcompile (" + ", ".join(f"{k}={v}" for k, v in audit.mpcompile.items()) + ")"
        )
    if audit.assumed_dims:
        meta.append("assumed dims " + ", ".join(f"{k}={v}" for k, v in audit.assumed_dims.items()))
    if audit.compare:
        c = audit.compare
        meta.append(
            f"compared with {c['original']}: {c['matched']} matched, {c['new']} new, {len(c['removed'])} removed"
        )
    notes = "".join(f'<p class="note">{_e(note)}</p>' for note in audit.notes)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        f'<h1>{_e(title)}</h1><div class="meta">{_e(" · ".join(m for m in meta if m))}</div>'
        + _summary_section(audit, summary)
        + "<h2>FLOPs by precision and op</h2>"
        + flops_chart_svg(summary["flops"]["by_op"], summary["flops"]["by_precision"])
        + _top_fp32_section(summary)
        + _numerics_section(audit.numerics)
        + _auto_section(audit.auto)
        + f"<h2>Nodes ({len(rows)} of {len(audit.nodes)})</h2>"
        + '<input id="filter" type="search" placeholder="filter rows (name, op, reason...)">'
        + _node_rows(audit, rows)
        + notes
        + f"<script>{_JS}</script></body></html>\n"
    )
