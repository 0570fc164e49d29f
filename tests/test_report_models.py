"""The report on the model zoo converted by mpcompile: counts and shares against the plan."""

from __future__ import annotations

import json
import math
from collections import Counter

import onnx
import pytest

import models
from mpcompile import convert, convert_file
from mpcompile.report import build_report, render, write_report
from mpcompile.report.summary import summarize

ZOO_CONVERTIBLE = ["mlp", "resnet", "bert_encoder", "gpt_block", "control_flow", "regression_unnamed_nodes"]


@pytest.fixture(scope="module", params=ZOO_CONVERTIBLE)
def converted(request):
    original = models.ZOO[request.param]()
    return original, convert(original)


def test_node_decisions_match_the_plan(converted):
    original, result = converted
    audit = build_report(result.model, original=original)
    plan = {_key(node.name, [v.name for v in node.outputs]): d for node, d in result.plan.items()}
    matched = [n for n in audit.nodes if n.compare["status"] == "matched"]
    assert Counter(n.precision for n in matched) == Counter(d.precision.value for _, d in result.plan.items())
    for node in matched:  # unnamed nodes are keyed by their first output, as mpcompile leaves them
        decision = plan[_key(node.name, node.output_names)]
        expected = (decision.precision.value, decision.reason, decision.rule)
        assert (node.precision, node.reason, node.rule) == expected, node.name
    # Everything mpcompile added is a Cast it stamped as such.
    assert {(n.op_type, n.reason) for n in audit.nodes if n.compare["status"] == "new"} <= {("Cast", "cast")}
    assert all(n.source == "metadata" for n in audit.nodes)


def test_shares_add_up_and_weights_match_the_converter(converted):
    _original, result = converted
    summary = summarize(build_report(result.model))
    for key in ("nodes", "flops", "weight_bytes"):
        shares = [entry["share"] for entry in summary[key]["by_precision"].values()]
        assert math.isclose(sum(shares), 1.0) or sum(shares) == 0
    assert summary["weight_bytes"]["total"] == result.stats.weight_bytes_after
    counts = {p: e["count"] for p, e in summary["nodes"]["by_precision"].items()}
    assert sum(counts.values()) == summary["nodes"]["total"]
    assert summary["casts"]["count"] == sum(1 for _ in _casts(result.model))


def _key(name, outputs):
    return name or "output:" + outputs[0]


def _casts(model):
    import onnx_ir as ir

    work = model if isinstance(model, ir.Model) else ir.from_proto(model)
    return [n for n in ir.traversal.RecursiveGraphIterator(work.graph) if n.op_type == "Cast"]


def test_bert_encoder_blocked_ops_explain_the_fp32_flops():
    original = models.ZOO["bert_encoder"]()
    result = convert(original)
    summary = summarize(build_report(result.model))
    assert summary["flops"]["by_precision"]["fp16"]["share"] > 0.5  # the MatMuls went to FP16
    top = summary["fp32"]["top_ops"]
    assert top and all(entry["reason"] not in ("", "unknown") for entry in top)
    fp32_nodes = {n.name for n, d in result.plan.items() if d.precision.value == "fp32"}
    assert {entry["name"] for entry in top} <= fp32_nodes


def test_mpcompile_converted_planted_model_numerics():
    from tests.report_models import planted_model

    original = planted_model(factor=8e3)
    # static: plain convert's range run would measure the planted overflow and keep it FP32
    result = convert(original, static=True)
    audit = build_report(result.model, original=original, numerics=True, shapes=["batch=8"])
    planted = {n.name: n for n in audit.nodes}["planted"]
    assert planted.precision == "fp16" and planted.numerics["overflow_share"] > 0
    assert audit.numerics["error_sources"][0]["name"] == "planted"


def test_write_report_for_convert(tmp_path):
    original = models.ZOO["mlp"]()
    result = convert(original)
    audit = write_report(result.model, tmp_path / "report.html", original=original)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    assert audit.compare is not None
    assert render(audit, "json").startswith("{")


def test_bf16_numerics_use_bf16_rounding():
    original = models.ZOO["mlp"]()
    audit = build_report(convert(original, precision="bf16").model, original=original, numerics=True)
    assert audit.numerics["low_precision"] == "bf16"
    # BF16 keeps 8 significand bits: per-node storage error ~2^-9 relative, well under 5e-2 here.
    assert 0 < audit.numerics["output_errors"]["y"]["error_rel"] < 5e-2
    assert audit.numerics["overflow_nodes"] == []


def test_write_report_from_paths_as_convert_would(tmp_path):
    source = tmp_path / "mlp.onnx"
    onnx.save(models.ZOO["mlp"](), source)
    output = tmp_path / "mlp.fp16.onnx"
    convert_file(source, output)
    write_report(output, tmp_path / "report.json", original=source)
    document = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert document["model"]["name"] == "mlp.fp16.onnx" and document["compare"]["original"] == "mlp.onnx"
    assert document["model"]["converted_by_mpcompile"] is True
