"""What mpcompile prints is safe and says what happened.

Model strings (node names, op types, graph names) cannot drive a terminal, reorder text or run as
spreadsheet formulas in any report format; a failing command writes one ``error:`` line on stderr;
``--json`` prints one JSON object; the convert summary tells Casts inserted from Casts folded,
and says why no node went low precision; FLOP shares count If branches the same way in
``--auto`` and ``report``; the validate table fits 80 columns.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console

import models
from models.builder import FLOAT, GraphBuilder, make_model, tiny_fp32_model, value_info
from mpcompile.text import csv_cell, markup, printable

REPO = pathlib.Path(__file__).resolve().parents[1]

TITLE_AND_CLEAR = "\x1b]0;pwned\x07\x1b[2J"
FORMULA = '=HYPERLINK("http://x","y")'
MARKUP = "[bold]loud[/bold]:smile:"
RTL = "abc\u202edcba"
C1 = "c1\x9bchar\x7f"
HOSTILE = (TITLE_AND_CLEAR, FORMULA, MARKUP + RTL)
# Characters no output may carry raw: C0 but newline, DEL, C1, bidi embeddings/overrides/isolates.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def hostile_model() -> onnx.ModelProto:
    model = tiny_fp32_model()
    for node, name in zip(model.graph.node, HOSTILE, strict=True):
        node.name = name
    model.graph.name = RTL
    model.graph.node[2].output[0] = "y"
    model.graph.node[1].output[0] = C1  # a value name: the Relu's input, shown in Cast names
    model.graph.node[2].input[0] = C1
    return model


@pytest.fixture
def hostile_path(tmp_path) -> pathlib.Path:
    path = tmp_path / "hostile.onnx"
    onnx.save(hostile_model(), path)
    return path


# -- the helpers ---------------------------------------------------------------------------------


def test_printable_escapes_controls_and_bidi_and_keeps_the_rest():
    assert printable(TITLE_AND_CLEAR) == "\\x1b]0;pwned\\x07\\x1b[2J"
    assert printable(RTL) == "abc\\u202edcba"
    assert printable("\u2066x\u2069\x9b\x7f\t\n") == "\\u2066x\\u2069\\x9b\\x7f\\x09\\x0a"
    assert printable("bert/layer.0/MatMul_1 ü €") == "bert/layer.0/MatMul_1 ü €"


def test_markup_is_shown_literally_by_rich():
    console = Console(file=io.StringIO(), width=200, color_system=None, emoji=False)
    console.print(f"[bold]{markup(MARKUP + TITLE_AND_CLEAR)}[/]")
    assert console.file.getvalue().strip() == "[bold]loud[/bold]:smile:\\x1b]0;pwned\\x07\\x1b[2J"


@pytest.mark.parametrize("first", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_cell_neutralises_formula_starts(first):
    cell = csv_cell(first + "1+1")
    assert cell.startswith("'") and not RAW_CONTROL.search(cell)
    assert csv_cell("MatMul") == "MatMul"


# -- the report in every format ------------------------------------------------------------------


def test_report_table_on_a_terminal_carries_no_model_control(hostile_path):
    from mpcompile.report import build_report
    from mpcompile.report.terminal import print_report

    buffer = io.StringIO()
    console = Console(file=buffer, width=250, force_terminal=True, color_system="standard", emoji=False)
    print_report(build_report(str(hostile_path)), console)
    text = re.sub(r"\x1b\[[0-9;]*m", "", buffer.getvalue())  # rich's own colours
    assert not RAW_CONTROL.search(text)
    assert "\\x1b]0;pwned\\x07\\x1b[2J" in text and "abc\\u202edcba" in text
    assert MARKUP in text  # markup in a name is shown, not obeyed


def test_report_cli_table_csv_html_json(hostile_path, run_cli):
    table = run_cli("report", hostile_path)
    assert table.exit_code == 0 and not RAW_CONTROL.search(table.stdout) and MARKUP in table.stdout

    csv_run = run_cli("report", hostile_path, "--format", "csv")
    assert csv_run.exit_code == 0 and not RAW_CONTROL.search(csv_run.stdout)
    rows = list(csv.DictReader(io.StringIO(csv_run.stdout)))
    assert [row["name"] for row in rows] == [
        "\\x1b]0;pwned\\x07\\x1b[2J",
        "'" + FORMULA,
        MARKUP + "abc\\u202edcba",
    ]
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row.values())

    html = run_cli("report", hostile_path, "--format", "html").stdout
    assert not RAW_CONTROL.search(html) and "abc\\u202edcba" in html
    assert "\\x1b]0;pwned\\x07\\x1b[2J" in html

    document = run_cli("report", hostile_path, "--format", "json").stdout
    assert not RAW_CONTROL.search(document) and "\\u202e" in document
    names = [node["name"] for node in json.loads(document)["nodes"]]
    assert names == list(HOSTILE)  # JSON escapes, and gives the exact names back


def test_convert_summary_and_errors_carry_no_model_control(hostile_path, tmp_path, run_cli):
    done = run_cli("convert", hostile_path, "-o", tmp_path / "out.onnx")
    assert done.exit_code == 0 and not RAW_CONTROL.search(done.stdout + done.stderr)
    # A policy naming a node with control characters is quoted back in the error line.
    policy = tmp_path / "policy.toml"
    policy.write_text('[ops]\nblock = ["\\u001b[2J\\u202e"]\nbogus = 1\n', encoding="utf-8")
    refused = run_cli("convert", hostile_path, "-o", tmp_path / "o2.onnx", "--policy", policy)
    assert refused.exit_code != 0 and not RAW_CONTROL.search(refused.stderr)
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("error: ")


# -- one line on stderr --------------------------------------------------------------------------


def _runtime_error_model() -> onnx.ModelProto:
    """Passes every check, then fails inside ORT's Reshape at run time (ORT logs an E line)."""
    c = numpy_helper.from_array(np.ones((2, 3), np.float32), "c")
    s = numpy_helper.from_array(np.array([4, 4], np.int64), "s")
    nodes = [
        helper.make_node("Reshape", ["c", "s"], ["r"], name="reshape"),
        helper.make_node("Add", ["x", "r"], ["y"], name="add"),
    ]
    return make_model(nodes, [value_info("x", [4, 4])], [value_info("y", [4, 4])], [c, s])


def _mpcompile(*args: object, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "mpcompile.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=300,
    )


@pytest.fixture(scope="module")
def failing_inputs(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("failing")
    onnx.save(_runtime_error_model(), folder / "runtime_error.onnx")
    onnx.save(tiny_fp32_model(), folder / "tiny.onnx")
    (folder / "garbage.onnx").write_bytes(b"\x00not a protobuf\xff" * 7)
    return folder


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("convert", "tiny.onnx", "--bogus"), 2),
        (("convert",), 2),
        (("frobnicate",), 2),
        (("convert", "tiny.onnx", "--precision", "fp8"), 2),
        (("report", "tiny.onnx", "--top", "-1"), 2),
        (("convert", "missing.onnx"), 3),
        (("convert", "garbage.onnx", "-o", "out.onnx"), 4),
        (("validate", "runtime_error.onnx", "runtime_error.onnx", "--runs", "0"), None),
        (("convert", "runtime_error.onnx", "-o", "out.onnx", "--validate"), None),
        (("report", "runtime_error.onnx", "--numerics"), None),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, tuple) else str(value),
)
def test_a_failing_command_writes_one_error_line(failing_inputs, args, code):
    """In a child process: ORT writes its log to fd 2 directly, past Python's sys.stderr."""
    done = _mpcompile(*args, cwd=failing_inputs)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert done.returncode not in (0, 70) and (code is None or done.returncode == code)


def test_a_failed_shape_inference_is_a_note_not_a_log_line(monkeypatch, capsys):
    import onnx_ir as ir

    import mpcompile
    from mpcompile.passes import infer_types

    def fail(_proto):
        raise onnx.shape_inference.InferenceError("[ShapeInferenceError] planted failure")

    monkeypatch.setattr(infer_types, "infer_shapes", fail)
    # Not loaded through load_model, and without value_info: InferTypesPass runs the inference.
    result = mpcompile.convert(ir.from_proto(tiny_fp32_model()))
    assert any("shape inference failed" in note and "planted failure" in note for note in result.notes)
    assert capsys.readouterr().err == ""


# -- summaries -----------------------------------------------------------------------------------


def test_json_with_validate_is_one_object(tmp_path, run_cli):
    source = tmp_path / "tiny.onnx"
    onnx.save(tiny_fp32_model(), source)
    done = run_cli("convert", source, "-o", tmp_path / "out.onnx", "--json", "--validate")
    assert done.exit_code == 0, done.stderr
    document = json.loads(done.stdout)  # the whole of stdout, nothing after it
    assert document["validation"]["passed"] is True
    assert document["stats"]["nodes_by_precision"]["fp16"] == 3


def test_folder_json_with_validate_is_one_object(tmp_path, run_cli):
    folder = tmp_path / "export"
    folder.mkdir()
    onnx.save(tiny_fp32_model(), folder / "a.onnx")
    onnx.save(tiny_fp32_model(), folder / "b.onnx")
    done = run_cli("convert", folder, "-o", tmp_path / "out", "--json", "--validate")
    assert done.exit_code == 0, done.stderr
    document = json.loads(done.stdout)
    validation = document["validation"]
    assert validation["passed"] is True and [f["file"] for f in validation["files"]] == ["a.onnx", "b.onnx"]


def _model_with_folded_casts() -> onnx.ModelProto:
    """x -> Cast(fp16) -> Cast(fp32) -> MatMul -> Relu: the model's own round trip is folded away."""
    nodes = [
        helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16, name="to16"),
        helper.make_node("Cast", ["x16"], ["x32"], to=TensorProto.FLOAT, name="to32"),
        helper.make_node("Cast", ["x32"], ["x16b"], to=TensorProto.FLOAT16, name="to16b"),
        helper.make_node("Cast", ["x16b"], ["x32b"], to=TensorProto.FLOAT, name="to32b"),
        helper.make_node("Relu", ["x32b"], ["y"], name="relu"),
    ]
    return make_model(nodes, [value_info("x", [2, 4])], [value_info("y", [2, 4])])


def test_summary_reports_casts_inserted_and_folded_apart(tmp_path, run_cli):
    source = tmp_path / "casts.onnx"
    onnx.save(_model_with_folded_casts(), source)
    document = json.loads(run_cli("convert", source, "-o", tmp_path / "a.onnx", "--json").stdout)
    stats = document["stats"]
    assert stats["casts_added"] == stats["casts_after"] - stats["casts_before"] < 0
    assert stats["casts_added"] == stats["casts_inserted"] - stats["casts_folded"]
    table = run_cli("convert", source, "-o", tmp_path / "b.onnx", "--overwrite").stdout
    assert f"Casts inserted │ {stats['casts_inserted']}".replace(" ", "") in table.replace(" ", "")
    assert f"Castsfoldedaway│{stats['casts_folded']}" in table.replace(" ", "")
    net = f"{stats['casts_before']}->{stats['casts_after']}({stats['casts_added']:+d})"
    assert net in table.replace(" ", "")
    assert "Casts added" not in table


@pytest.mark.parametrize("options", [("--precision", "bf16", "--target", "cpu"), ("--target", "cpu")])
def test_a_conversion_with_no_low_node_says_why(tmp_path, run_cli, options):
    source = tmp_path / "encoder.onnx"
    onnx.save(models.build("bert_encoder"), source)
    document = json.loads(run_cli("convert", source, "-o", tmp_path / "o.onnx", "--json", *options).stdout)
    assert not {"fp16", "bf16"} & set(document["stats"]["nodes_by_precision"])
    reasons = document["reasons"]
    dominant = max((r for r in reasons if r.startswith("no-kernel:")), key=reasons.get)
    (note,) = [n for n in document["notes"] if n.startswith("no node is")]
    assert f"{dominant} keeps {reasons[dominant]} of" in note and "MatMul" in note


def test_a_conversion_with_low_nodes_has_no_such_note(tmp_path, run_cli):
    source = tmp_path / "tiny.onnx"
    onnx.save(tiny_fp32_model(), source)
    document = json.loads(run_cli("convert", source, "-o", tmp_path / "o.onnx", "--json").stdout)
    assert not any(n.startswith("no node is") for n in document["notes"])


def _branchy_decoder(features: int = 16) -> onnx.ModelProto:
    """A merged decoder's shape: all compute inside the two branches of one If (cache or not)."""
    g = GraphBuilder("merged")
    x = g.input("x", FLOAT, [2, features])
    use_cache = g.input("use_cache", models.builder.BOOL, [])
    branches = {}
    for branch in ("with_past", "without_past"):
        body = GraphBuilder(branch, seed=len(branch))
        with body.scope(branch):
            h = body.op("MatMul", [x, body.weight(f"{branch}_w1", [features, features], scale=0.2)])
            h = body.op("Relu", [body.op("Add", [h, body.weight(f"{branch}_b", [features], scale=0.1)])])
            h = body.op("MatMul", [h, body.weight(f"{branch}_w2", [features, features], scale=0.2)])
        body.output(h, FLOAT, [2, features], f"{branch}_out")
        branches[branch] = body.graph()
    out = g.op(
        "If", [use_cache], {"then_branch": branches["with_past"], "else_branch": branches["without_past"]}
    )
    g.output(g.op("Add", [out, x]), FLOAT, [2, features], "y")
    return g.model(17)


def test_auto_and_report_count_if_branches_the_same_way(tmp_path):
    from mpcompile.auto import auto_convert
    from mpcompile.report import build_report
    from mpcompile.report.summary import summarize

    feeds = {"x": np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)}
    feeds["use_cache"] = np.array(True)
    np.savez(tmp_path / "feeds.npz", **feeds)
    result = auto_convert(_branchy_decoder(), inputs=str(tmp_path / "feeds.npz"))
    converted = tmp_path / "converted.onnx"
    onnx.save(result.model, converted)
    summary = summarize(build_report(str(converted)))
    flops = summary["flops"]
    report_share = flops["by_precision"].get("fp16", {}).get("share", 0.0)
    assert report_share > 0.9  # the branches' MatMuls are FP16
    assert result.fp16_flop_share == pytest.approx(report_share, abs=1e-9)


def test_validate_table_fits_80_columns_without_cutting_numbers():
    from mpcompile.validate import render
    from mpcompile.validate.compare import OutputComparison
    from mpcompile.validate.results import EpResult, ValidationResult

    output = OutputComparison(
        name="present.23.decoder.attention.value_cache_output_name",
        shape=[1, 8, 128, 64],
        dtype="float32",
        reference_dtype="float32",
        elements=65536,
        max_abs_err=1.234567e-05,
        max_rel_err=0.0123456,
        mean_abs_err=9.87654e-07,
        rel_l2_err=3.21e-04,
        cosine_similarity=0.99999912,
        abs_err_percentiles={"p99": 4.5678e-06},
        nan=12,
        inf=3,
        new_nonfinite=15,
        top1_agreement=0.987654,
        passed=False,
        failure="15 new NaN/Inf and 1234 of 65536 elements outside tolerance",
    )
    row = EpResult(ep="cpu", provider="CPUExecutionProvider", status="failed", outputs=[output])
    result = ValidationResult(
        original="a.onnx",
        converted="b.onnx",
        low_precision="fp16",
        rtol={"default": 1e-2},
        atol={"default": 1e-2},
        inputs={},
        onnxruntime="x",
        eps=[row],
    )
    console = Console(file=io.StringIO(), width=80, color_system=None)
    render.render_result(result, console)
    text = console.file.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    for number in ("1.23e-05", "0.0123", "9.88e-07", "0.000321", "4.57e-06", "0.999999", "12/3", "98.77%"):
        assert number in text, number
    cells = [line.split("│") for line in text.splitlines() if line.startswith("│")]
    column = lambda index: "".join(cell[index].strip() for cell in cells)  # noqa: E731
    assert column(1) == output.name  # folded, not cut
    assert column(6).replace(" ", "") == ("no: " + output.failure).replace(" ", "")
