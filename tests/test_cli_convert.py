"""``mpcompile convert`` on the command line."""

from __future__ import annotations

import json

import onnx

import models
from mpcompile.cli import main


def write_encoder(tmp_path):
    path = tmp_path / "encoder.onnx"
    onnx.save(models.build("bert_encoder"), path)
    return path


def test_convert_prints_json_summary(tmp_path, capsys):
    source = write_encoder(tmp_path)
    assert main(["convert", str(source), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["output"] == str(tmp_path / "encoder.fp16.onnx")  # default output path
    assert summary["precision"] == "fp16" and summary["target"] == "cuda"
    assert summary["stats"]["casts_added"] == 3
    assert summary["stats"]["nodes_by_precision"]["fp16"] > 0
    onnx.checker.check_model(str(tmp_path / "encoder.fp16.onnx"), full_check=True)


def test_convert_quiet_prints_nothing(tmp_path, capsys):
    source = write_encoder(tmp_path)
    assert main(["convert", str(source), "-o", str(tmp_path / "out.onnx"), "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_convert_overrides_and_report(tmp_path, capsys):
    source = write_encoder(tmp_path)
    report = tmp_path / "report.json"
    output = tmp_path / "out.onnx"
    code = main(
        ["convert", str(source), "-o", str(output), "--block-op", "Softmax", "--report", str(report), "-q"]
    )
    assert code == 0
    data = json.loads(report.read_text())
    softmax = [node for node in data["nodes"] if node["op_type"] == "Softmax"]
    assert softmax and all(
        node["precision"] == "fp32" and node["reason"] == "user-block-op" for node in softmax
    )


def test_convert_bad_policy_file_is_one_line_error(tmp_path, capsys):
    source = write_encoder(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text("nonsense = [")
    code = main(["convert", str(source), "--policy", str(policy)])
    err = capsys.readouterr().err
    assert code == 13
    assert err.count("\n") == 1 and "invalid TOML" in err


def test_convert_already_converted_exits_8_and_writes_nothing(tmp_path, capsys):
    source = write_encoder(tmp_path)
    first = tmp_path / "first.onnx"
    assert main(["convert", str(source), "-o", str(first), "-q"]) == 0
    second = tmp_path / "second.onnx"
    assert main(["convert", str(first), "-o", str(second)]) == 8
    assert not second.exists()
    assert "already converted" in capsys.readouterr().err


def test_convert_training_flag_needs_an_artifact_folder(tmp_path, capsys):
    folder = tmp_path / "not_artifacts"
    folder.mkdir()
    assert main(["convert", str(folder), "--training", "-o", str(tmp_path / "out")]) == 16
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "training_model.onnx" in err
