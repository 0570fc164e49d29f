"""``mpcompile report`` on the command line: formats, options, one-line errors with exit codes."""

from __future__ import annotations

import json

import onnx

from mpcompile.cli import main
from mpcompile.errors import ExitCode
from tests.report_models import mixed_model, planted_model


def write(tmp_path, model, name="m.onnx"):
    path = tmp_path / name
    onnx.save(model, path)
    return path


def test_table_on_stdout(tmp_path, capsys):
    path = write(tmp_path, mixed_model())
    assert main(["report", str(path), "--precision", "fp16"]) == 0
    out = capsys.readouterr().out
    assert "nodes (2 of 4)" in out and "proj" in out and "softmax" not in out.split("nodes (2 of 4)")[1]


def test_output_formats_from_extension(tmp_path, capsys):
    path = write(tmp_path, mixed_model())
    for name, check in (
        ("r.json", lambda text: json.loads(text)["schema_version"] == 1),
        ("r.csv", lambda text: text.startswith("index,graph,name")),
        ("r.html", lambda text: text.startswith("<!DOCTYPE html>")),
        ("r.txt", lambda text: "mpcompile report: m.onnx" in text),
    ):
        target = tmp_path / name
        assert main(["report", str(path), "-o", str(target)]) == 0
        assert check(target.read_text(encoding="utf-8")), name
    assert main(["report", str(path), "--format", "json", "--top", "1", "--sort", "flops"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [n["name"] for n in document["nodes"]] == ["proj"]


def test_compare_and_numerics(tmp_path, capsys):
    from onnxconverter_common import float16

    original = planted_model(factor=8e3)
    source = write(tmp_path, original, "fp32.onnx")
    converted = write(tmp_path, float16.convert_float_to_float16(original, keep_io_types=True), "fp16.onnx")
    code = main(
        [
            "report",
            str(converted),
            "--compare",
            str(source),
            "--numerics",
            "--shape",
            "batch:4",
            "--format",
            "json",
        ]
    )
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["numerics"]["error_sources"][0]["name"] == "planted"


def test_errors_are_one_line_with_exit_codes(tmp_path, capsys):
    path = write(tmp_path, mixed_model())
    assert main(["report", str(tmp_path / "missing.onnx")]) == ExitCode.INPUT_NOT_FOUND
    assert main(["report", str(path), "--shape", "x:1x2"]) == ExitCode.USAGE
    assert main(["report", str(path), "-o", str(tmp_path / "r.pdf")]) == ExitCode.USAGE
    assert main(["report", str(path), "-o", str(tmp_path / "no" / "r.json")]) == ExitCode.OUTPUT_NOT_WRITABLE
    err = capsys.readouterr().err
    assert all(line.startswith("error: ") for line in err.strip().splitlines())
    assert "Traceback" not in err
