"""Report formats: JSON against its schema, CSV, terminal table filters, self-contained HTML."""

from __future__ import annotations

import csv
import io
import json
import re

import jsonschema
import pytest
from onnx import helper

from models.builder import make_model, value_info, weight
from mpcompile.report import ReportView, build_report, format_for_path, render
from mpcompile.report.csv_format import COLUMNS
from mpcompile.report.json_format import load_schema
from tests.report_models import mixed_model, planted_model

EVIL = "<script>alert(1)</script>"


def evil_model():
    """Names, ops' rule and reason that try to break out of HTML."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name=EVIL),
        helper.make_node("Relu", ["h"], ['"><img src=x onerror=alert(2)>'], name="a&b\"c'd"),
    ]
    model = make_model(
        nodes,
        [value_info("x", [2, 4])],
        [value_info('"><img src=x onerror=alert(2)>', [2, 4])],
        [weight("w", (4, 4), scale=0.3)],
    )
    from tests.report_models import stamp

    return stamp(model, {EVIL: ("fp16", "allow", "</td><script>alert(3)</script>")})


def validate(document):
    jsonschema.Draft202012Validator.check_schema(load_schema())
    jsonschema.Draft202012Validator(load_schema()).validate(document)


def test_json_matches_schema_plain_and_with_compare_and_numerics():
    from onnxconverter_common import float16

    validate(json.loads(render(build_report(mixed_model()), "json")))
    original = planted_model(factor=8e3)
    converted = float16.convert_float_to_float16(original, keep_io_types=True)
    text = render(build_report(converted, original=original, numerics=True, shapes=["batch=4"]), "json")
    document = json.loads(text)  # strict JSON: inf is written as a string
    assert "Infinity" not in text
    validate(document)
    planted = next(n for n in document["nodes"] if n["name"] == "planted")
    assert planted["numerics"]["error_introduced"] == "inf"
    assert document["compare"]["new"] == 2


def test_schema_rejects_a_broken_document():
    document = json.loads(render(build_report(mixed_model()), "json"))
    document["nodes"][0]["flops"] = "many"
    with pytest.raises(jsonschema.ValidationError):
        validate(document)
    del document["summary"]
    with pytest.raises(jsonschema.ValidationError):
        validate(document)


def test_json_filters_rows_but_not_summary():
    view = ReportView(precisions=("fp32",), sort="flops", top=1)
    document = json.loads(render(build_report(mixed_model()), "json", view))
    assert [n["name"] for n in document["nodes"]] == ["softmax"]
    assert document["summary"]["nodes"]["total"] == 4
    assert document["filters"] == {"ops": [], "precisions": ["fp32"], "top": 1, "sort": "flops"}


def test_csv_has_fixed_columns_and_one_row_per_node():
    rows = list(csv.DictReader(io.StringIO(render(build_report(mixed_model(), shapes=["seq=128"]), "csv"))))
    assert tuple(rows[0].keys()) == COLUMNS
    assert [r["name"] for r in rows] == ["x_cast", "proj", "h_cast", "softmax"]
    proj = rows[1]
    assert (proj["precision"], proj["reason"], proj["rule"]) == ("fp16", "allow", "allow:MatMul")
    assert proj["input_dtypes"] == "float16;float16" and proj["flops"] == str(2 * 128 * 8 * 16)


def test_table_filters_and_sorting():
    audit = build_report(mixed_model())
    text = render(audit, "table", ReportView(ops=("matmul",)))
    assert "nodes (1 of 4)" in text and "proj" in text
    text = render(audit, "table", ReportView(sort="flops", top=2))
    table = text[text.index("nodes (2 of 4)") :]
    assert table.index("proj") < table.index("softmax")
    assert "h_cast" not in table
    assert "What keeps this model out of low precision" in text and "block:Softmax" in text


def test_html_escapes_every_name():
    page = render(build_report(evil_model()), "html")
    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "alert(3)</script>" not in page and "onerror=alert(2)>" not in page
    assert "a&amp;b&quot;c&#x27;d" in page
    assert page.count("<script>") == 1  # our own sorting script only


def test_html_is_self_contained_with_chart_and_sortable_table():
    page = render(build_report(mixed_model()), "html")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page
    assert "Content-Security-Policy" in page
    svg = page[page.index("<svg") : page.index("</svg>")]
    assert svg.count("<rect") >= 3 and "MatMul" in svg and "fp16" in svg
    assert '<table id="nodes" class="sortable">' in page
    assert page.count('<tr data-i="') == 4


def test_format_from_extension():
    assert format_for_path("r.JSON") == "json" and format_for_path("r.htm") == "html"
    from mpcompile.report import ReportOptionError

    with pytest.raises(ReportOptionError):
        format_for_path("report.pdf")


def test_narrow_terminal_keeps_the_essential_columns():
    from rich.console import Console

    from mpcompile.report.terminal import node_table

    audit = build_report(mixed_model())
    console = Console(file=io.StringIO(), width=80, force_terminal=True)
    narrow = [c.header for c in node_table(audit, ReportView(), console.width).columns]
    assert narrow == ["node", "op", "precision", "FLOPs"]
    wide = [c.header for c in node_table(audit, ReportView()).columns]
    assert {"reason", "rule", "in", "out", "casts", "weights"} <= set(wide)


def test_the_auto_search_is_in_every_report_format():
    """A model from ``convert --auto`` carries its search record; the report shows it (JSON
    under ``auto``, the terminal table and the HTML page as a summary line and the trace)."""
    from models.sensitive import SENSITIVE
    from mpcompile.auto import RangeRules, auto_convert, read_trace

    # Without the cancellation rule the planted cancellation is found by the search.
    # The per-element tolerance, whose summary line is checked below (the default is per output).
    result = auto_convert(
        SENSITIVE["sensitive_cancellation"](),
        rules=RangeRules(cancellation_share=float("inf")),
        rtol=1e-2,
        atol=1e-2,
    )
    record = read_trace(result.model)
    audit = build_report(result.model)
    document = json.loads(render(audit, "json"))
    validate(document)
    assert document["auto"] == record and [step["phase"] for step in record["steps"]][-1] == "confirm"
    text = render(audit, "table")
    assert "--auto search: meets |y - y_fp32| <= 0.01 + 0.01·|y_fp32|" in text
    assert f"in {record['sessions']} ONNX Runtime session(s)" in text
    assert all(step["tried"][:30] in text for step in record["steps"])
    page = render(audit, "html")
    trace = page[page.index('id="auto-trace"') :]
    trace = trace[: trace.index("</table>")]
    assert "<h2>--auto search</h2>" in page and trace.count("<tr>") == len(record["steps"]) + 1  # + header
    plain = json.loads(render(build_report(mixed_model()), "json"))
    assert plain["auto"] is None and "--auto search" not in render(build_report(mixed_model()), "html")
