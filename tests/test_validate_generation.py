"""mpcompile/validate/generation.py: the plain-ORT greedy loop on tiny hand-built decoders (no corpus).

The toy decoder's next token is (sum of every token so far) mod 16, computed from its KV cache:
``present.0.key`` is the past with the new ids appended, so the loop generates the numpy rule's
tokens only when it feeds each present back as the next past. The real export folders are in
tests/test_deploy_folders.py.
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mpcompile.validate.generation import (
    DECODER_ONLY,
    ENCODER_DECODER,
    GenerationError,
    Generator,
    detect_layout,
)

VOCAB = 16


def _toy_decoder(past_type: int, present_type: int) -> onnx.ModelProto:
    """``present = Concat(past, ids)``; ``logits = OneHot(sum(present) mod VOCAB)`` at the last position."""
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids_float"], to=past_type),
        helper.make_node("Unsqueeze", ["ids_float", "axes_1_3"], ["ids_4d"]),
        helper.make_node("Concat", ["past_key_values.0.key", "ids_4d"], ["concat"], axis=2),
        helper.make_node("Cast", ["concat"], ["present.0.key"], to=present_type),
        helper.make_node("ReduceSum", ["concat"], ["total"], keepdims=1),
        helper.make_node("Cast", ["total"], ["total_int"], to=TensorProto.INT64),
        helper.make_node("Mod", ["total_int", "vocab"], ["token"]),
        helper.make_node("OneHot", ["token", "vocab", "one_hot_values"], ["one_hot"]),
        helper.make_node("Reshape", ["one_hot", "logits_shape"], ["logits"]),
    ]
    initializers = [
        helper.make_tensor("axes_1_3", TensorProto.INT64, [2], [1, 3]),
        helper.make_tensor("vocab", TensorProto.INT64, [], [VOCAB]),
        helper.make_tensor("one_hot_values", TensorProto.FLOAT, [2], [0.0, 1.0]),
        helper.make_tensor("logits_shape", TensorProto.INT64, [3], [1, 1, VOCAB]),
    ]
    graph = helper.make_graph(
        nodes,
        "toy_decoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, "total"]),
            helper.make_tensor_value_info("past_key_values.0.key", past_type, [1, 1, "past", 1]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, VOCAB]),
            helper.make_tensor_value_info("present.0.key", present_type, [1, 1, "total", 1]),
        ],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _expected(prompt: list[int], new_tokens: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(new_tokens):
        tokens.append(sum(tokens) % VOCAB)
    return tokens[len(prompt) :]


def _folder(tmp_path: pathlib.Path, past_type: int, present_type: int) -> pathlib.Path:
    onnx.save_model(_toy_decoder(past_type, present_type), tmp_path / "model.onnx")
    return tmp_path


@pytest.mark.parametrize("faithful", [False, True], ids=["ort", "faithful"])
@pytest.mark.parametrize("float_type", [TensorProto.FLOAT, TensorProto.FLOAT16], ids=["fp32", "fp16"])
def test_decoder_only_loop_feeds_present_back_as_past(
    tmp_path: pathlib.Path, float_type: int, faithful: bool
) -> None:
    generator = Generator(_folder(tmp_path, float_type, float_type), faithful=faithful)
    assert generator.layout.kind == DECODER_ONLY
    prompt = [3, 5, 7]
    result = generator.generate(prompt, 12)
    assert list(result.tokens) == _expected(prompt, 12)
    assert len(result.step_logits) == 12 and result.step_logits[0].dtype == np.float32
    dtype = "float16" if float_type == TensorProto.FLOAT16 else "float32"
    assert result.float_io["model.onnx:past_key_values.0.key"] == dtype
    assert result.float_io["model.onnx:present.0.key"] == dtype
    assert set(generator.declared_float_io().values()) >= {
        "tensor(float16)" if dtype == "float16" else "tensor(float)"
    }


def test_present_dtype_differing_from_past_is_an_error(tmp_path: pathlib.Path) -> None:
    generator = Generator(_folder(tmp_path, TensorProto.FLOAT, TensorProto.FLOAT16))
    with pytest.raises(
        GenerationError,
        match=r"past_key_values\.0\.key is declared tensor\(float\) but present\.0\.key comes out float16",
    ):
        generator.generate([3, 5], 4)


def test_layout_detection(tmp_path: pathlib.Path) -> None:
    # detect_layout reads the decoders' outputs (a generative decoder has logits): real graphs here
    decoder = _toy_decoder(TensorProto.FLOAT, TensorProto.FLOAT).SerializeToString()
    (tmp_path / "encoder_model.onnx").write_bytes(b"")
    for name in ("decoder_model.onnx", "decoder_with_past_model.onnx"):
        (tmp_path / name).write_bytes(decoder)
    pair = detect_layout(tmp_path)
    assert pair.kind == ENCODER_DECODER
    assert pair.files == ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx")
    with pytest.raises(GenerationError, match=r"without decoder_model_merged\.onnx"):
        detect_layout(tmp_path, merged=True)
    (tmp_path / "decoder_model_merged.onnx").write_bytes(decoder)
    assert detect_layout(tmp_path).files == ("encoder_model.onnx", "decoder_model_merged.onnx")
    assert detect_layout(tmp_path, merged=False) == pair
    with pytest.raises(GenerationError, match="not an optimum export folder"):
        detect_layout(tmp_path / "absent")
