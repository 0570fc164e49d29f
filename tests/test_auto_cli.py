"""The --auto option set, wired into a stand-in for ``mpcompile convert`` exactly as the wiring
notes in mpcompile/commands/auto_options.py say (the real command is wired by the lead)."""

from __future__ import annotations

import json
import pathlib

import click
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner

from models.sensitive import SENSITIVE
from mpcompile.auto import read_trace
from mpcompile.commands.auto_options import auto_options, auto_settings, run_auto_from_cli
from mpcompile.compiler.options import ConvertOptions
from mpcompile.errors import MpcompileError
from mpcompile.evaluate.inputs import generate_inputs


@click.command("convert")
@click.argument("model", type=click.Path(dir_okay=False, path_type=pathlib.Path))
@click.option("-o", "--output", type=click.Path(path_type=pathlib.Path), required=True)
@click.option("--allow-op", "allow_ops", multiple=True)
@click.option("--json", "as_json", is_flag=True)
@click.option("--overwrite", is_flag=True)
@auto_options
def convert_stand_in(model, output, allow_ops, as_json, overwrite):
    settings = auto_settings()
    if settings is None:
        click.echo("plain conversion")
        return
    try:
        options = ConvertOptions(allow_ops=allow_ops)  # built once at the edge, as convert does
        run_auto_from_cli(model, output, settings, overwrite=overwrite, as_json=as_json, options=options)
    except MpcompileError as exc:
        raise click.ClickException(exc.message) from None


@pytest.fixture()
def model_path(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "cancel.onnx"
    onnx.save(SENSITIVE["sensitive_cancellation"](), path)
    return path


def test_auto_json_output_and_saved_trace(model_path, tmp_path):
    feeds = generate_inputs(ir.load(model_path), seed=1)[0]
    np.savez(tmp_path / "x.npz", **feeds)
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(
        convert_stand_in,
        [str(model_path), "-o", str(out), "--auto", "--inputs", str(tmp_path / "x.npz"), "--rtol", "1e-2",
         "--atol", "1e-2", "--budget", "8", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    auto = summary["auto"]
    assert auto["passed"] and auto["budget"] == 8 and auto["evaluations"] <= 8
    # the cancellation rule predicts the planted (h + 1000) - 1000 from the reference run
    assert set(auto["range_blocked"]) == {"planted/Offset", "planted/Unoffset"}
    assert summary["reasons"]["auto:range"] == 2 and auto["evaluations"] == 2
    saved = onnx.load(out)
    onnx.checker.check_model(saved, full_check=True)
    stored = read_trace(saved)
    assert stored["steps"] == auto["steps"] and stored["inputs"].endswith("x.npz")


def test_auto_table_output(model_path, tmp_path):
    result = CliRunner().invoke(
        convert_stand_in,
        [str(model_path), "-o", str(tmp_path / "o.onnx"), "--auto", "--metric", "cosine:0.9999"],
    )
    assert result.exit_code == 0, result.output
    assert "search trace" in result.output and "auto:range" in result.output
    assert "cosine >= 0.9999" in result.output


def test_auto_only_options_need_auto(model_path, tmp_path):
    result = CliRunner().invoke(
        convert_stand_in, [str(model_path), "-o", str(tmp_path / "o.onnx"), "--rtol", "1e-3"]
    )
    assert result.exit_code == 2 and "--rtol: only with --auto" in result.output
    plain = CliRunner().invoke(convert_stand_in, [str(model_path), "-o", str(tmp_path / "o.onnx")])
    assert plain.exit_code == 0 and "plain conversion" in plain.output


def test_bad_options_are_one_line_errors(model_path, tmp_path):
    out = str(tmp_path / "o.onnx")
    both = CliRunner().invoke(
        convert_stand_in, [str(model_path), "-o", out, "--auto", "--rtol", "1e-3", "--metric", "cosine:0.9"]
    )
    assert both.exit_code != 0 and "exclude each other" in both.output
    same = CliRunner().invoke(convert_stand_in, [str(model_path), "-o", str(model_path), "--auto"])
    assert same.exit_code != 0 and "output path is the input" in same.output
    budget = CliRunner().invoke(convert_stand_in, [str(model_path), "-o", out, "--auto", "--budget", "1"])
    assert budget.exit_code == 2
    assert not pathlib.Path(out).exists()
