"""keep_io_types (issue 20): FP16 graph inputs and outputs that chain.

``keep_io_types=False`` (``--no-keep-io-types``) makes every float input and output of the main
graph low precision, so a KV-cache decoder's ``present.*`` can be fed back as ``past_key_values.*``;
a list of names (``--keep-io NAME``) keeps those FP32 and lowers the rest. Every numeric test
compares against the FP32 model on ONNX Runtime's CPU EP with the tolerance stated beside it.
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import mpcompile
from models.builder import GraphBuilder
from mpcompile.errors import ExitCode, UsageError
from tests.helpers import assert_close, run

F32, F16, I64 = ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.INT64
HEADS, HEAD_DIM, VOCAB = 2, 8, 32
HIDDEN = HEADS * HEAD_DIM
# FP16 weights and activations against FP32 over one attention layer (logits are O(1)): the
# project's FP16 default tolerance; measured max abs errors are about 1.5e-3.
RTOL, ATOL = 1e-2, 1e-2


def llama_like_decoder() -> onnx.ModelProto:
    """One Llama-style layer with a KV cache: RMSNorm, rotary scaling from the past length (a
    ``Shape`` reads ``past_key_values.0.key``), attention over past + new keys, residual, LM head."""
    b = GraphBuilder("decoder", seed=7)
    ids = b.input("input_ids", I64, ["batch", "seq"])
    mask = b.input("attention_mask", I64, ["batch", "total"])
    past_k = b.input("past_key_values.0.key", F32, ["batch", HEADS, "past", HEAD_DIM])
    past_v = b.input("past_key_values.0.value", F32, ["batch", HEADS, "past", HEAD_DIM])
    hidden = b.op("Gather", [b.weight("embed", [VOCAB, HIDDEN], scale=1.0), ids], name="embed_lookup")
    # RMSNorm
    mean_square = b.op("ReduceMean", [b.op("Mul", [hidden, hidden]), b.const("axis", [-1])])
    rms = b.op("Sqrt", [b.op("Add", [mean_square, b.const("eps", np.float32(1e-6))])])
    normed = b.op("Mul", [b.op("Div", [hidden, rms]), b.weight("norm", [HIDDEN], scale=0.1)])
    heads_shape = b.const("heads_shape", [0, 0, HEADS, HEAD_DIM])

    def project(name: str) -> ir.Value:
        flat = b.op("MatMul", [normed, b.weight(name, [HIDDEN, HIDDEN], scale=0.3)], name=f"{name}_mm")
        return b.op("Transpose", [b.op("Reshape", [flat, heads_shape])], {"perm": [0, 2, 1, 3]})

    q, k, v = project("q_proj"), project("k_proj"), project("v_proj")
    # Rotary-style scaling by position: positions start at the past length, read by Shape.
    past_len = b.op("Gather", [b.op("Shape", [past_k], name="past_shape"), b.const("two", np.int64(2))])
    seq_len = b.op("Gather", [b.op("Shape", [ids]), b.const("one", np.int64(1))])
    positions = b.op("Range", [past_len, b.op("Add", [past_len, seq_len]), b.const("step", np.int64(1))])
    angle = b.op(
        "Mul",
        [
            b.op("Unsqueeze", [b.op("Cast", [positions], {"to": F32.value}), b.const("ax1", [1])]),
            b.const("inv_freq", (1.0 / 10000 ** (np.arange(HEAD_DIM) / HEAD_DIM)).astype(np.float32)),
        ],
    )
    cos = b.op("Cos", [angle])
    q, k = b.op("Mul", [q, cos]), b.op("Mul", [k, cos])
    present_k = b.op("Concat", [past_k, k], {"axis": 2}, name="concat_k")
    present_v = b.op("Concat", [past_v, v], {"axis": 2}, name="concat_v")
    scores = b.op(
        "Mul",
        [
            b.op("MatMul", [q, b.op("Transpose", [present_k], {"perm": [0, 1, 3, 2]})], name="qk"),
            b.const("scale", np.float32(HEAD_DIM**-0.5)),
        ],
    )
    # Additive mask from the integer attention mask: (1 - mask) * -10000, as exporters write it.
    float_mask = b.op("Cast", [b.op("Unsqueeze", [mask, b.const("ax12", [1, 2])])], {"to": F32.value})
    bias = b.op(
        "Mul", [b.op("Sub", [b.const("one_f", np.float32(1)), float_mask]), b.const("neg", np.float32(-1e4))]
    )
    probs = b.op("Softmax", [b.op("Add", [scores, bias])], {"axis": -1})
    context = b.op("Transpose", [b.op("MatMul", [probs, present_v], name="pv")], {"perm": [0, 2, 1, 3]})
    merged = b.op("Reshape", [context, b.const("merged_shape", [0, 0, HIDDEN])])
    attended = b.op("MatMul", [merged, b.weight("o_proj", [HIDDEN, HIDDEN], scale=0.3)], name="o_proj_mm")
    residual = b.op("Add", [hidden, attended])
    logits = b.op("MatMul", [residual, b.weight("lm_head", [HIDDEN, VOCAB], scale=0.3)], name="lm_head_mm")
    b.output(logits, F32, ["batch", "seq", VOCAB], name="logits")
    b.output(present_k, F32, ["batch", HEADS, "total", HEAD_DIM], name="present.0.key")
    b.output(present_v, F32, ["batch", HEADS, "total", HEAD_DIM], name="present.0.value")
    return b.model(18)


def io_dtypes(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    return {value.name: value.type.tensor_type.elem_type for value in (*graph.input, *graph.output)}


FLOAT_IO = ("past_key_values.0.key", "past_key_values.0.value", "logits", "present.0.key", "present.0.value")


def decode(model: onnx.ModelProto, steps: list[np.ndarray], dtype: type) -> list[list[np.ndarray]]:
    """Run ``len(steps)`` decode steps, each step's ``present.*`` fed back as the next ``past_*``."""
    past = [np.zeros((1, HEADS, 0, HEAD_DIM), dtype=dtype)] * 2
    results = []
    for ids in steps:
        total = past[0].shape[2] + ids.shape[1]
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones((1, total), dtype=np.int64),
            "past_key_values.0.key": past[0],
            "past_key_values.0.value": past[1],
        }
        logits, present_k, present_v = run(model, feeds)
        results.append([logits, present_k, present_v])
        past = [present_k, present_v]
    return results


STEPS = [np.array([[3, 17, 5, 30]], dtype=np.int64), np.array([[9]], dtype=np.int64), np.array([[21]])]


def test_default_keeps_every_graph_input_and_output_fp32():
    original = llama_like_decoder()
    converted = mpcompile.convert(original).model
    assert io_dtypes(converted) == io_dtypes(original)


def test_no_keep_io_types_makes_every_float_input_and_output_low_precision():
    converted = mpcompile.convert(llama_like_decoder(), keep_io_types=False).model
    dtypes = io_dtypes(converted)
    assert {name: dtypes[name] for name in FLOAT_IO} == dict.fromkeys(FLOAT_IO, onnx.TensorProto.FLOAT16)
    # Integer IO never changes.
    assert dtypes["input_ids"] == dtypes["attention_mask"] == onnx.TensorProto.INT64
    # present.* and past_key_values.* chain: the same dtype on both sides.
    assert dtypes["present.0.key"] == dtypes["past_key_values.0.key"]
    # The Shape reading the past reads the FP16 input itself: no Cast of the whole cache for it.
    shape = next(node for node in converted.graph.node if node.name == "past_shape")
    assert list(shape.input) == ["past_key_values.0.key"]
    onnx.checker.check_model(converted, full_check=True)


def test_fp16_kv_cache_chains_for_three_steps_and_matches_fp32():
    """present (FP16) goes back in as past (FP16) for 3 steps in ORT; each step's logits and
    cache match the FP32 model's decode loop within RTOL/ATOL."""
    original = llama_like_decoder()
    converted = mpcompile.convert(original, keep_io_types=False).model
    reference = decode(original, STEPS, np.float32)
    low = decode(converted, [ids.astype(np.int64) for ids in STEPS], np.float16)
    for step, (want, got) in enumerate(zip(reference, low, strict=True)):
        assert [array.dtype for array in got] == [np.float16] * 3, f"step {step}"
        assert_close(want, got, rtol=RTOL, atol=ATOL)
    assert low[-1][1].shape == (1, HEADS, 6, HEAD_DIM)  # 4 + 1 + 1 positions cached


def test_a_list_of_names_keeps_those_fp32_and_lowers_the_rest():
    original = llama_like_decoder()
    for keep in (["logits"], ("logits",), frozenset({"logits"}), "logits"):
        converted = mpcompile.convert(original, keep_io_types=keep).model
        dtypes = io_dtypes(converted)
        assert dtypes["logits"] == onnx.TensorProto.FLOAT, keep
        assert {name: dtypes[name] for name in FLOAT_IO if name != "logits"} == dict.fromkeys(
            (name for name in FLOAT_IO if name != "logits"), onnx.TensorProto.FLOAT16
        )
    options = mpcompile.ConvertOptions(keep_io_types=("past_key_values.0.key", "present.0.key"))
    converted = mpcompile.convert(original, options).model
    dtypes = io_dtypes(converted)
    assert dtypes["past_key_values.0.key"] == dtypes["present.0.key"] == onnx.TensorProto.FLOAT
    assert dtypes["past_key_values.0.value"] == dtypes["logits"] == onnx.TensorProto.FLOAT16
    # An empty list keeps nothing: the same as keep_io_types=False.
    empty = mpcompile.convert(original, keep_io_types=[]).model
    assert (
        empty.SerializeToString()
        == mpcompile.convert(original, keep_io_types=False).model.SerializeToString()
    )


def test_a_list_keeping_the_cache_fp32_still_matches_fp32():
    original = llama_like_decoder()
    keep = ["past_key_values.0.key", "past_key_values.0.value", "present.0.key", "present.0.value"]
    converted = mpcompile.convert(original, keep_io_types=keep).model
    reference = decode(original, STEPS, np.float32)
    low = decode(converted, STEPS, np.float32)
    for want, got in zip(reference, low, strict=True):
        assert got[0].dtype == np.float16 and got[1].dtype == np.float32
        assert_close(want, got, rtol=RTOL, atol=ATOL)


def test_an_unknown_name_is_a_usage_error():
    with pytest.raises(UsageError, match="'input_idz'"):
        mpcompile.convert(llama_like_decoder(), keep_io_types=["logits", "input_idz"])


def no_allow_op_model() -> onnx.ModelProto:
    """Nothing on the allow list: Exp (block), Relu and Add (follow)."""
    b = GraphBuilder("no_allow")
    x = b.input("x", F32, [2, 5])
    bias = b.input("bias", F32, [5])
    b.output(b.op("Add", [b.op("Relu", [x]), bias]), F32, [2, 5], name="y")
    b.output(b.op("Exp", [x], name="exp"), F32, [2, 5], name="e")
    return b.model(17)


def test_a_graph_without_allow_ops_gets_low_io_too():
    original = no_allow_op_model()
    converted = mpcompile.convert(original, keep_io_types=False).model
    assert set(io_dtypes(converted).values()) == {onnx.TensorProto.FLOAT16}
    assert (
        mpcompile.convert(original).model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    )
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(2, 5)).astype(np.float32), "bias": rng.normal(size=5).astype(np.float32)}
    low_feeds = {name: array.astype(np.float16) for name, array in feeds.items()}
    # Inputs and outputs rounded to FP16 (relative step 2**-11): 2e-3 relative covers both.
    assert_close(run(original, feeds), run(converted, low_feeds), rtol=2e-3, atol=1e-3)


def merged_decoder() -> onnx.ModelProto:
    """optimum's merged decoder in small: an If on ``use_cache_branch`` whose branches read the
    past (with past) or not (without); both give ``logits``."""
    from onnx import TensorProto, helper, numpy_helper

    def branch(name: str, nodes: list[onnx.NodeProto], output: str) -> onnx.GraphProto:
        return helper.make_graph(
            nodes, name, [], [helper.make_tensor_value_info(output, TensorProto.FLOAT, [2, 4])]
        )

    with_past = branch(
        "with_past",
        [
            helper.make_node("Add", ["x", "past"], ["summed"]),
            helper.make_node("MatMul", ["summed", "w"], ["out_past"]),
        ],
        "out_past",
    )
    without_past = branch(
        "without_past", [helper.make_node("MatMul", ["x", "w"], ["out_plain"])], "out_plain"
    )
    weight = (np.random.default_rng(3).normal(size=(4, 4)) * 0.5).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node(
                "If", ["use_cache_branch"], ["logits"], then_branch=with_past, else_branch=without_past
            )
        ],
        "merged",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
            helper.make_tensor_value_info("past", TensorProto.FLOAT, [2, 4]),
            helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_merged_decoder_gets_low_outputs_on_both_branches(use_cache: bool):
    original = merged_decoder()
    converted = mpcompile.convert(original, keep_io_types=False).model
    dtypes = io_dtypes(converted)
    assert dtypes["logits"] == dtypes["x"] == dtypes["past"] == onnx.TensorProto.FLOAT16
    rng = np.random.default_rng(1)
    feeds = {
        "x": rng.normal(size=(2, 4)).astype(np.float32),
        "past": rng.normal(size=(2, 4)).astype(np.float32),
        "use_cache_branch": np.array(use_cache),
    }
    low_feeds = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in feeds.items()}
    (got,) = run(converted, low_feeds)
    assert got.dtype == np.float16
    assert_close(run(original, feeds), [got], rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- CLI


def _saved(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "decoder.onnx"
    path.write_bytes(llama_like_decoder().SerializeToString())
    return path


def test_cli_keep_io_name_keeps_it_and_lowers_the_rest(run_cli, tmp_path: pathlib.Path):
    source = _saved(tmp_path)
    result = run_cli("convert", source, "-o", tmp_path / "out.onnx", "--keep-io", "logits", "-q")
    assert result.exit_code == 0, result.stderr
    dtypes = io_dtypes(onnx.load(tmp_path / "out.onnx"))
    assert dtypes["logits"] == onnx.TensorProto.FLOAT
    assert dtypes["present.0.key"] == dtypes["past_key_values.0.key"] == onnx.TensorProto.FLOAT16


def test_cli_no_keep_io_types_chains(run_cli, tmp_path: pathlib.Path):
    source = _saved(tmp_path)
    result = run_cli("convert", source, "-o", tmp_path / "out.onnx", "--no-keep-io-types", "-q")
    assert result.exit_code == 0, result.stderr
    dtypes = io_dtypes(onnx.load(tmp_path / "out.onnx"))
    assert {dtypes[name] for name in FLOAT_IO} == {onnx.TensorProto.FLOAT16}


@pytest.mark.parametrize(
    "args",
    [("--keep-io", "input_idz"), ("--keep-io", "logits", "--keep-io-types")],
    ids=["unknown-name", "contradicts-keep-io-types"],
)
def test_cli_bad_keep_io_is_a_one_line_usage_error(run_cli, tmp_path: pathlib.Path, args):
    source = _saved(tmp_path)
    before = source.read_bytes()
    result = run_cli("convert", source, "-o", tmp_path / "out.onnx", *args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == ExitCode.USAGE, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not (tmp_path / "out.onnx").exists()
    assert source.read_bytes() == before


def test_policy_file_keep_io_types_list(run_cli, tmp_path: pathlib.Path):
    source = _saved(tmp_path)
    policy = tmp_path / "policy.toml"
    policy.write_text('keep_io_types = ["logits"]\n')
    result = run_cli("convert", source, "-o", tmp_path / "out.onnx", "--policy", policy, "-q")
    assert result.exit_code == 0, result.stderr
    dtypes = io_dtypes(onnx.load(tmp_path / "out.onnx"))
    assert dtypes["logits"] == onnx.TensorProto.FLOAT
    assert dtypes["present.0.value"] == onnx.TensorProto.FLOAT16
    # An explicit --keep-io-types wins over the file's list.
    result = run_cli(
        "convert", source, "-o", tmp_path / "kept.onnx", "--policy", policy, "--keep-io-types", "-q"
    )
    assert result.exit_code == 0, result.stderr
    assert set(io_dtypes(onnx.load(tmp_path / "kept.onnx")).values()) == {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.INT64,
    }
