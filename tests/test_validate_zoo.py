"""validate on every model of the zoo converted by mpcompile (FP16-faithful CPU; no GPU here)."""

from __future__ import annotations

import json

import onnx
import pytest

import models
import mpcompile
from mpcompile.cli import main
from mpcompile.validate import SCHEMA

pytest.importorskip("onnxruntime", reason="validate runs models in onnxruntime")

# Models whose FP16 conversion must stay within the default FP16 tolerances (rtol = atol = 1e-2).
MUST_PASS = {"mlp", "resnet", "bert_encoder", "gpt_block", "control_flow", "regression_mask_finfo_min"}


@pytest.mark.parametrize("name", sorted(models.ZOO))
def test_zoo_model_validates(name):
    original = models.ZOO[name]()
    converted = mpcompile.convert(original, allow_qdq=name == "qdq").model
    result = mpcompile.validate(original, converted, runs=2, warmup=1)
    data = json.loads(result.to_json())
    assert data["schema"] == SCHEMA and data["passed"] == bool(result)
    (cpu,) = [row for row in data["eps"] if row["status"] != "skipped"]
    assert cpu["accuracy_mode"] == "fp16-faithful"
    assert {o["name"] for o in cpu["outputs"]} == {o.name for o in original.graph.output}
    assert cpu["latency"]["original"]["runs"] == 2
    if name in MUST_PASS:
        assert result, result.to_json()


def test_cli_prints_table_and_json_for_the_encoder(tmp_path, capsys):
    original = models.ZOO["bert_encoder"]()
    paths = [str(tmp_path / "enc.onnx"), str(tmp_path / "enc.fp16.onnx")]
    onnx.save(original, paths[0])
    assert main(["convert", paths[0], "-o", paths[1], "-q"]) == 0
    assert main(["validate", *paths, "--runs", "3", "--shape", "sequence:32"]) == 0
    table = capsys.readouterr().out
    assert "last_hidden_state" in table and "pooler_output" in table and "speedup" in table
    assert main(["validate", *paths, "--runs", "0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    specs = {spec["name"]: spec for spec in data["inputs"]["specs"]}
    assert specs["input_ids"]["kind"] == "token_ids" and specs["attention_mask"]["kind"] == "mask"
