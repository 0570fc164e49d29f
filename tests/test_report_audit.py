"""The audit: precision/reason/rule per node, FLOPs, weights, Casts, subgraphs, shapes."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.builder import make_model, value_info, weight
from mpcompile import errors
from mpcompile.evaluate.shapes import DEFAULT_BATCH, DEFAULT_DIM
from mpcompile.report import ReportOptionError, audit_model, build_report
from mpcompile.report.summary import summarize
from tests.report_models import mixed_model


def by_name(audit):
    return {n.name: n for n in audit.nodes}


def test_stamped_decisions_are_read_back():
    nodes = by_name(audit_model(mixed_model()))
    assert (nodes["proj"].precision, nodes["proj"].reason, nodes["proj"].rule) == (
        "fp16",
        "allow",
        "allow:MatMul",
    )
    assert (nodes["softmax"].precision, nodes["softmax"].reason) == ("fp32", "block")
    assert all(n.source == "metadata" for n in nodes.values())
    assert nodes["proj"].input_dtypes == ["float16", "float16"]
    assert nodes["proj"].casts_before == ["x_cast"] and nodes["proj"].casts_after == ["h_cast"]
    assert nodes["softmax"].casts_before == ["h_cast"]


def test_flops_weights_and_cast_bytes_with_default_dims():
    audit = audit_model(mixed_model())
    nodes = by_name(audit)
    assert audit.assumed_dims == {"batch": DEFAULT_BATCH, "seq": DEFAULT_DIM}
    rows = DEFAULT_BATCH * DEFAULT_DIM
    assert nodes["proj"].flops == 2 * rows * 8 * 16
    assert nodes["proj"].flops_method == "shape"
    assert nodes["softmax"].flops == rows * 16
    assert nodes["proj"].weight_bytes == 8 * 16 * 2
    assert nodes["x_cast"].cast_bytes == rows * 8 * (4 + 2)
    assert nodes["h_cast"].cast_bytes == rows * 16 * (2 + 4)


def test_summary_shares():
    summary = summarize(audit_model(mixed_model(), shapes=["seq=4"]))
    assert summary["nodes"]["by_precision"]["fp16"] == {"count": 2, "share": 0.5}
    flops = summary["flops"]
    assert flops["total"] == 2 * 4 * 8 * 16 + 4 * 16
    assert flops["by_precision"]["fp16"]["flops"] == 2 * 4 * 8 * 16
    assert flops["by_precision"]["fp16"]["share"] == pytest.approx(1024 / (1024 + 64))
    assert summary["weight_bytes"] == {"total": 256, "by_precision": {"fp16": {"bytes": 256, "share": 1.0}}}
    assert summary["casts"] == {"count": 2, "bytes_moved": 4 * 8 * 6 + 4 * 16 * 6, "unknown_size": 0}
    top = summary["fp32"]["top_ops"]
    assert [(t["name"], t["reason"], t["rule"]) for t in top] == [("softmax", "block", "block:Softmax")]
    assert summary["fp32"]["by_reason"] == {
        "block": {"count": 1, "flops": 64, "share": pytest.approx(64 / 1088)}
    }


def test_shape_options():
    assert by_name(audit_model(mixed_model(), shapes=["x:2x3x8"]))["softmax"].flops == 2 * 3 * 16
    assert by_name(audit_model(mixed_model(), shapes=["seq:5", "batch=2"]))["softmax"].flops == 2 * 5 * 16
    with pytest.raises(ReportOptionError):
        audit_model(mixed_model(), shapes=["nosuch:1x2"])
    with pytest.raises(ReportOptionError):
        audit_model(mixed_model(), shapes=["x:1x2"])  # wrong rank
    with pytest.raises(ReportOptionError) as info:
        audit_model(mixed_model(), shapes=["seq=abc"])
    assert info.value.exit_code == errors.ExitCode.USAGE


def test_flops_of_gemm_conv_conv_transpose_and_attention():
    nodes = [
        helper.make_node("Gemm", ["a", "gw", "gb"], ["g"], name="gemm", transB=1),
        helper.make_node("Conv", ["img", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1], group=2),
        helper.make_node("ConvTranspose", ["c", "tw"], ["t"], name="deconv", strides=[2, 2]),
    ]
    inits = [
        weight("gw", (6, 5), scale=0.3),
        weight("gb", (6,), scale=0.3),
        weight("cw", (8, 2, 3, 3), scale=0.3),
        weight("cb", (8,), scale=0.3),
        weight("tw", (8, 3, 2, 2), scale=0.3),
    ]
    model = make_model(
        nodes,
        [value_info("a", [4, 5]), value_info("img", [1, 4, 10, 10])],
        [value_info("g", [4, 6]), value_info("t", [1, 3, 20, 20])],
        inits,
    )
    audit = by_name(audit_model(model))
    assert audit["gemm"].flops == 2 * 4 * 6 * 5 + 4 * 6
    assert audit["conv"].flops == 2 * (8 * 10 * 10) * (2 * 3 * 3) + 8 * 10 * 10
    assert audit["deconv"].flops == 2 * (8 * 10 * 10) * (3 * 2 * 2)
    assert audit["conv"].weight_bytes == (8 * 2 * 9 + 8) * 4

    attention = helper.make_node("Attention", ["q", "k", "v"], ["o"], name="attn")
    model = make_model(
        [attention],
        [value_info("q", [2, 4, 10, 8]), value_info("k", [2, 4, 12, 8]), value_info("v", [2, 4, 12, 6])],
        [value_info("o", [2, 4, 10, 6])],
        opset=23,
    )
    assert by_name(audit_model(model))["attn"].flops == 2 * 2 * 10 * 12 * (4 * 8 + 4 * 6)


def test_unknown_flops_are_reported_not_guessed():
    nodes = [
        helper.make_node("NonZero", ["x"], ["nz"], name="nonzero"),
        helper.make_node("Cast", ["nz"], ["f"], name="to_float", to=TensorProto.FLOAT),
        helper.make_node("Relu", ["f"], ["y"], name="relu"),
    ]
    audit = audit_model(make_model(nodes, [value_info("x", [3, 4])], [value_info("y", [2, "n"])]))
    relu = by_name(audit)["relu"]
    assert relu.flops is None and relu.flops_method == "unknown"
    assert summarize(audit)["flops"]["unknown_nodes"] >= 1
    assert any("FLOPs are unknown" in note for note in audit.notes)


def test_derived_precision_for_models_converted_elsewhere():
    from onnxconverter_common import float16

    from tests.report_models import planted_model

    converted = float16.convert_float_to_float16(planted_model(factor=10.0), keep_io_types=True)
    audit = audit_model(converted)
    assert all(n.reason == "unknown" and n.source == "derived" for n in audit.nodes)
    precisions = {n.name: n.precision for n in audit.nodes}
    assert precisions["proj"] == precisions["planted"] == "fp16"
    casts = [n for n in audit.nodes if n.op_type == "Cast"]
    assert sorted(n.precision for n in casts) == ["fp16", "fp32"]  # to fp16 at the input, back at the output


def test_subgraphs_are_walked_and_labelled():
    then_graph = helper.make_graph(
        [helper.make_node("Neg", ["s"], ["t"], name="neg")], "then", [], [value_info("t", [2, 3])]
    )
    else_graph = helper.make_graph(
        [helper.make_node("MatMul", ["s", "w"], ["e"], name="inner_matmul")],
        "else",
        [],
        [value_info("e", [2, 3])],
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["s"], name="relu"),
        helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_graph, else_branch=else_graph),
    ]
    model = make_model(
        nodes,
        [value_info("x", [2, 3]), value_info("c", [], TensorProto.BOOL)],
        [value_info("y", [2, 3])],
        [weight("w", (3, 3), scale=0.3)],
    )
    audit = audit_model(model)
    graphs = {n.name: n.graph for n in audit.nodes}
    assert graphs == {
        "relu": "main",
        "branch": "main",
        "neg": "branch/then_branch",
        "inner_matmul": "branch/else_branch",
    }
    inner = by_name(audit)["inner_matmul"]
    assert inner.flops == 2 * 2 * 3 * 3 and inner.weight_bytes == 36  # reads the outer initializer


def test_inputs_are_not_modified_and_paths_load(tmp_path):
    proto = mixed_model()
    before = proto.SerializeToString()
    model = ir.from_proto(proto)
    audit_model(proto)
    audit_model(model)
    assert proto.SerializeToString() == before
    assert model.graph.inputs[0].shape is not None and not model.graph.inputs[0].shape.is_static()
    path = tmp_path / "m.onnx"
    onnx.save(proto, path)
    assert audit_model(path).model_name == "m.onnx"
    with pytest.raises(errors.InputNotFoundError):
        audit_model(tmp_path / "missing.onnx")


def test_constant_nodes_count_as_weights():
    value = numpy_helper.from_array(np.ones((4, 4), np.float32), "c")
    nodes = [
        helper.make_node("Constant", [], ["c"], name="const", value=value),
        helper.make_node("Add", ["x", "c"], ["y"], name="add"),
    ]
    audit = audit_model(make_model(nodes, [value_info("x", [4, 4])], [value_info("y", [4, 4])]))
    assert by_name(audit)["const"].weight_bytes == 64
    assert audit.weights_by_dtype == {"fp32": 64}


def test_compare_marks_new_and_removed_nodes():
    original = make_model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
            helper.make_node("Identity", ["h"], ["h2"], name="dropped"),
            helper.make_node("Softmax", ["h2"], ["y"], name="softmax", axis=-1),
        ],
        [value_info("x", ["batch", "seq", 8])],
        [value_info("y", ["batch", "seq", 16])],
        [weight("w", (8, 16), scale=0.3)],
    )
    audit = build_report(mixed_model(), original=original)
    status = {n.name: n.compare["status"] for n in audit.nodes}
    assert status == {"x_cast": "new", "proj": "matched", "h_cast": "new", "softmax": "matched"}
    proj = by_name(audit)["proj"]
    assert proj.compare["before"]["precision"] == "fp32" and proj.precision == "fp16"
    assert proj.compare["before"]["weight_bytes"] == 8 * 16 * 4
    assert audit.compare["removed"] == [{"name": "dropped", "graph": "main", "op_type": "Identity"}]
    assert audit.compare["before"]["weight_bytes"]["by_precision"] == {"fp32": {"bytes": 512, "share": 1.0}}


def test_shapes_computed_from_shape_ops_are_folded():
    """Slice(positions, 0, Shape(x)[1]) defeats onnx inference; the report folds it to get FLOPs."""
    positions = numpy_helper.from_array(np.arange(64, dtype=np.int64).reshape(1, 64), "positions")
    table = weight("table", (64, 8), scale=0.3)
    nodes = [
        helper.make_node("Shape", ["x"], ["seq_len"], name="shape", start=1, end=2),
        helper.make_node("Slice", ["positions", "zero", "seq_len", "one"], ["ids"], name="slice"),
        helper.make_node("Gather", ["table", "ids"], ["pos"], name="gather"),
        helper.make_node("Add", ["x", "pos"], ["y"], name="add"),
    ]
    inits = [
        positions,
        table,
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
    ]
    model = make_model(
        nodes, [value_info("x", ["batch", "seq", 8])], [value_info("y", ["batch", "seq", 8])], inits
    )
    audit = by_name(audit_model(model, shapes=["seq=10", "batch=2"]))
    assert audit["add"].flops == 2 * 10 * 8


def test_failed_shape_inference_is_noted_without_a_traceback(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("inference exploded")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", broken)
    audit = audit_model(mixed_model())
    assert audit.shape_inference_ok is False
    assert any("shape inference failed" in note for note in audit.notes)
    assert "Traceback" not in capsys.readouterr().err


def test_local_function_bodies_are_listed():
    model = ir.from_onnx_text(
        """
        <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[2,4] x) => (float[2,4] y) {
          y = local.Scale(x)
        }
        <domain: "local", opset_import: ["" : 17]>
        Scale (a) => (b) {
          two = Constant<value = float {2.0}>()
          b = Mul(a, two)
        }
        """
    )
    audit = audit_model(model)
    assert [(n.graph, n.op_type) for n in audit.nodes] == [
        ("main", "Scale"),
        ("function local::Scale", "Constant"),
        ("function local::Scale", "Mul"),
    ]


def test_a_cast_to_string_has_no_cast_bytes():
    """Strings have no fixed size: the audit leaves the Cast's bytes unknown (the structure
    fuzzer met an internal error here)."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.STRING, name="to_string")],
        "strings",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    (row,) = audit_model(model).nodes
    assert row.op_type == "Cast" and row.cast_bytes is None
