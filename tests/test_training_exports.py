"""Training on what torch exports today: Hugging Face's BERT classifier, ResNet-18 (topology, from
``ResNetConfig``) and GPT-2 LM head (``models.training_exports.ACCEPTANCE_CASES``, tiny configurations), each
exported with torch's default exporter (dynamo: IR 10, opset 20, external data) and with the
TorchScript exporter (``dynamo=False``), go through ``train-artifacts``, ``convert --training`` and
200 steps of the loop docs/training.md documents (GPT-2: ``train_step(input_ids, attention_mask, labels)``).

Two judges. ORT CPU (the documented ``Trainer`` loop) shows that the artifacts load and train; its
FP16 nodes run in FP32 (see test_training_ort.py), so it cannot show FP16 numerics. Those are judged
with ``mpcompile.evaluate.faithful`` (every FP16 node output rounded as a GPU stores it, gradients
included) driving a numpy Adam on the FP32 master weights, against the FP32 artifacts run the same way.

Run with: .venv-training/bin/python -m pytest -m training tests/test_training_exports.py
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import pytest

pytestmark = pytest.mark.training
pytest.importorskip(
    "onnxruntime.training.api",
    reason="onnxruntime-training is not installed (run: bash tools/training_env.sh; "
    ".venv-training/bin/python -m pytest -m training tests/test_training_exports.py)",
)
pytest.importorskip("torch")

from models.training_exports import ACCEPTANCE_CASES as CASES  # noqa: E402
from models.training_exports import BATCH, DATASET, EXPORTERS, export  # noqa: E402
from mpcompile.cli import main  # noqa: E402
from mpcompile.evaluate.faithful import FaithfulSession  # noqa: E402
from mpcompile.passes.loss_scaling import ALL_FINITE_OUTPUT, LOSS_SCALE_INPUT  # noqa: E402
from mpcompile.training import DynamicLossScaler, Trainer  # noqa: E402

MARKS = (50, 100, 150, 200)  # steps after which mixed precision must be within 2 % of FP32
TOLERANCE = 0.02
MAX_SKIPPED = 3  # loss-scaler skips allowed, all within the first SKIP_WINDOW steps
SKIP_WINDOW = 10
BUFFER_SUFFIX = "_grad.accumulation.buffer"


@pytest.fixture(scope="module")
def artifact_sets(tmp_path_factory):
    """Per (model, exporter), built once: the export, FP32 artifacts, `convert --training` of them
    and `train-artifacts` (FP16) output. Each CLI call must exit 0."""
    root = tmp_path_factory.mktemp("exports")
    built: dict[tuple[str, str], dict[str, pathlib.Path]] = {}

    def get(name: str, exporter: str) -> dict[str, pathlib.Path]:
        if (name, exporter) in built:
            return built[name, exporter]
        if exporter == "dynamo":
            pytest.importorskip("onnxscript", reason="torch's dynamo exporter needs onnxscript")
        if name.startswith("hf-"):
            pytest.importorskip(
                "transformers", reason="the training environment has it: bash tools/training_env.sh"
            )
        folder = root / f"{name}-{exporter}"
        folder.mkdir()
        model = folder / "model.onnx"
        export(CASES[name], exporter, model)
        sets = {"fp32": folder / "fp32", "converted": folder / "converted", "mixed": folder / "mixed"}
        assert main(["train-artifacts", str(model), "-o", str(sets["fp32"]), "--precision", "fp32"]) == 0
        assert main(["convert", "--training", str(sets["fp32"]), "-o", str(sets["converted"])]) == 0
        assert main(["train-artifacts", str(model), "-o", str(sets["mixed"])]) == 0
        built[name, exporter] = {"model": model, **sets}
        return built[name, exporter]

    return get


def batches(task, steps: int):
    """``steps`` batches of (user inputs in graph order, labels), cycling through the task's data."""
    inputs, labels = task()
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    for step in range(steps):
        window = slice((step * BATCH) % DATASET, (step * BATCH) % DATASET + BATCH)
        yield tuple(array[window] for array in inputs), labels[window]


def check_against_fp32(label: str, losses: list[float], fp32: list[float], skipped: list[int]) -> None:
    at_marks = []
    for mark in MARKS:
        relative = abs(losses[mark - 1] - fp32[mark - 1]) / fp32[mark - 1]
        at_marks.append(relative)
        assert relative < TOLERANCE, f"{label}: step {mark}: {losses[mark - 1]} vs FP32 {fp32[mark - 1]}"
    print(
        f"{label}: loss {losses[0]:.4f} -> {losses[-1]:.4f} (FP32 {fp32[0]:.4f} -> {fp32[-1]:.4f}); "
        f"relative difference at steps {MARKS}: {', '.join(f'{r:.1e}' for r in at_marks)}; skipped {skipped}"
    )
    assert len(skipped) <= MAX_SKIPPED and all(step < SKIP_WINDOW for step in skipped), skipped
    assert np.mean(losses[-10:]) < 0.7 * losses[0], f"{label}: did not learn"


def ort_train(folder: pathlib.Path, case, steps: int) -> tuple[list[float], list[int]]:
    """The documented loop: ``Trainer.train_step(user inputs..., labels)`` on ORT CPU."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    trainer = Trainer(folder, learning_rate=case.learning_rate)
    losses, skipped = [], []
    for step, (inputs, labels) in enumerate(batches(case.task, steps)):
        result = trainer.train_step(*inputs, labels)
        assert np.isfinite(result.loss)
        losses.append(result.loss)
        if not result.stepped:
            skipped.append(step)
    for name, value in trainer.parameters().items():
        assert value.dtype == np.float32, name  # master weights stay FP32
    return losses, skipped


def faithful_train(folder: pathlib.Path, case, steps: int) -> tuple[list[float], list[int]]:
    """FP16-faithful training: the training graph run with every FP16 node output rounded as a GPU
    stores it (forward and backward), a dynamic loss scaler, and Adam in numpy on FP32 master weights."""
    from onnxruntime.training import api

    model = onnx.load(folder / "training_model.onnx")
    input_names = [value.name for value in model.graph.input]
    trainable = [name.removesuffix(BUFFER_SUFFIX) for name in input_names if name.endswith(BUFFER_SUFFIX)]
    state = api.CheckpointState.load_checkpoint(str(folder / "checkpoint"))
    params = {name: np.array(param.data, dtype=np.float32) for name, param in state.parameters}
    scaled = LOSS_SCALE_INPUT in input_names
    gradients = [f"{name}_grad.unscaled" if scaled else f"{name}_grad" for name in trainable]
    session = FaithfulSession(model, intermediates=gradients)
    user_inputs = [
        name for name in input_names[: input_names.index(trainable[0])] if name != LOSS_SCALE_INPUT
    ]
    first = {name: np.zeros_like(params[name]) for name in trainable}
    second = {name: np.zeros_like(params[name]) for name in trainable}
    scaler = DynamicLossScaler()
    losses, skipped, updates = [], [], 0
    for step, (inputs, labels) in enumerate(batches(case.task, steps)):
        feeds = dict(zip(user_inputs, (*inputs, labels), strict=True))
        feeds.update({name: value for name, value in params.items() if name in input_names})
        feeds.update({f"{name}{BUFFER_SUFFIX}": np.zeros_like(params[name]) for name in trainable})
        feeds["lazy_reset_grad"] = np.array([True])
        if scaled:
            feeds[LOSS_SCALE_INPUT] = np.array(scaler.scale, np.float32)
        with np.errstate(all="ignore"):
            results = session.run(feeds)
        losses.append(float(results[model.graph.output[0].name]))
        if scaled and not scaler.update(bool(results[ALL_FINITE_OUTPUT])):
            skipped.append(step)
            continue
        updates += 1
        for name, gradient_name in zip(trainable, gradients, strict=True):
            gradient = results[gradient_name].astype(np.float32)
            first[name] = 0.9 * first[name] + 0.1 * gradient
            second[name] = 0.999 * second[name] + 0.001 * gradient * gradient
            m_hat = first[name] / (1 - 0.9**updates)
            v_hat = second[name] / (1 - 0.999**updates)
            params[name] = params[name] - case.learning_rate * m_hat / (np.sqrt(v_hat) + 1e-8)
    return losses, skipped


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_export_trains_on_ort_with_the_documented_loop(artifact_sets, name, exporter):
    """train-artifacts, convert --training, then 200 documented steps on ORT CPU, vs FP32."""
    sets = artifact_sets(name, exporter)
    if exporter == "dynamo":
        exported = onnx.load(sets["model"], load_external_data=False)
        assert exported.ir_version == 10 and exported.opset_import[0].version >= 20
    steps = MARKS[-1]
    fp32, fp32_skipped = ort_train(sets["fp32"], CASES[name], steps)
    assert not fp32_skipped
    for variant in ("mixed", "converted"):
        losses, skipped = ort_train(sets[variant], CASES[name], steps)
        check_against_fp32(f"{name}/{exporter}/{variant} ORT CPU", losses, fp32, skipped)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_export_trains_fp16_faithfully(artifact_sets, name, exporter):
    """The same 200 steps judged FP16-faithfully (what a GPU computes), both mixed-precision paths."""
    sets = artifact_sets(name, exporter)
    steps = MARKS[-1]
    fp32, _ = faithful_train(sets["fp32"], CASES[name], steps)
    for variant in ("mixed", "converted"):
        losses, skipped = faithful_train(sets[variant], CASES[name], steps)
        assert losses[0] != fp32[0]  # FP16 rounding really happened
        check_against_fp32(f"{name}/{exporter}/{variant} FP16-faithful", losses, fp32, skipped)


# --------------------------------------------------------------------------- bad and unusual input


def _linear_model(opset: int = 17, *, flat: bool = False) -> onnx.ModelProto:
    """logits = (x @ w + b) * scale, with ``scale`` a scalar constant initializer (as exporters
    leave). ``flat``: logits flattened to rank 1, which crossentropy cannot take as scores."""
    from onnx import TensorProto
    from onnx import helper as oh
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)
    nodes = [
        oh.make_node("MatMul", ["x", "w"], ["h"]),
        oh.make_node("Add", ["h", "b"], ["z"]),
        oh.make_node("Mul", ["z", "scale"], ["scaled" if flat else "logits"]),
    ]
    initializers = [
        nh.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w"),
        nh.from_array(np.zeros(3, np.float32), "b"),
        nh.from_array(np.array(0.5, np.float32), "scale"),
    ]
    if flat:
        nodes.append(oh.make_node("Reshape", ["scaled", "flat_shape"], ["logits"]))
        initializers.append(nh.from_array(np.array([-1], np.int64), "flat_shape"))
    # The output's declared shape left empty, as some exports do: shape inference fills it in.
    graph = oh.make_graph(
        nodes,
        "linear",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, 4])],
        [oh.make_tensor_value_info("logits", TensorProto.FLOAT, [None] if flat else [None, None])],
        initializers,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], ir_version=8)


def _refused(capsys, code: int, mention: str, *args: str) -> None:
    assert main(list(args)) == code
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and mention in lines[0], lines


def test_scalar_constants_stay_constants_and_scalar_parameters_train(tmp_path):
    """Default: the exporter-style scalar ``scale`` is no parameter. Named explicitly, a scalar
    parameter's accumulation buffer (which ORT writes without a shape) passes the checker."""
    onnx.save(_linear_model(), tmp_path / "m.onnx")
    assert main(["train-artifacts", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "default")]) == 0
    inputs = [v.name for v in onnx.load(tmp_path / "default" / "training_model.onnx").graph.input]
    assert "w" + BUFFER_SUFFIX in inputs and "b" + BUFFER_SUFFIX in inputs
    assert "scale" not in inputs and "scale" + BUFFER_SUFFIX not in inputs
    fp32 = tmp_path / "fp32"
    options = ["--precision", "fp32", "--requires-grad", "w", "--requires-grad", "scale"]
    assert main(["train-artifacts", str(tmp_path / "m.onnx"), "-o", str(fp32), *options]) == 0
    assert main(["convert", "--training", str(fp32), "-o", str(tmp_path / "converted")]) == 0
    converted = onnx.load(tmp_path / "converted" / "training_model.onnx")
    buffer = next(v for v in converted.graph.input if v.name == "scale" + BUFFER_SUFFIX)
    assert buffer.type.tensor_type.HasField("shape") and len(buffer.type.tensor_type.shape.dim) == 0
    trainer = Trainer(tmp_path / "converted", learning_rate=1e-2)
    x = np.random.default_rng(1).standard_normal((BATCH, 4)).astype(np.float32)
    assert trainer.train_step(x, np.zeros(BATCH, np.int64)).stepped


def test_training_commands_refuse_in_one_line(tmp_path, capsys):
    flat = tmp_path / "flat.onnx"
    onnx.save(_linear_model(flat=True), flat)  # crossentropy needs scores of rank >= 2
    _refused(capsys, 16, "rank 1", "train-artifacts", str(flat), "-o", str(tmp_path / "a"))
    model = tmp_path / "m.onnx"
    onnx.save(_linear_model(), model)
    _refused(
        capsys, 16, "not a graph output", "train-artifacts", str(model), "-o", str(tmp_path / "b"),
        "--loss-input", "h",
    )  # fmt: skip
    # A training graph that fails the onnx checker's full check (an Add of FP32 and INT64 values,
    # found by shape inference only) is exit 16, not 70.
    fp32 = tmp_path / "fp32"
    assert main(["train-artifacts", str(model), "-o", str(fp32), "--precision", "fp32"]) == 0
    training = onnx.load(fp32 / "training_model.onnx")
    training.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1], np.int64), "one"))
    training.graph.node.append(onnx.helper.make_node("Add", ["x", "one"], ["broken"]))
    onnx.save(training, fp32 / "training_model.onnx")
    _refused(capsys, 16, "onnx checker", "convert", "--training", str(fp32), "-o", str(tmp_path / "c"))


def test_opset_above_ort_range_is_brought_down(tmp_path):
    """Opset 22 (newer than onnxruntime 1.19 knows) is converted down to 21 and trains."""
    onnx.save(_linear_model(opset=22), tmp_path / "m.onnx")
    assert main(["train-artifacts", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "a")]) == 0
    model = onnx.load(tmp_path / "a" / "training_model.onnx")
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 21
    trainer = Trainer(tmp_path / "a")
    x = np.random.default_rng(1).standard_normal((BATCH, 4)).astype(np.float32)
    assert trainer.train_step(x, np.zeros(BATCH, np.int64)).stepped


def test_parameters_unreachable_from_the_loss_input_are_not_trained():
    """A second head (like BERT's pooler beside last_hidden_state) is left out when the loss is on
    the first output; ORT would refuse it ("unreachable from the output node")."""
    import onnx_ir as ir
    from onnx import TensorProto
    from onnx import helper as oh
    from onnx import numpy_helper as nh

    from mpcompile.training.parameters import default_trainable_parameters

    weights = [nh.from_array(np.ones((4, 4), np.float32), name) for name in ("w", "pooler")]
    graph = oh.make_graph(
        [
            oh.make_node("MatMul", ["x", "w"], ["hidden"]),
            oh.make_node("MatMul", ["hidden", "pooler"], ["pooled"]),
        ],
        "two_heads",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [oh.make_tensor_value_info(n, TensorProto.FLOAT, [2, 4]) for n in ("hidden", "pooled")],
        weights,
    )
    model = ir.from_proto(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))
    assert default_trainable_parameters(model.graph, loss_input="hidden") == ["w"]
    assert default_trainable_parameters(model.graph, loss_input="pooled") == ["w", "pooler"]
    assert default_trainable_parameters(model.graph, ["w"], loss_input="pooled") == ["pooler"]
