"""Generated and loaded model inputs."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_validate_models import FP16, make_model, tensor

from mpcompile import inputs

VOCAB = 50


def _encoder_like() -> ir.Model:
    """input_ids → Gather(embedding[VOCAB, 8]); token_type_ids → Cast → Gather(types[2, 8]);
    attention_mask (int64) and pixel-ish float16 input with a fixed channel dim."""
    rng = np.random.default_rng(0)
    model = make_model(
        [
            helper.make_node("Gather", ["embedding", "input_ids"], ["emb"]),
            helper.make_node("Cast", ["token_type_ids"], ["tt32"], to=TensorProto.INT32),
            helper.make_node("Gather", ["types", "tt32"], ["temb"]),
            helper.make_node("Add", ["emb", "temb"], ["sum"]),
            helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["maskf", "axis"], ["mask3"]),
            helper.make_node("Mul", ["sum", "mask3"], ["y"]),
            helper.make_node("Identity", ["image"], ["image_out"]),
            helper.make_node("Identity", ["flags"], ["flags_out"]),
        ],
        [
            tensor("input_ids", ["batch", "sequence"], TensorProto.INT64),
            tensor("token_type_ids", ["batch", "sequence"], TensorProto.INT64),
            tensor("attention_mask", ["batch", "sequence"], TensorProto.INT64),
            tensor("image", ["n", 3, None], FP16),
            tensor("flags", [2], TensorProto.BOOL),
        ],
        [
            tensor("y", ["batch", "sequence", 8]),
            tensor("image_out", ["n", 3, None], FP16),
            tensor("flags_out", [2], TensorProto.BOOL),
        ],
        [
            numpy_helper.from_array(rng.standard_normal((VOCAB, 8)).astype(np.float32), "embedding"),
            numpy_helper.from_array(rng.standard_normal((2, 8)).astype(np.float32), "types"),
            numpy_helper.from_array(np.array([2], np.int64), "axis"),
        ],
    )
    return ir.serde.deserialize_model(model)


def test_specs_follow_signature_and_defaults():
    specs = {spec.name: spec for spec in inputs.input_specs(_encoder_like())}
    assert specs["input_ids"].kind == "token_ids" and specs["input_ids"].high == VOCAB
    assert specs["token_type_ids"].kind == "token_ids" and specs["token_type_ids"].high == 2  # through a Cast
    assert specs["attention_mask"].kind == "mask"
    assert specs["image"].kind == "normal" and specs["image"].dtype == np.float16
    assert specs["flags"].kind == "bool"
    assert specs["input_ids"].shape == (inputs.DEFAULT_BATCH, inputs.DEFAULT_DIM)
    assert specs["image"].shape == (inputs.DEFAULT_BATCH, 3, inputs.DEFAULT_DIM)


def test_generated_values_are_valid_and_seeded():
    model = _encoder_like()
    shapes = inputs.parse_shape_options(["sequence:64", "batch:8"])
    (feeds,) = inputs.generate_inputs(model, shapes=shapes, seed=3)
    ids = feeds["input_ids"]
    assert ids.dtype == np.int64 and ids.shape == (8, 64)
    assert ids.min() >= 0 and ids.max() < VOCAB and len(np.unique(ids)) > 10
    assert set(np.unique(feeds["token_type_ids"])) <= {0, 1}
    mask = feeds["attention_mask"]
    assert mask.dtype == np.int64 and set(np.unique(mask)) <= {0, 1}
    assert (mask[:, :32] == 1).all()  # at least half of each row is kept
    assert (np.diff(mask, axis=1) <= 0).all()  # ones, then the padded tail
    image = feeds["image"].astype(np.float32)
    assert abs(image.mean()) < 0.5 and 0.6 < image.std() < 1.4
    again = inputs.generate_inputs(model, shapes=shapes, seed=3, batches=2)
    for name in feeds:
        np.testing.assert_array_equal(again[0][name], feeds[name])
    assert not np.array_equal(again[1]["image"], feeds["image"])  # batches differ


def test_whole_input_shape_and_errors():
    model = _encoder_like()
    shapes = inputs.parse_shape_options(["image:2x3x5"])
    specs = {spec.name: spec for spec in inputs.input_specs(model, shapes)}
    assert specs["image"].shape == (2, 3, 5)
    with pytest.raises(inputs.InputsError, match="fixed at 3"):
        inputs.input_specs(model, inputs.parse_shape_options(["image:2x4x5"]))
    with pytest.raises(inputs.InputsError, match="rank 3"):
        inputs.input_specs(model, inputs.parse_shape_options(["image:2x3"]))
    with pytest.raises(inputs.InputsError, match="no input or symbolic dimension"):
        inputs.input_specs(model, inputs.parse_shape_options(["nothing:4"]))
    for bad in ["image", "image:", "image:2xa", "image:-1"]:
        with pytest.raises(inputs.InputsError):
            inputs.parse_shape_options([bad])


def test_load_npz_file_and_folder(tmp_path):
    model = _encoder_like()
    batches = inputs.generate_inputs(model, seed=0, batches=2)
    np.savez(tmp_path / "b0.npz", **batches[0])
    folder = tmp_path / "many"
    folder.mkdir()
    for index, batch in enumerate(batches):
        np.savez(folder / f"batch{index}.npz", **batch)
    (one,) = inputs.load_inputs(tmp_path / "b0.npz")
    np.testing.assert_array_equal(one["input_ids"], batches[0]["input_ids"])
    many = inputs.load_inputs(folder)
    assert len(many) == 2
    np.testing.assert_array_equal(many[1]["image"], batches[1]["image"])
    inputs.check_feeds(model, many[0])
    with pytest.raises(inputs.InputsError, match="no data for model input"):
        inputs.check_feeds(model, {"input_ids": one["input_ids"]})
    with pytest.raises(inputs.InputsError, match="no input"):
        inputs.check_feeds(model, {**one, "extra": one["input_ids"]})
    with pytest.raises(inputs.InputsError, match=r"no \.npz"):
        inputs.load_inputs(_empty_folder(tmp_path))


def _empty_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


def test_cast_feeds_to_declared_types():
    model = _encoder_like()
    (feeds,) = inputs.generate_inputs(model)
    feeds["image"] = feeds["image"].astype(np.float32)
    cast = inputs.cast_feeds(model, feeds)
    assert cast["image"].dtype == np.float16 and cast["input_ids"].dtype == np.int64
