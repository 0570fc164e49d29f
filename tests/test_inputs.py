"""Generated and loaded model inputs."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_validate_models import FP16

from models.builder import make_model, value_info
from mpcompile import errors
from mpcompile.evaluate import accepted_inputs, inputs
from tests.helpers import run
from tests.helpers import run as run_model

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
            value_info("input_ids", ["batch", "sequence"], TensorProto.INT64),
            value_info("token_type_ids", ["batch", "sequence"], TensorProto.INT64),
            value_info("attention_mask", ["batch", "sequence"], TensorProto.INT64),
            value_info("image", ["n", 3, None], FP16),
            value_info("flags", [2], TensorProto.BOOL),
        ],
        [
            value_info("y", ["batch", "sequence", 8]),
            value_info("image_out", ["n", 3, None], FP16),
            value_info("flags_out", [2], TensorProto.BOOL),
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


def _kv_cache_decoder() -> ir.Model:
    """A KV-cache decoder signature as optimum exports it: the mask covers past + current tokens
    (``past_sequence_length + sequence_length``), positions continue after the past, and the
    past is concatenated with the current keys."""
    rng = np.random.default_rng(0)
    model = make_model(
        [
            helper.make_node("Gather", ["embedding", "input_ids"], ["emb"]),
            helper.make_node("Gather", ["positions", "position_ids"], ["pos"]),
            helper.make_node("Add", ["emb", "pos"], ["hidden"]),
            helper.make_node("Unsqueeze", ["hidden", "axis"], ["key"]),
            helper.make_node("Concat", ["past_key", "key"], ["present_key"], axis=2),
            helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        ],
        [
            value_info("input_ids", ["batch_size", "sequence_length"], TensorProto.INT64),
            value_info(
                "attention_mask", ["batch_size", "past_sequence_length + sequence_length"], TensorProto.INT64
            ),
            value_info("position_ids", ["batch_size", "sequence_length"], TensorProto.INT64),
            value_info("past_key", ["batch_size", 1, "past_sequence_length", 8]),
        ],
        [
            value_info("present_key", ["batch_size", 1, "past_sequence_length + sequence_length", 8]),
            value_info("maskf", ["batch_size", "past_sequence_length + sequence_length"]),
        ],
        [
            numpy_helper.from_array(rng.standard_normal((VOCAB, 8)).astype(np.float32), "embedding"),
            numpy_helper.from_array(rng.standard_normal((64, 8)).astype(np.float32), "positions"),
            numpy_helper.from_array(np.array([1], np.int64), "axis"),
        ],
    )
    return ir.serde.deserialize_model(model)


def test_dimension_expressions_follow_their_symbols_and_positions_continue_after_the_past():
    model = _kv_cache_decoder()
    shapes = inputs.parse_shape_options(["past_sequence_length:5", "sequence_length:3", "batch_size:2"])
    specs = {spec.name: spec for spec in inputs.input_specs(model, shapes)}
    assert specs["attention_mask"].shape == (2, 8)  # past 5 + current 3
    assert specs["past_key"].shape == (2, 1, 5, 8)
    assert specs["position_ids"].kind == "positions" and specs["position_ids"].offset == 5
    (feeds,) = inputs.generate_inputs(model, shapes=shapes)
    np.testing.assert_array_equal(feeds["position_ids"], [[5, 6, 7], [5, 6, 7]])
    present, mask = run(ir.to_proto(model), feeds)
    assert present.shape == (2, 1, 8, 8) and mask.shape == (2, 8)
    default = {spec.name: spec for spec in inputs.input_specs(model)}  # defaults: past 16, current 16
    assert default["attention_mask"].shape == (inputs.DEFAULT_BATCH, 2 * inputs.DEFAULT_DIM)
    assert default["position_ids"].offset == inputs.DEFAULT_DIM


def test_positions_stay_inside_their_table():
    model = _kv_cache_decoder()
    shapes = inputs.parse_shape_options(["past_sequence_length:62", "sequence_length:4"])
    (feeds,) = inputs.generate_inputs(model, shapes=shapes)
    assert feeds["position_ids"].max() == 63  # the position table has 64 rows


@pytest.mark.parametrize("placeholder", [0, -1])
def test_fixed_zero_or_negative_dims_are_treated_as_dynamic(placeholder):
    proto = make_model(
        [helper.make_node("Relu", ["x"], ["y"])], [value_info("x", [1, 3, 4])], [value_info("y", [1, 3, 4])]
    )
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_value = placeholder  # as some exporters write
    (spec,) = inputs.input_specs(ir.serde.deserialize_model(proto))
    assert spec.shape == (1, inputs.DEFAULT_DIM, 4)
    assert min(spec.shape) > 0


def test_rejected_generated_inputs_name_the_guessed_input_the_failing_node_reads():
    # Pad by an amount read from an integer input: generated as 0/1, it is a guess.
    model = ir.serde.deserialize_model(
        make_model(
            [
                helper.make_node("Concat", ["pads", "pads"], ["both"], axis=0),
                helper.make_node("Pad", ["x", "both"], ["y"], name="pad_node"),
                helper.make_node("Identity", ["flag"], ["flag_out"]),
            ],
            [
                value_info("x", [4]),
                value_info("pads", [1], TensorProto.INT64),
                value_info("flag", [1], TensorProto.BOOL),
            ],
            [value_info("y", [None]), value_info("flag_out", [1], TensorProto.BOOL)],
        )
    )
    specs = inputs.input_specs(model)
    message = "Non-zero status code returned while running Pad node. Name:'pad_node' Status Message: bad pads"
    error = inputs.rejected_inputs_error(model, message, specs)
    assert error.exit_code == errors.ExitCode.USAGE
    assert "pads (int [1])" in error.message and "flag" not in error.message
    assert "--inputs" in error.message and "\n" not in error.message
    unknown_node = inputs.rejected_inputs_error(model, "something failed", specs)
    assert "pads (int [1])" in unknown_node.message and "flag (bool [1])" in unknown_node.message
    given = inputs.rejected_inputs_error(model, message, None)
    assert given.message == f"the FP32 model rejects the inputs: {message}"


def test_a_mask_length_of_its_own_spans_past_and_current_tokens():
    """TorchScript and dynamo exports name the mask's length with a symbol of its own
    (``total_sequence``, ``s81``): with past inputs, it is past + current."""
    proto = ir.to_proto(_kv_cache_decoder())
    proto.graph.input[1].type.tensor_type.shape.dim[1].dim_param = "s81"
    proto.graph.output[1].type.tensor_type.shape.dim[1].dim_param = "s81"
    model = ir.serde.deserialize_model(proto)
    shapes = inputs.parse_shape_options(["past_sequence_length:5", "sequence_length:3"])
    specs = {spec.name: spec for spec in inputs.input_specs(model, shapes)}
    assert specs["attention_mask"].shape == (inputs.DEFAULT_BATCH, 8)
    assert specs["position_ids"].offset == 5
    pinned = {spec.name: spec for spec in inputs.input_specs(model, {**shapes, "s81": (6,)})}
    assert pinned["attention_mask"].shape == (inputs.DEFAULT_BATCH, 6)  # --shape wins


def _strided_image_model(kernel: int = 20) -> ir.Model:
    """pixel_values[batch, num_channels, height, width] -> Conv(3 -> 4, kernel 20): the channel
    count is the weight's, and 16 pixels are too few for the kernel."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, kernel, kernel)).astype(np.float32), "w")
    return ir.serde.deserialize_model(
        make_model(
            [helper.make_node("Conv", ["pixel_values", "w"], ["y"], name="conv")],
            [value_info("pixel_values", ["batch", "num_channels", "height", "width"])],
            [value_info("y", ["batch", 4, None, None])],
            [weight],
        )
    )


def test_conv_fixes_the_channel_count_and_rejected_image_sizes_try_common_ones():
    """16 pixels are too few for the 20-pixel kernel; the model implies no size of its own, so
    the first common image size (224) comes before the ladder."""
    model = _strided_image_model()
    (spec,) = inputs.input_specs(model)
    assert spec.shape == (inputs.DEFAULT_BATCH, 3, inputs.DEFAULT_DIM, inputs.DEFAULT_DIM)
    proto = ir.to_proto(model)
    tried = []

    def run(batches):
        tried.append(batches[0]["pixel_values"].shape)
        return [run_model(proto, batch) for batch in batches]

    specs = inputs.input_specs(model)
    feeds = [inputs.generate_from_specs(specs)]
    (outputs,), used, choice = accepted_inputs.run_accepting_inputs(model, run, feeds, specs)
    assert choice.dims == {"height": 224, "width": 224} and choice.free_dim is None
    assert choice.source == "a common image size" and used[0]["pixel_values"].shape == (1, 3, 224, 224)
    assert tried == [(1, 3, 16, 16), (1, 3, 224, 224)]
    assert outputs[0].shape == (1, 4, 205, 205)
    with pytest.raises(inputs.InputsError, match="rejects the inputs"):  # the user's own: run once
        accepted_inputs.run_accepting_inputs(model, run, feeds, None)


def test_no_size_of_the_ladder_runs_gives_the_one_line_error():
    """x[batch, sequence, 2] reshaped to 7 elements: no generated size runs, not even the
    Reshape's own constant."""
    model = ir.serde.deserialize_model(
        make_model(
            [helper.make_node("Reshape", ["x", "seven"], ["y"], name="reshape")],
            [value_info("x", ["batch", "sequence", 2])],
            [value_info("y", [7])],
            [numpy_helper.from_array(np.array([7], np.int64), "seven")],
        )
    )
    proto = ir.to_proto(model)
    specs = inputs.input_specs(model)
    tried = []

    def run(batches):
        tried.append(batches[0]["x"].shape)
        return [run_model(proto, batch) for batch in batches]

    with pytest.raises(inputs.InputsError, match="rejects the generated inputs") as caught:
        accepted_inputs.run_accepting_inputs(model, run, [inputs.generate_from_specs(specs)], specs)
    assert "\n" not in caught.value.message and "--inputs" in caught.value.message
    assert "--shape sequence:7" in caught.value.message  # the best guess: the Reshape constant
    ladder = [(1, size, 2) for size in accepted_inputs.FREE_DIM_LADDER]
    assert tried == [(1, inputs.DEFAULT_DIM, 2), (1, 7, 2), *ladder]
