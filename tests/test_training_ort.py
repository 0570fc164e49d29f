"""End-to-end mixed-precision training with onnxruntime-training (the separate training environment).

Run with: bash tools/training_env.sh && .venv-training/bin/python -m pytest -m training tests/test_training_ort.py
Elsewhere these tests skip with the reason printed (pytest -ra).

What a CPU run shows: ORT's CPU EP has FP32-only training kernels; it runs FP16 nodes in FP32
behind its own Casts and drops the graph's FP32->FP16->FP32 round trips, so CPU losses equal the
FP32 losses. These tests therefore check the graph structure (what runs in FP16 on a device with
FP16 kernels), the loss-scaling mechanics and convergence; FP16 numerics (200-step training, gradient underflow)
are checked with the FP16-faithful reference evaluator (mpcompile.training.reference).
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

pytestmark = pytest.mark.training
pytest.importorskip(
    "onnxruntime.training.api",
    reason="onnxruntime-training is not installed (run: bash tools/training_env.sh; "
    ".venv-training/bin/python -m pytest -m training tests/test_training_ort.py)",
)

from mpcompile.cli import main  # noqa: E402
from mpcompile.passes.loss_scaling import ALL_FINITE_OUTPUT, LOSS_SCALE_INPUT  # noqa: E402
from mpcompile.training import DynamicLossScaler, Trainer, convert_artifacts, reference  # noqa: E402
from mpcompile.training.artifacts import check_training_model  # noqa: E402
from mpcompile.training.generate import generate_training_artifacts  # noqa: E402

STEPS = 200
BATCH = 32
LEARNING_RATE = 1e-2
FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16


def _weights(rng, shape, scale):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def mlp_with_layer_norm() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        nh.from_array(_weights(rng, (16, 32), 0.25), "w1"),
        nh.from_array(np.zeros(32, np.float32), "b1"),
        nh.from_array(np.ones(32, np.float32), "ln_scale"),
        nh.from_array(np.zeros(32, np.float32), "ln_bias"),
        nh.from_array(_weights(rng, (32, 4), 0.2), "w2"),
        nh.from_array(np.zeros(4, np.float32), "b2"),
    ]
    nodes = [
        oh.make_node("MatMul", ["x", "w1"], ["h1"]),
        oh.make_node("Add", ["h1", "b1"], ["h2"]),
        oh.make_node("LayerNormalization", ["h2", "ln_scale", "ln_bias"], ["h3"], axis=-1),
        oh.make_node("Relu", ["h3"], ["h4"]),
        oh.make_node("Gemm", ["h4", "w2", "b2"], ["logits"]),
    ]
    graph = oh.make_graph(
        nodes,
        "mlp",
        [oh.make_tensor_value_info("x", FLOAT, ["N", 16])],
        [oh.make_tensor_value_info("logits", FLOAT, ["N", 4])],
        inits,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def small_cnn() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    inits = [
        nh.from_array(_weights(rng, (8, 1, 3, 3), 0.4), "conv_w"),
        nh.from_array(np.zeros(8, np.float32), "conv_b"),
        nh.from_array(_weights(rng, (8 * 4 * 4, 3), 0.1), "fc_w"),
        nh.from_array(np.zeros(3, np.float32), "fc_b"),
        nh.from_array(np.array([0, -1], np.int64), "flat_shape"),
    ]
    nodes = [
        oh.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["c"], ["r"]),
        oh.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        oh.make_node("Reshape", ["p", "flat_shape"], ["f"]),
        oh.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"]),
    ]
    graph = oh.make_graph(
        nodes,
        "cnn",
        [oh.make_tensor_value_info("x", FLOAT, ["N", 1, 8, 8])],
        [oh.make_tensor_value_info("logits", FLOAT, ["N", 3])],
        inits,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def mlp_task(seed=2):
    """Labels from a random linear teacher: learnable by the MLP."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((512, 16)).astype(np.float32)
    labels = np.argmax(x @ rng.standard_normal((16, 4)), axis=1).astype(np.int64)
    return x, labels


def cnn_task(seed=3):
    """8x8 images with a horizontal, vertical or diagonal bar plus noise; the class is the bar's direction."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, 512).astype(np.int64)
    images = (0.3 * rng.standard_normal((512, 1, 8, 8))).astype(np.float32)
    for i, (label, pos) in enumerate(zip(labels, rng.integers(1, 7, 512), strict=False)):
        if label == 0:
            images[i, 0, pos, :] += 1.0
        elif label == 1:
            images[i, 0, :, pos] += 1.0
        else:
            images[i, 0][np.eye(8, dtype=bool)] += 1.0
    return images, labels


MODELS = {"mlp": (mlp_with_layer_norm, mlp_task), "cnn": (small_cnn, cnn_task)}


def train_artifacts_cli(model: pathlib.Path, output_dir: pathlib.Path, *options: str) -> int:
    """Exit code of ``mpcompile train-artifacts MODEL -o OUTPUT_DIR OPTIONS...``."""
    return main(["train-artifacts", str(model), "-o", str(output_dir), *options])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[tuple[str, str], pathlib.Path]:
    """For each model: FP32 artifacts, `convert --training` of them, and `train-artifacts` output."""
    root = tmp_path_factory.mktemp("artifacts")
    folders = {}
    for name, (build, _) in MODELS.items():
        model_path = root / f"{name}.onnx"
        onnx.save(build(), model_path)
        params = [i.name for i in build().graph.initializer if i.data_type == FLOAT]
        folders[name, "fp32"] = root / f"{name}_fp32"
        generate_training_artifacts(model_path, folders[name, "fp32"], requires_grad=params, precision=None)
        folders[name, "converted"] = root / f"{name}_converted"
        convert_artifacts(folders[name, "fp32"], folders[name, "converted"])
        folders[name, "train_artifacts"] = root / f"{name}_mixed"
        code = train_artifacts_cli(model_path, folders[name, "train_artifacts"], "--json")
        assert code == 0
    return folders


def train(folder: pathlib.Path, task, steps: int = STEPS) -> tuple[list[float], Trainer]:
    x, labels = task()
    trainer = Trainer(folder, learning_rate=LEARNING_RATE)
    losses = []
    for step in range(steps):
        start = (step * BATCH) % len(x)
        result = trainer.train_step(x[start : start + BATCH], labels[start : start + BATCH])
        assert result.stepped
        losses.append(result.loss)
    return losses, trainer


def _tail_mean(losses: list[float]) -> float:
    return float(np.mean(losses[-20:]))


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("variant", ["converted", "train_artifacts"])
def test_mixed_precision_training_matches_fp32(artifacts, name, variant):
    task = MODELS[name][1]
    fp32_losses, _ = train(artifacts[name, "fp32"], task)
    mixed_losses, trainer = train(artifacts[name, variant], task)
    assert trainer.loss_scaled
    fp32_final, mixed_final = _tail_mean(fp32_losses), _tail_mean(mixed_losses)
    relative = abs(mixed_final - fp32_final) / fp32_final
    print(
        f"{name}/{variant}: loss {mixed_losses[0]:.4f} -> {mixed_final:.4f} (mean of last 20 steps); "
        f"FP32 {fp32_losses[0]:.4f} -> {fp32_final:.4f}; relative difference {relative:.2e} (ORT CPU)"
    )
    assert mixed_final < 0.5 * mixed_losses[0]  # it learned
    assert relative < 0.02
    for param_name, value in trainer.parameters().items():
        assert value.dtype == np.float32, param_name  # checkpoint master weights stay FP32
    x, labels = task()
    eval_loss = trainer.eval_step(x[:128], labels[:128])  # the converted eval model
    assert np.isfinite(eval_loss) and eval_loss < 0.5 * mixed_losses[0]


def reference_train(
    folder: pathlib.Path, build, task, steps: int = STEPS
) -> tuple[list[float], DynamicLossScaler]:
    """Train with the FP16-faithful reference evaluator (values kept in their declared types) and a
    numpy Adam on FP32 master weights: what a device with FP16 kernels computes, unlike ORT CPU."""
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(folder / "training_model.onnx")
    evaluator = ReferenceEvaluator(model, new_ops=reference.TRAINING_OPS)
    input_names = [value.name for value in model.graph.input]
    scaled = LOSS_SCALE_INPUT in input_names
    names = [
        n.removesuffix("_grad.accumulation.buffer") for n in input_names if n.endswith(".accumulation.buffer")
    ]
    initial = {t.name: nh.to_array(t) for t in build().graph.initializer}
    params = {name: initial[name].astype(np.float32) for name in names}
    first_moment = {name: np.zeros_like(value) for name, value in params.items()}
    second_moment = {name: np.zeros_like(value) for name, value in params.items()}
    scaler = DynamicLossScaler()
    x, labels = task()
    losses = []
    updates = 0
    for step in range(steps):
        start = (step * BATCH) % len(x)
        feeds = {"x": x[start : start + BATCH], "labels": labels[start : start + BATCH], **params}
        feeds["lazy_reset_grad"] = np.array([True])
        feeds.update({f"{n}_grad.accumulation.buffer": np.zeros_like(v) for n, v in params.items()})
        if scaled:
            feeds[LOSS_SCALE_INPUT] = np.array(scaler.scale, np.float32)
        with np.errstate(all="ignore"):
            results = evaluator.run(None, feeds, intermediate=True)
        losses.append(float(results[model.graph.output[0].name]))
        if scaled and not scaler.update(bool(results[ALL_FINITE_OUTPUT])):
            continue
        updates += 1
        for name in names:
            grad = results[f"{name}_grad.unscaled" if scaled else f"{name}_grad"].astype(np.float32)
            first_moment[name] = 0.9 * first_moment[name] + 0.1 * grad
            second_moment[name] = 0.999 * second_moment[name] + 0.001 * grad * grad
            m_hat = first_moment[name] / (1 - 0.9**updates)
            v_hat = second_moment[name] / (1 - 0.999**updates)
            params[name] = params[name] - LEARNING_RATE * m_hat / (np.sqrt(v_hat) + 1e-8)
    return losses, scaler


@pytest.mark.parametrize("name", sorted(MODELS))
def test_reference_gradients_match_ort(artifacts, name):
    """The reference evaluator's training ops (SoftmaxCrossEntropyLossGrad, LayerNormalizationGrad,
    ConvGrad, MaxPoolGrad, ReluGrad) reproduce ORT's FP32 gradients."""
    from onnxruntime.training import api

    build, task = MODELS[name]
    folder = artifacts[name, "fp32"]
    x, labels = task()
    state = api.CheckpointState.load_checkpoint(str(folder / "checkpoint"))
    module = api.Module(str(folder / "training_model.onnx"), state)
    module.train()
    module(x[:BATCH], labels[:BATCH])
    model = onnx.load(folder / "training_model.onnx")
    feeds = {"x": x[:BATCH], "labels": labels[:BATCH], "lazy_reset_grad": np.array([True])}
    names = [
        v.name.removesuffix("_grad.accumulation.buffer")
        for v in model.graph.input
        if v.name.endswith(".buffer")
    ]
    initial = {t.name: nh.to_array(t) for t in build().graph.initializer}
    for param in names:
        feeds[param] = initial[param]
        feeds[f"{param}_grad.accumulation.buffer"] = np.zeros_like(initial[param])
    got = reference.evaluate(model, feeds, [f"{param}_grad" for param in names])
    for param in names:
        np.testing.assert_allclose(got[f"{param}_grad"], state.parameters[param].grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fp16_faithful_training_matches_fp32(artifacts, name):
    """200 steps with real FP16 rounding (reference evaluator), both mixed-precision paths, vs FP32."""
    build, task = MODELS[name]
    fp32_losses, _ = reference_train(artifacts[name, "fp32"], build, task)
    fp32_final = _tail_mean(fp32_losses)
    for variant in ("converted", "train_artifacts"):
        losses, scaler = reference_train(artifacts[name, variant], build, task)
        final = _tail_mean(losses)
        relative = abs(final - fp32_final) / fp32_final
        print(
            f"{name}/{variant} FP16-faithful: loss {losses[0]:.5f} -> {final:.5f}; FP32 {fp32_losses[0]:.5f} -> "
            f"{fp32_final:.5f}; relative difference {relative:.2e}; scale {scaler.scale:g}, "
            f"skipped {scaler.state.skipped_steps}"
        )
        assert losses[0] != fp32_losses[0]  # really rounded to FP16 somewhere
        assert final < 0.5 * losses[0]
        assert relative < 0.02


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element types of values: declared ones, Cast targets, and otherwise the type of a node's first
    typed float input (true for every op these tests inspect: Gemm, MatMul, Conv, ConvGrad, ReluGrad)."""
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*model.graph.input, *model.graph.output, *model.graph.value_info]
    }
    types.update({t.name: t.data_type for t in model.graph.initializer})
    for node in model.graph.node:
        if node.op_type == "Cast":
            to = next(a.i for a in node.attribute if a.name == "to")
            types.setdefault(node.output[0], to)
            continue
        floats = [types[i] for i in node.input if types.get(i) in (FLOAT, FLOAT16)]
        for out in node.output:
            if out and floats:
                types.setdefault(out, floats[0])
    return types


@pytest.mark.parametrize("variant", ["converted", "train_artifacts"])
def test_structure_fp32_master_weights_and_fp16_compute(artifacts, variant):
    for name in MODELS:
        folder = artifacts[name, variant]
        model = onnx.load(folder / "training_model.onnx")
        check_training_model(model)
        types = value_types(model)
        inputs = {v.name: v.type.tensor_type.elem_type for v in model.graph.input}
        fp32_params = onnx.load(artifacts[name, "fp32"] / "training_model.onnx")
        buffers = [n for n in inputs if n.endswith("_grad.accumulation.buffer")]
        params = [n.removesuffix("_grad.accumulation.buffer") for n in buffers]
        assert params and all(inputs[p] == FLOAT for p in params)
        assert all(inputs[b] == FLOAT for b in buffers)
        assert inputs[LOSS_SCALE_INPUT] == FLOAT
        assert [v.name for v in model.graph.output][-1] == ALL_FINITE_OUTPUT
        assert [v.name for v in model.graph.input][:2] == [v.name for v in fp32_params.graph.input][:2]
        fp16_ops, fp32_ops = [], []
        for node in model.graph.node:
            if node.op_type in ("MatMul", "Gemm", "Conv", "ConvGrad"):
                data_inputs = [i for i in node.input[:2] if i]
                (fp16_ops if all(types.get(i) == FLOAT16 for i in data_inputs) else fp32_ops).append(
                    node.op_type
                )
            if node.op_type == "InPlaceAccumulatorV2":
                assert types[node.input[1]] == FLOAT  # gradients accumulate in FP32
        assert not fp32_ops, f"{name}/{variant}: FP32 {fp32_ops}"
        expected = {"mlp": {"MatMul", "Gemm"}, "cnn": {"Conv", "Gemm", "ConvGrad"}}[name]
        assert expected <= set(fp16_ops)
        assert fp16_ops.count("Gemm") >= 2  # forward Gemm and gradient Gemms
        print(f"{name}/{variant}: FP16 {sorted(fp16_ops)}")


def test_train_artifacts_gradients_are_cast_back_to_fp32(artifacts):
    """ORT's gradient builder emits the Cast back to FP32 for each parameter cast to FP16 in the
    forward graph; parameters only FP32 ops use (LayerNormalization's, b1 of an FP32 Add) get FP32
    gradients straight from those ops."""
    model = onnx.load(artifacts["mlp", "train_artifacts"] / "training_model.onnx")
    producers = {out: node for node in model.graph.node for out in node.output}
    cast_to_fp16 = {
        node.input[0]
        for node in model.graph.node
        if node.op_type == "Cast" and node.attribute[0].i == FLOAT16 and not node.name.endswith("_Grad")
    }
    types = value_types(model)
    cast_back = []
    for node in model.graph.node:
        if node.op_type == "InPlaceAccumulatorV2":
            parameter = node.input[0].removesuffix("_grad.accumulation.buffer")
            unscale = producers[node.input[1]]
            assert unscale.op_type == "Mul"
            gradient = producers[unscale.input[0]]
            if parameter in cast_to_fp16:
                assert gradient.op_type == "Cast" and gradient.attribute[0].i == FLOAT, parameter
                cast_back.append(parameter)
            else:
                assert types[unscale.input[0]] == FLOAT, parameter
    assert {"w1", "w2", "b2"} <= set(cast_back)


@pytest.mark.parametrize("variant", ["converted", "train_artifacts"])
def test_report_shows_forward_backward_and_loss_scaling_nodes(artifacts, variant, tmp_path):
    import json

    out = tmp_path / "report.json"
    model = artifacts["cnn", variant] / "training_model.onnx"
    assert main(["report", str(model), "--format", "json", "-o", str(out)]) == 0
    rows = json.loads(out.read_text())["nodes"]
    by_op: dict[str, set[str]] = {}
    for row in rows:
        by_op.setdefault(row["op_type"], set()).add(row["precision"])
    assert by_op["Conv"] == {"fp16"} and by_op["ConvGrad"] == {"fp16"}
    assert "fp16" in by_op["Gemm"] and by_op["InPlaceAccumulatorV2"] == {"fp32"}
    scaling = [row for row in rows if row["reason"] == "loss-scaling"]
    assert {row["op_type"] for row in scaling} >= {"Reciprocal", "Mul", "IsInf", "IsNaN", "Not"}


@pytest.mark.parametrize("variant", ["converted", "train_artifacts"])
def test_every_training_node_carries_its_decision(artifacts, variant):
    """What `mpcompile report` reads: forward, backward and loss-scaling nodes all stamped."""
    model = onnx.load(artifacts["mlp", variant] / "training_model.onnx")
    stamps = [({p.key: p.value for p in node.metadata_props}, node) for node in model.graph.node]
    assert all("mpcompile.precision" in meta for meta, _ in stamps)
    reasons = {meta["mpcompile.reason"] for meta, _ in stamps}
    assert "loss-scaling" in reasons
    gradient_gemms = [
        meta for meta, node in stamps if node.op_type == "Gemm" and node.output[0].endswith("_grad")
    ]
    assert gradient_gemms and all(meta["mpcompile.precision"] == "fp16" for meta in gradient_gemms)


def test_overflow_skips_step_backs_off_and_grows_after_interval(artifacts, tmp_path):
    x, labels = mlp_task()
    scaler = DynamicLossScaler(init_scale=2.0**16, growth_interval=3)
    trainer = Trainer(artifacts["mlp", "converted"], scaler=scaler, learning_rate=LEARNING_RATE)
    trainer.train_step(x[:BATCH], labels[:BATCH])
    before = trainer.parameters()
    poisoned = x[:BATCH].copy()
    poisoned[0, 0] = np.inf  # injected inf: every gradient becomes NaN/inf
    result = trainer.train_step(poisoned, labels[:BATCH])
    assert (result.all_finite, result.stepped) == (False, False)
    assert result.next_loss_scale == 2.0**15
    after = trainer.parameters()
    for name in before:
        assert before[name].tobytes() == after[name].tobytes(), name  # bit-identical: step skipped
    for _step in range(3):
        result = trainer.train_step(x[BATCH : 2 * BATCH], labels[BATCH : 2 * BATCH])
        assert result.all_finite and result.stepped
        assert result.loss_scale == 2.0**15
    assert trainer.scaler.scale == 2.0**16  # doubled after the growth interval
    assert all(np.isfinite(v).all() for v in trainer.parameters().values())  # gradients were reset

    # The scaler state is saved beside the checkpoint and picked up with it.
    checkpoint = tmp_path / "checkpoint"
    trainer.save_checkpoint(checkpoint)
    assert (tmp_path / "checkpoint.loss_scaler.json").is_file()
    resumed = Trainer(artifacts["mlp", "converted"], checkpoint=checkpoint)
    assert resumed.scaler.state == trainer.scaler.state
    for name, value in resumed.parameters().items():
        assert value.tobytes() == trainer.parameters()[name].tobytes()


def test_static_scale_stays_fixed(artifacts):
    x, labels = mlp_task()
    trainer = Trainer(artifacts["mlp", "converted"], static_scale=128.0)
    poisoned = x[:BATCH].copy()
    poisoned[0, 0] = np.nan
    assert not trainer.train_step(poisoned, labels[:BATCH]).stepped
    assert trainer.train_step(x[:BATCH], labels[:BATCH]).stepped
    assert trainer.scaler.scale == 128.0


def test_underflow_rescue_on_rewritten_ort_graph(tmp_path):
    """On a graph ORT generated and mpcompile rewrote: without scaling the FP16 gradients flush to zero,
    with 2^16 they match FP32 (FP16-faithful reference evaluator, not ORT CPU)."""
    rng = np.random.default_rng(3)
    x = (1.0 + 0.05 * rng.standard_normal((8, 4))).astype(np.float32)
    labels = np.zeros(8, np.int64)
    w = np.zeros((4, 3), np.float32)
    w[:, 0] = 4.25  # right by a margin of ~17: wrong-class logit gradients ~5e-9
    graph = oh.make_graph(
        [oh.make_node("Gemm", ["x", "w", "b"], ["logits"])],
        "linear",
        [oh.make_tensor_value_info("x", FLOAT, ["N", 4])],
        [oh.make_tensor_value_info("logits", FLOAT, ["N", 3])],
        [nh.from_array(w, "w"), nh.from_array(np.zeros(3, np.float32), "b")],
    )
    onnx.save(
        oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8), tmp_path / "linear.onnx"
    )
    generate_training_artifacts(
        tmp_path / "linear.onnx", tmp_path / "fp32", requires_grad=["w", "b"], precision=None
    )
    convert_artifacts(tmp_path / "fp32", tmp_path / "mixed")
    fp32 = onnx.load(tmp_path / "fp32" / "training_model.onnx")
    mixed = onnx.load(tmp_path / "mixed" / "training_model.onnx")
    feeds = {
        "x": x,
        "labels": labels,
        "w": w,
        "b": np.zeros(3, np.float32),
        "lazy_reset_grad": np.array([True]),
        "w_grad.accumulation.buffer": np.zeros_like(w),
        "b_grad.accumulation.buffer": np.zeros(3, np.float32),
    }
    want = reference.evaluate(fp32, feeds, ["w_grad"])["w_grad"][:, 1:]
    got = {
        scale: reference.evaluate(
            mixed, {**feeds, LOSS_SCALE_INPUT: np.array(scale, np.float32)}, ["w_grad.unscaled"]
        )["w_grad.unscaled"][:, 1:]
        for scale in (1.0, 2.0**16)
    }
    print(
        f"max |w_grad| FP32 {np.abs(want).max():.3e}, FP16 unscaled {np.abs(got[1.0]).max():.3e}, "
        f"FP16 scaled 2^16 {np.abs(got[2.0**16]).max():.3e}"
    )
    assert np.count_nonzero(want) == want.size
    assert np.count_nonzero(got[1.0]) == 0
    np.testing.assert_allclose(got[2.0**16], want, rtol=5e-3)


@pytest.mark.parametrize("loss", ["mse", "bcewithlogits"])
def test_loss_subgraph_stays_fp32_for_other_losses(tmp_path, loss):
    """MSELoss/BCEWithLogitsLoss are built from follow ops (Sub, Pow, Sigmoid, ...): still FP32."""
    onnx.save(mlp_with_layer_norm(), tmp_path / "m.onnx")
    assert (
        train_artifacts_cli(tmp_path / "m.onnx", tmp_path / "fp32", "--loss", loss, "--precision", "fp32")
        == 0
    )
    convert_artifacts(tmp_path / "fp32", tmp_path / "mixed")
    model = onnx.load(tmp_path / "mixed" / "training_model.onnx")
    types = value_types(model)
    loss_nodes = [node for node in model.graph.node if node.name.startswith("onnx::")]
    assert loss_nodes
    for node in loss_nodes:
        assert all(types.get(i) != FLOAT16 for i in node.input), node.name
    trainer = Trainer(tmp_path / "mixed")
    x, _ = mlp_task()
    target = np.tanh(x[:BATCH, :4])
    losses = [trainer.train_step(x[:BATCH], target).loss for _ in range(20)]
    assert losses[-1] < losses[0]


def test_train_artifacts_refuses_bad_input(tmp_path):
    onnx.save(mlp_with_layer_norm(), tmp_path / "m.onnx")
    assert train_artifacts_cli(tmp_path / "m.onnx", tmp_path / "a", "--requires-grad", "nope") == 16
    assert train_artifacts_cli(tmp_path / "missing.onnx", tmp_path / "b") == 3
