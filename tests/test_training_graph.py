"""Pure-graph tests of the training rewrite and the loss-scaling pass (no onnxruntime-training needed).

The training graphs here are built by hand with the layout ORT's ``generate_artifacts`` 1.19.2
produces (checked against real artifacts in test_training_ort.py): user inputs, parameters,
``<p>_grad.accumulation.buffer`` inputs, ``lazy_reset_grad``; the ``<loss>_grad`` = 1.0 seed;
one ``InPlaceAccumulatorV2`` per trainable parameter.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from mpcompile.core.plan import Reason, read_decision
from mpcompile.core.precision import Precision
from mpcompile.errors import AlreadyLowPrecisionError, OutputNotWritableError, TrainingError
from mpcompile.passes.loss_scaling import ALL_FINITE_OUTPUT, LOSS_SCALE_INPUT
from mpcompile.training import reference
from mpcompile.training.artifacts import TrainingGraphLayout, check_training_model, convert_training_graph

MS = "com.microsoft"


def _accumulate(param: str) -> onnx.NodeProto:
    return oh.make_node(
        "InPlaceAccumulatorV2",
        [f"{param}_grad.accumulation.buffer", f"{param}_grad", "lazy_reset_grad"],
        [f"{param}_grad.accumulation.out"],
        domain=MS,
    )


def training_graph(params: dict[str, np.ndarray], hidden: bool) -> onnx.ModelProto:
    """An ORT-style training graph: [Gemm -> Relu ->] Gemm -> SoftmaxCrossEntropyLoss, with backward."""
    n_in = params["w1" if hidden else "w2"].shape[0]
    nodes = []
    if hidden:
        nodes += [oh.make_node("Gemm", ["x", "w1"], ["h"]), oh.make_node("Relu", ["h"], ["a"])]
    features = "a" if hidden else "x"
    nodes += [
        oh.make_node("Gemm", [features, "w2", "b2"], ["logits"]),
        oh.make_node("SoftmaxCrossEntropyLoss", ["logits", "labels"], ["loss", "log_prob"], reduction="mean"),
        oh.make_node(
            "SoftmaxCrossEntropyLossGrad", ["loss_grad", "log_prob", "labels"], ["logits_grad"], domain=MS
        ),
        oh.make_node("ReduceSum", ["logits_grad", "axes0"], ["b2_grad"], keepdims=0),
        oh.make_node("Gemm", [features, "logits_grad"], ["w2_grad"], transA=1),
    ]
    if hidden:
        nodes += [
            oh.make_node("Gemm", ["logits_grad", "w2"], ["a_grad"], transB=1),
            oh.make_node("ReluGrad", ["a_grad", "a"], ["h_grad"], domain=MS),
            oh.make_node("Gemm", ["x", "h_grad"], ["w1_grad"], transA=1),
        ]
    nodes += [_accumulate(p) for p in params]

    def tensor(name, dtype, shape):
        return oh.make_tensor_value_info(name, dtype, shape)

    inputs = [tensor("x", TensorProto.FLOAT, ["N", n_in]), tensor("labels", TensorProto.INT64, ["N"])]
    inputs += [tensor(p, TensorProto.FLOAT, list(v.shape)) for p, v in params.items()]
    inputs += [
        tensor(f"{p}_grad.accumulation.buffer", TensorProto.FLOAT, list(v.shape)) for p, v in params.items()
    ]
    inputs += [tensor("lazy_reset_grad", TensorProto.BOOL, [1])]
    outputs = [tensor("loss", TensorProto.FLOAT, [])]
    outputs += [tensor(f"{p}_grad.accumulation.out", TensorProto.BOOL, []) for p in params]
    initializers = [
        nh.from_array(np.array(1.0, np.float32), "loss_grad"),
        nh.from_array(np.array([0], np.int64), "axes0"),
    ]
    graph = oh.make_graph(nodes, "training", inputs, outputs, initializers)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid(MS, 1)], ir_version=8)


def mlp_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "w1": (rng.standard_normal((6, 8)) * 0.3).astype(np.float32),
        "w2": (rng.standard_normal((8, 3)) * 0.3).astype(np.float32),
        "b2": np.zeros(3, np.float32),
    }


def feeds_for(model: onnx.ModelProto, params, x, labels, scale=None):
    feeds = {"x": x, "labels": labels, "lazy_reset_grad": np.array([True])}
    for name, value in params.items():
        feeds[name] = value
        feeds[f"{name}_grad.accumulation.buffer"] = np.zeros_like(value)
    if scale is not None:
        feeds[LOSS_SCALE_INPUT] = np.array(scale, np.float32)
    return feeds


def converted(proto: onnx.ModelProto, **options) -> ir.Model:
    model = ir.from_proto(proto)
    convert_training_graph(model, **options)
    return model


def nodes_by_output(model: ir.Model) -> dict[str, ir.Node]:
    return {out.name: node for node in model.graph for out in node.outputs if out.name}


def test_training_rewrite_keeps_parameters_buffers_and_loss_fp32():
    model = converted(training_graph(mlp_params(np.random.default_rng(0)), hidden=True))
    graph = model.graph
    layout = TrainingGraphLayout.of(graph)
    assert layout.user_inputs == ["x", "labels"]
    assert layout.trainable_parameters == ["w1", "w2", "b2"]
    for value in graph.inputs:
        if value.name not in ("labels", "lazy_reset_grad"):
            assert value.dtype == ir.DataType.FLOAT, value.name
    assert graph.outputs[0].name == "loss" and graph.outputs[0].dtype == ir.DataType.FLOAT
    by_output = nodes_by_output(model)
    # Forward and gradient Gemms and the ReluGrad compute in FP16; loss, its gradient, the bias
    # reduction and the accumulators stay FP32.
    for name in ("h", "a", "logits", "w2_grad", "a_grad", "h_grad", "w1_grad"):
        assert read_decision(by_output[name]).precision == Precision.FP16, name
        assert by_output[name].outputs[0].dtype == ir.DataType.FLOAT16, name
    for name in ("loss", "logits_grad", "b2_grad", "w1_grad.accumulation.out"):
        assert read_decision(by_output[name]).precision == Precision.FP32, name
    # Each parameter is cast once, shared by forward and backward uses.
    w2_casts = [use.node for use in graph.inputs[[v.name for v in graph.inputs].index("w2")].uses()]
    assert [n.op_type for n in w2_casts] == ["Cast"]
    assert len(list(w2_casts[0].outputs[0].uses())) == 2
    # FP16 gradients reach their accumulator as FP32, unscaled.
    for accumulator in (n for n in graph if n.op_type == "InPlaceAccumulatorV2"):
        assert accumulator.inputs[1].dtype == ir.DataType.FLOAT
    check_training_model(ir.to_proto(model))


def test_bf16_rewrite_types_gemms_bf16_and_passes_the_checker():
    model = converted(training_graph(mlp_params(np.random.default_rng(0)), hidden=True), precision="bf16")
    by_output = nodes_by_output(model)
    for name in ("h", "logits", "w2_grad", "w1_grad"):
        assert by_output[name].outputs[0].dtype == ir.DataType.BFLOAT16, name
    check_training_model(ir.to_proto(model))


def test_train_artifacts_without_the_training_runtime_is_a_clear_error(tmp_path, capsys):
    try:
        import onnxruntime.training.artifacts  # noqa: F401

        pytest.skip("onnxruntime-training is installed here; this checks the error without it")
    except ImportError:
        pass
    from mpcompile.cli import main

    onnx.save(training_graph(mlp_params(np.random.default_rng(0)), hidden=True), tmp_path / "m.onnx")
    assert main(["train-artifacts", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out")]) == 14
    assert "tools/training_env.sh" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_training_rewrite_refuses_converted_graph():
    model = converted(training_graph(mlp_params(np.random.default_rng(0)), hidden=True))
    with pytest.raises(AlreadyLowPrecisionError):
        convert_training_graph(model)


def test_user_block_op_keeps_gemm_fp32():
    model = converted(training_graph(mlp_params(np.random.default_rng(0)), hidden=True), block_ops=("Gemm",))
    for node in model.graph:
        if node.op_type == "Gemm":
            assert read_decision(node).precision == Precision.FP32
            assert read_decision(node).reason == Reason.USER_BLOCK_OP


def confident_linear_problem():
    """A linear classifier already right by a margin of ~17: its logit gradients (~5e-9) lie
    below half FP16's smallest subnormal (6e-8), so without scaling they flush to zero in FP16."""
    rng = np.random.default_rng(3)
    x = (1.0 + 0.05 * rng.standard_normal((8, 4))).astype(np.float32)
    labels = np.zeros(8, np.int64)
    w2 = np.zeros((4, 3), np.float32)
    w2[:, 0] = 4.25
    params = {"w2": w2, "b2": np.zeros(3, np.float32)}
    return params, x, labels


def test_loss_scaling_rescues_fp16_gradient_underflow():
    """FP16-faithful (onnx reference evaluator, values stored in the declared types), not ORT CPU."""
    params, x, labels = confident_linear_problem()
    fp32 = training_graph(params, hidden=False)
    fp32_values = reference.evaluate(fp32, feeds_for(fp32, params, x, labels), ["w2_grad", "logits_grad"])
    # The wrong classes' logit gradients (columns 1, 2) round to 0 in FP16. (The true class's
    # gradient 1 - p is computed in FP32 at a resolution of 6e-8, so it is left out.)
    assert 0 < np.abs(fp32_values["logits_grad"][:, 1:]).max() < 2.9e-8
    want = fp32_values["w2_grad"][:, 1:]
    mixed = ir.to_proto(converted(fp32))
    results = {}
    for scale in (1.0, 2.0**16):
        feeds = feeds_for(mixed, params, x, labels, scale=scale)
        results[scale] = reference.evaluate(mixed, feeds, ["w2_grad.unscaled", ALL_FINITE_OUTPUT])
    without_scaling = results[1.0]["w2_grad.unscaled"][:, 1:]
    with_scaling = results[2.0**16]["w2_grad.unscaled"][:, 1:]
    assert np.count_nonzero(without_scaling) == 0  # flushed to zero
    np.testing.assert_allclose(with_scaling, want, rtol=5e-3, atol=0)
    print(
        f"max |w2_grad| FP32 {np.abs(want).max():.3e}; FP16 no scaling {np.abs(without_scaling).max():.3e}; "
        f"FP16 scale 2^16 {np.abs(with_scaling).max():.3e}, max abs err {np.max(np.abs(with_scaling - want)):.2e}"
    )
    assert bool(results[2.0**16][ALL_FINITE_OUTPUT])


def test_huge_scale_overflows_fp16_gradients_and_all_finite_reports_it():
    """FP16-faithful: scaled gradients beyond 65504 become inf in FP16; ``all_finite`` turns false."""
    rng = np.random.default_rng(4)
    params = mlp_params(rng)
    mixed = ir.to_proto(converted(training_graph(params, hidden=True)))
    x = rng.standard_normal((5, 6)).astype(np.float32)
    labels = rng.integers(0, 3, 5).astype(np.int64)
    ok = reference.evaluate(mixed, feeds_for(mixed, params, x, labels, scale=2.0**10), [ALL_FINITE_OUTPUT])
    assert bool(ok[ALL_FINITE_OUTPUT])
    huge = reference.evaluate(mixed, feeds_for(mixed, params, x, labels, scale=2.0**24), [ALL_FINITE_OUTPUT])
    assert not bool(huge[ALL_FINITE_OUTPUT])


def test_convert_training_folder_rewrites_graphs_and_copies_the_rest(tmp_path, capsys):
    from mpcompile.commands.train_artifacts import convert_training_folder

    source = tmp_path / "fp32"
    source.mkdir()
    onnx.save(
        training_graph(mlp_params(np.random.default_rng(0)), hidden=True), source / "training_model.onnx"
    )
    (source / "checkpoint").write_bytes(b"checkpoint bytes")
    (source / "optimizer_model.onnx").write_bytes(b"optimizer bytes")
    out = tmp_path / "mixed"
    convert_training_folder(source, out)
    assert "training: 7/" in capsys.readouterr().out
    assert (out / "checkpoint").read_bytes() == b"checkpoint bytes"
    assert (out / "optimizer_model.onnx").read_bytes() == b"optimizer bytes"
    converted_model = onnx.load(out / "training_model.onnx")
    assert converted_model.graph.input[2].name == LOSS_SCALE_INPUT
    with pytest.raises(OutputNotWritableError, match="not empty"):
        convert_training_folder(source, out)
    with pytest.raises(TrainingError, match=r"training_model\.onnx"):
        convert_training_folder(tmp_path, tmp_path / "other")


def test_training_pipeline_times_dumps_and_checks_every_pass(tmp_path):
    """The training graphs run through the inference ``Pipeline``: every pass (loss scaling and
    master weights included) is timed, dumped, and followed by the invariant check, which catches a
    pass that breaks the graph."""
    from mpcompile.training.pipeline import PipelineSettings, training_context

    proto = training_graph(mlp_params(np.random.default_rng(0)), hidden=True)
    settings = PipelineSettings(check_invariants=True, dump_dir=tmp_path / "dumps")
    stats = convert_training_graph(ir.from_proto(proto), settings=settings)
    passes = [
        "AssignTrainingPrecisionPass",
        "ApplyTrainingPrecisionPass",
        "MasterWeightsPass",
        "LossScalingPass",
        "TopologicalSortPass",
        "StampTrainingDecisionsPass",
    ]
    assert list(stats["pass_seconds"]) == passes
    dumps = sorted(path.name for path in (tmp_path / "dumps" / "training").iterdir())
    assert dumps == [f"{step:02d}_{name}.txt" for step, name in enumerate(passes)]
    assert "loss_scale" in (tmp_path / "dumps" / "training" / dumps[3]).read_text()

    class MoveLastNodeFirst(ir.passes.InPlacePass):
        def call(self, model: ir.Model) -> ir.passes.PassResult:
            last = list(model.graph)[-1]
            model.graph.remove(last)
            model.graph.insert_before(model.graph[0], last)
            return ir.passes.PassResult(model, modified=True)

    pipeline = settings.pipeline(training_context("fp16"), [MoveLastNodeFirst()], "broken")
    with pytest.raises(ir.passes.InvariantError):
        pipeline(ir.from_proto(proto))


def test_convert_training_cli_passes_check_invariants_and_dump_dir(tmp_path):
    from mpcompile.cli import main

    source = tmp_path / "fp32"
    source.mkdir()
    onnx.save(
        training_graph(mlp_params(np.random.default_rng(0)), hidden=True), source / "training_model.onnx"
    )
    (source / "checkpoint").write_bytes(b"checkpoint bytes")
    dumps = tmp_path / "dumps"
    command = ["convert", "--training", str(source), "-o", str(tmp_path / "out"), "-q"]
    assert main([*command, "--check-invariants", "--dump-dir", str(dumps)]) == 0
    assert len(list((dumps / "training").glob("*_LossScalingPass.txt"))) == 1
