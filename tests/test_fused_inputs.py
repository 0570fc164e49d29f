"""Graphs fused by ONNX Runtime's own transformers optimizer convert like any graph.

Each model (tests/fused_models.py) is a small zoo or T5-style graph after
``onnxruntime.transformers.optimizer.optimize_model`` (model types bert, bart, gpt2, t5), so it
holds ORT's contrib ops, and for t5 its default-domain ``SimplifiedLayerNormalization``. The
conversion for ``cuda`` and ``cpu`` must load and run on ORT's CPU provider, match the FP32 fused
graph under the FP16-faithful judge (max |error| <= 1e-2 x max |FP32 output|; measured 6e-4 to
1.4e-3 at this commit) and pass every check its input passes. The optimizer's own FP16 output
(``--float16``) is already low precision: exit 8.
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

import models
import mpcompile
from mpcompile import errors
from mpcompile.errors import ExitCode
from mpcompile.evaluate import faithful
from mpcompile.io.ort_domain import hidden_ort_ops
from mpcompile.policy.op_types import schema_type_errors
from mpcompile.targets import ort_schemas
from tests import fused_models

ort = pytest.importorskip("onnxruntime", reason="the models come from onnxruntime's optimizer")

RELATIVE_TOLERANCE = 1e-2  # of the largest |FP32 output|
FUSED_OPS = {
    "bert": {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization", "BiasGelu"},
    "bart": {"SkipLayerNormalization", "EmbedLayerNormalization", "BiasGelu"},
    "gpt2": {"SkipLayerNormalization", "FastGelu"},
    "t5": {"SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"},
}


def _run(model: onnx.ModelProto, feeds) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _ort_ops(model: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in model.graph.node if node.domain or not onnx.defs.has(node.op_type)}


def _passes_full_check(model: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
        return False
    return True


@pytest.fixture(scope="module", params=sorted(FUSED_OPS))
def fused(request):
    model = fused_models.fused(request.param)
    feeds = models.make_inputs(model)
    return request.param, model, feeds, _run(model, feeds)


def test_the_optimizer_fused_what_the_test_expects(fused):
    model_type, model, _, _ = fused
    assert _ort_ops(model) == FUSED_OPS[model_type]


@pytest.mark.parametrize("target", ["cuda", "cpu"])
def test_fused_graph_converts_runs_and_matches_fp32(fused, target):
    model_type, model, feeds, expected = fused
    result = mpcompile.convert(model, target=target)
    converted = result.model
    assert result.stats.untyped_values == 0
    fused_rows = [row for row in result.decisions() if row.op_type in FUSED_OPS[model_type]]
    assert {row.op_type for row in fused_rows} == FUSED_OPS[model_type]
    if target == "cuda":  # every fused op has a CUDA FP16 kernel
        assert {row.precision for row in fused_rows} == {"fp16"}
    else:  # kernel-aware: FP16 only where the CPU provider has an FP16 kernel
        cpu = mpcompile.targets.get_target("cpu")
        for row in fused_rows:
            has_kernel = cpu.supports(
                row.domain, row.op_type, 17 if not row.domain else 1, ir.DataType.FLOAT16
            )
            assert has_kernel or (row.precision, row.reason) == ("fp32", "no-kernel:CPUExecutionProvider"), (
                row
            )
    outputs = _run(converted, feeds)  # loads and runs on ORT's CPU provider
    judged = faithful.run(converted, feeds)
    for info, reference, plain in zip(converted.graph.output, expected, outputs, strict=True):
        scale = float(np.abs(reference).max())
        assert (
            np.max(np.abs(np.asarray(judged[info.name], np.float32) - reference))
            <= RELATIVE_TOLERANCE * scale
        )
        assert np.max(np.abs(plain.astype(np.float32) - reference)) <= RELATIVE_TOLERANCE * scale


def test_output_passes_every_check_its_input_passes(fused):
    _, model, _, _ = fused
    converted = mpcompile.convert(model).model
    if _passes_full_check(model):
        assert _passes_full_check(converted)
        return
    # Only ORT's default-domain ops fail the input: the rest of the output passes the full check,
    # ORT's ops are typed as ORT's schemas allow, and ORT loads it (test above runs it).
    with hidden_ort_ops(model) as hidden_in:
        assert _passes_full_check(model)
    with hidden_ort_ops(converted) as hidden_out:
        assert _passes_full_check(converted)
    assert hidden_in == hidden_out == ["SimplifiedLayerNormalization"]
    typed = ir.from_proto(converted)
    assert [problem for node in typed.graph for problem in schema_type_errors(node, 17)] == []


def test_ort_default_domain_op_conversion_says_how_it_was_checked():
    result = mpcompile.convert(fused_models.fused("t5"))
    assert any("SimplifiedLayerNormalization" in note and "ORT CPU load" in note for note in result.notes)
    assert result.summary()["notes"] == result.notes


@pytest.mark.parametrize("model_type", sorted(FUSED_OPS))
def test_the_optimizers_fp16_output_exits_8(run_cli, tmp_path, model_type):
    source = tmp_path / "fp16.onnx"
    onnx.save(fused_models.fused_fp16(model_type), source)
    result = run_cli("convert", source, "-o", tmp_path / "out.onnx")
    assert result.exit_code == ExitCode.ALREADY_LOW_PRECISION, result.stdout + result.stderr
    assert "already fp16" in (result.stdout + result.stderr) and not (tmp_path / "out.onnx").exists()


def test_t5_fused_cli_conversion_exits_0_with_the_note_in_json(run_cli, tmp_path):
    source = tmp_path / "t5.onnx"
    onnx.save(fused_models.fused("t5"), source)
    result = run_cli("convert", source, "-o", tmp_path / "out.onnx", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "SimplifiedLayerNormalization" in (result.stdout + result.stderr) and "ORT CPU load" in (
        result.stdout + result.stderr
    )


def _cuda_only_graph() -> onnx.ModelProto:
    """MatMul -> com.microsoft::BiasAdd (CUDA and DirectML kernels only) -> default-domain
    SimplifiedLayerNormalization -> MatMul."""
    rng = np.random.default_rng(0)
    weights = [
        onnx.numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W"),
        onnx.numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "bias"),
        onnx.numpy_helper.from_array(np.ones(8, np.float32), "scale"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
        helper.make_node("BiasAdd", ["h", "bias", "skip"], ["s"], name="bias_add", domain="com.microsoft"),
        helper.make_node("SimplifiedLayerNormalization", ["s", "scale"], ["n"], name="rms", epsilon=1e-6),
        helper.make_node("MatMul", ["n", "W"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 4, 8]) for n in ("x", "skip")],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8])],
        weights,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def test_cuda_only_fusion_is_typed_and_checked_structurally():
    result = mpcompile.convert(_cuda_only_graph(), target="cuda")
    rows = {row.name: row for row in result.decisions()}
    assert rows["bias_add"].precision == rows["rms"].precision == "fp16"
    typed = ir.from_proto(result.model)
    assert all(
        value.dtype == ir.DataType.FLOAT16
        for node in typed.graph
        if node.name == "bias_add"
        for value in node.outputs
    )
    assert [problem for node in typed.graph for problem in schema_type_errors(node, 17)] == []
    assert any("no CPU kernel for com.microsoft::BiasAdd" in note for note in result.notes)
    cpu = mpcompile.convert(_cuda_only_graph(), target="cpu")
    assert {row.name: row.reason for row in cpu.decisions()}["bias_add"].startswith("no-kernel")


def test_unknown_default_domain_op_keeps_its_one_line_exit_12(run_cli, tmp_path):
    model = _cuda_only_graph()
    model.graph.node[2].op_type = "SimplifiedLayerNormalizationX"
    source = tmp_path / "unknown.onnx"
    onnx.save(model, source)
    for flags in ((), ("--allow-custom-ops",)):
        result = run_cli("convert", source, "-o", tmp_path / "out.onnx", *flags)
        assert result.exit_code == ExitCode.INVALID_MODEL
        assert "SimplifiedLayerNormalizationX is not an ONNX operator" in (result.stdout + result.stderr)
        assert len((result.stdout + result.stderr).strip().splitlines()) == 1


def test_without_the_live_registry_the_shipped_schemas_type_the_same(monkeypatch):
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    live = mpcompile.convert(fused_models.fused("t5")).decisions()
    monkeypatch.delattr(state, "get_all_operator_schema")
    ort_schemas._registry.cache_clear()
    try:
        assert ort_schemas.schemas_source().startswith("shipped table")
        shipped = mpcompile.convert(fused_models.fused("t5")).decisions()
    finally:
        ort_schemas._registry.cache_clear()
    assert [(row.name, row.precision) for row in shipped] == [(row.name, row.precision) for row in live]


def test_shipped_schema_table_is_what_the_generator_writes():
    from tools import gen_ort_schemas

    document = ort_schemas.shipped_document()
    if document["source"] != {"ort_version": ort.__version__, "onnx_version": onnx.__version__}:
        pytest.skip(f"the table records {document['source']}; installed onnxruntime {ort.__version__}")
    shipped = pathlib.Path(ort_schemas.__file__).parent.parent / "data" / "ort_schemas.json"
    assert shipped.read_text(encoding="ascii") == gen_ort_schemas.render()


def test_schema_typing_catches_a_low_precision_float_only_output():
    node = ir.node(
        "SkipSimplifiedLayerNormalization",
        [ir.val(n, ir.DataType.FLOAT16, [2, 8]) for n in ("x", "skip")]
        + [ir.val("g", ir.DataType.FLOAT16, [8])],
        domain="com.microsoft",
        num_outputs=3,
    )
    for value, dtype in zip(
        node.outputs, (ir.DataType.FLOAT16, ir.DataType.FLOAT16, ir.DataType.FLOAT), strict=True
    ):
        value.dtype = dtype
    problems = schema_type_errors(node, 17)
    assert len(problems) == 1 and "output 1 (mean) is FLOAT16" in problems[0]


def test_fp32_fused_input_is_not_mistaken_for_converted(tmp_path):
    assert not mpcompile.convert(fused_models.fused("bert")).already_converted
    source = tmp_path / "fp16.onnx"
    onnx.save(fused_models.fused_fp16("bert"), source)
    with pytest.raises(errors.AlreadyLowPrecisionError, match="converted by another tool"):
        mpcompile.convert_file(source, tmp_path / "out.onnx")


def test_ort_default_domain_ops_are_found_in_the_written_ir_as_in_the_file(tmp_path):
    from mpcompile.compiler.output_checks import hidden_ort_nodes_in_file, hidden_ort_nodes_in_ir

    for model, expected in ((_cuda_only_graph(), True), (fused_models.fused("bert"), False)):
        path = tmp_path / "model.onnx"
        onnx.save(model, path)
        assert hidden_ort_nodes_in_ir(ir.load(path)) == hidden_ort_nodes_in_file(path) == expected
