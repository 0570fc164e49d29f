"""The model zoo: every model is valid ONNX, deterministic, small, and runs in onnxruntime (CPU)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

import models
from models import bert_encoder, regressions

ZOO_NAMES = sorted(models.ZOO)
MAX_MODEL_BYTES = 5 * 1024 * 1024


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_model_is_valid_deterministic_and_small(name: str) -> None:
    model = models.ZOO[name]()
    onnx.checker.check_model(model, full_check=True)
    assert model.SerializeToString() == models.ZOO[name]().SerializeToString(), "two builds differ"
    assert model.ByteSize() < MAX_MODEL_BYTES
    assert all(init.data_type != onnx.TensorProto.FLOAT16 for init in model.graph.initializer)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_model_runs_with_finite_outputs(name: str) -> None:
    model = models.ZOO[name]()
    feeds = models.make_inputs(model, seed=0)
    outputs = run_ort(model, feeds)
    assert len(outputs) == len(model.graph.output)
    for out in outputs:
        assert out.dtype == np.float32
        assert np.isfinite(out).all()


def test_make_inputs_is_deterministic_and_valid() -> None:
    model = models.ZOO["bert_encoder"]()
    feeds = models.make_inputs(model, seed=3, dims={"batch": 3, "sequence": 7})
    again = models.make_inputs(model, seed=3, dims={"batch": 3, "sequence": 7})
    assert feeds.keys() == {"input_ids", "attention_mask"} == again.keys()
    for key in feeds:
        np.testing.assert_array_equal(feeds[key], again[key])
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    assert ids.shape == mask.shape == (3, 7) and ids.dtype == mask.dtype == np.int64
    assert ids.min() >= 0 and ids.max() < 1000
    assert set(np.unique(mask)) <= {0, 1} and mask[0].all() and mask.sum(axis=1).min() >= 1


def test_make_inputs_skips_initializers_listed_as_inputs() -> None:
    model = models.ZOO["regression_initializers_as_inputs"]()
    assert {"W", "B"} <= {value.name for value in model.graph.input}
    assert models.make_inputs(model).keys() == {"x"}


def test_bert_encoder_structure() -> None:
    model = bert_encoder.build()
    ops = [node.op_type for node in model.graph.node]
    for op in ("Gather", "LayerNormalization", "Softmax", "Erf", "Reshape", "Transpose", "Div"):
        assert op in ops, op
    assert ops.count("LayerNormalization") == 1 + 2 * 2
    assert [o.name for o in model.graph.output] == ["last_hidden_state", "pooler_output"]
    mask_value = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}["const.mask_value"]
    assert mask_value == np.float32(-10000.0)


def test_bert_encoder_mask_variant_and_padding_is_ignored() -> None:
    model = bert_encoder.build(finfo_mask=True)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    assert inits["const.mask_value"] == np.float32(-3.4028235e38)
    feeds = models.make_inputs(model, dims={"batch": 1, "sequence": 8})
    feeds["attention_mask"][0, 5:] = 0
    first = run_ort(model, feeds)[0]
    feeds["input_ids"][0, 6] = (feeds["input_ids"][0, 6] + 1) % 1000  # a masked-out token
    second = run_ort(model, feeds)[0]
    np.testing.assert_allclose(first[0, :5], second[0, :5], rtol=0, atol=1e-6)


def test_bert_encoder_base_size_parameters() -> None:
    model = bert_encoder.build_ir(
        layers=12, hidden=768, heads=12, ffn=3072, vocab=30522, max_seq=512, lazy_weights=True
    )
    params = sum(
        v.const_value.size for v in model.graph.initializers.values() if v.dtype == onnx.TensorProto.FLOAT
    )
    assert 105e6 < params < 115e6
    assert len(model.graph) == 13 + 34 * 12


def test_bert_encoder_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="divisible"):
        bert_encoder.build(hidden=30, heads=4)
    with pytest.raises(ValueError, match="opset"):
        bert_encoder.build(opset=16)


def test_interleaved_blocked_variant_puts_pow_after_every_projection() -> None:
    model = bert_encoder.build(interleave_blocked=True)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("Pow") == ops.count("MatMul") - 2 * 2  # all but the two attention MatMuls per layer


def test_opset_is_a_parameter() -> None:
    assert models.mlp.build(opset=13).opset_import[0].version == 13
    assert bert_encoder.build(opset=18).opset_import[0].version == 18
    onnx.checker.check_model(bert_encoder.build(opset=18), full_check=True)


def test_regression_models_carry_the_values_they_are_about() -> None:
    def init_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
        return {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}

    assert (init_values(regressions.large_weight())["gain"] == 20000.0).all()
    bn = regressions.bn_large_variance()
    assert bn.opset_import[0].version == 14 and init_values(bn)["bn.var"].max() == np.float32(1e8)
    assert all(not node.name for node in regressions.unnamed_nodes().graph.node)
    assert regressions.initializers_as_inputs().ir_version == 3
    cast = next(n for n in regressions.existing_cast().graph.node if n.op_type == "Cast")
    assert cast.attribute[0].i == onnx.TensorProto.FLOAT
    random = next(n for n in regressions.random_normal_like().graph.node if n.op_type == "RandomNormalLike")
    assert {a.name: a for a in random.attribute}["dtype"].i == onnx.TensorProto.FLOAT
    shared = regressions.shared_initializer()
    users = sorted(n.op_type for n in shared.graph.node if "W" in n.input)
    assert users == ["MatMul", "Pow"]


def test_blocked_in_if_runs_both_branches() -> None:
    model = regressions.blocked_in_if()
    feeds = models.make_inputs(model)
    with_exp = run_ort(model, feeds)[0]
    feeds["use_exp"] = np.array(False)
    without = run_ort(model, feeds)[0]
    assert (without >= 0).all() and not np.allclose(with_exp, without)


def test_control_flow_takes_both_if_branches() -> None:
    model = models.control_flow.build()
    positive = run_ort(model, {"x": np.full((2, 8), 0.5, np.float32)})[0]
    negative = run_ort(model, {"x": np.full((2, 8), -0.5, np.float32)})[0]
    assert np.isfinite(positive).all() and np.isfinite(negative).all()


def test_cli_lists_and_writes(tmp_path) -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "models", "--list"], capture_output=True, text=True, check=True
    )
    assert listed.stdout.split() == ZOO_NAMES
    out = tmp_path / "mlp.onnx"
    subprocess.run([sys.executable, "-m", "models", "mlp", "-o", str(out)], check=True, capture_output=True)
    assert onnx.load(str(out)).SerializeToString() == models.ZOO["mlp"]().SerializeToString()
    bad = subprocess.run([sys.executable, "-m", "models", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown model" in bad.stderr
