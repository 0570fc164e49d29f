"""Generated inputs a model accepts (mpcompile/evaluate/accepted_inputs.py): the sizes and scalar
values the model implies are tried before the size ladder, and the error names the dims.

The slow test runs ``convert --auto`` with generated inputs and no ``--shape`` on the exporter
corpus's ViT, CLIP and Swin entries (``$MPCOMPILE_CORPUS``; skipped, saying why, when absent)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from models import corpus, vit
from models.builder import make_model, value_info, weight
from mpcompile.evaluate import accepted_inputs, implied_sizes, inputs
from mpcompile.evaluate.ort_session import make_session


def _dynamic_image(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``pixel_values[batch, 3, H, W]`` with symbolic ``height`` and ``width``, as optimum declares it."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[2].ClearField("dim_value")
    dims[2].dim_param = "height"
    dims[3].ClearField("dim_value")
    dims[3].dim_param = "width"
    return proto


def vit_224() -> ir.Model:
    """A one-layer ViT with patch 16 and 197 position embeddings (224x224 images), H/W symbolic."""
    proto = vit.build(image_size=224, patch=16, layers=1, hidden=16, heads=2, mlp=32)
    return ir.serde.deserialize_model(_dynamic_image(proto))


def silero_like() -> ir.Model:
    """A voice-activity detector shaped like silero-vad: ``input[batch, samples]``,
    ``state[2, batch, 8]``, scalar ``sr``. ``If(Equal(sr, 16000))`` runs the 16 kHz path, else
    ``If(Equal(sr, 8000))`` the 8 kHz path, else a Gather whose index is out of range for any
    input (as a model with no path for other rates fails)."""
    mean = helper.make_node("ReduceMean", ["input", "axis1"], ["mean"], name="mean", keepdims=1)
    state_mean = helper.make_node(
        "ReduceMean", ["state", "all"], ["state_mean"], name="state_mean", keepdims=0
    )

    def branch(name: str, nodes: list[onnx.NodeProto], output: str) -> onnx.GraphProto:
        return helper.make_graph(nodes, name, [], [value_info(output, ["batch", 1])])

    path16 = branch(
        "rate16k", [helper.make_node("Add", ["mean", "state_mean"], ["out16"], name="add16")], "out16"
    )
    path8 = branch("rate8k", [helper.make_node("Mul", ["mean", "two"], ["out8"], name="mul8")], "out8")
    no_path = branch(
        "no_rate",
        [
            helper.make_node("Mul", ["sr", "zero"], ["sr0"], name="sr_times_zero"),
            helper.make_node("Add", ["sr0", "far"], ["index"], name="far_index"),
            helper.make_node("Gather", ["input", "index"], ["picked"], name="out_of_range", axis=1),
            helper.make_node("Unsqueeze", ["picked", "axis1"], ["out_bad"], name="as_column"),
        ],
        "out_bad",
    )
    is8 = helper.make_node("Equal", ["sr", "rate8"], ["is8"], name="is8")
    inner = helper.make_node("If", ["is8"], ["out_else"], name="if8", then_branch=path8, else_branch=no_path)
    otherwise = branch("other_rates", [is8, inner], "out_else")
    return ir.serde.deserialize_model(
        make_model(
            [
                mean,
                state_mean,
                helper.make_node("Equal", ["sr", "rate16"], ["is16"], name="is16"),
                helper.make_node(
                    "If", ["is16"], ["output"], name="if16", then_branch=path16, else_branch=otherwise
                ),
            ],
            [
                value_info("input", ["batch", "samples"]),
                value_info("state", [2, "batch", 8]),
                value_info("sr", [], TensorProto.INT64),
            ],
            [value_info("output", ["batch", 1])],
            [
                numpy_helper.from_array(np.array([1], np.int64), "axis1"),
                numpy_helper.from_array(np.array([0, 1, 2], np.int64), "all"),
                numpy_helper.from_array(np.array(2.0, np.float32), "two"),
                numpy_helper.from_array(np.array(0, np.int64), "zero"),
                numpy_helper.from_array(np.array(1 << 20, np.int64), "far"),
                numpy_helper.from_array(np.array(16000, np.int64), "rate16"),
                numpy_helper.from_array(np.array(8000, np.int64), "rate8"),
            ],
            opset=18,
        )
    )


def _counting_runner(model: ir.Model):
    session = make_session(ir.to_proto(model).SerializeToString(), ["CPUExecutionProvider"])
    tried: list[dict[str, np.ndarray]] = []

    def run(batches):
        tried.append(batches[0])
        return [session.run(None, batch) for batch in batches]

    return run, tried


def _accept(model: ir.Model, **kwargs):
    specs = inputs.input_specs(model)
    run, tried = _counting_runner(model)
    feeds = [inputs.cast_feeds(model, inputs.generate_from_specs(specs))]
    result = accepted_inputs.run_accepting_inputs(model, run, feeds, specs, **kwargs)
    return result, tried


def test_vit_position_embedding_implies_224_pixels():
    model = vit_224()
    (implied, *_rest) = implied_sizes.image_sizes(model, inputs.model_inputs(model))
    assert (implied.height, implied.width) == (224, 224)
    assert "[1, 197, 16]" in implied.source and "patch stride 16" in implied.source
    (outputs,), used, choice = _accept(model)[0]
    _, tried = _accept(model)
    assert [batch["pixel_values"].shape for batch in tried] == [(1, 3, 16, 16), (1, 3, 224, 224)]
    assert choice.dims == {"height": 224, "width": 224} and choice.free_dim is None
    assert used[0]["pixel_values"].shape == (1, 3, 224, 224) and outputs[0].shape == (1, 10)


def test_silero_like_sample_rate_is_compared_with_16000():
    model = silero_like()
    implied = implied_sizes.scalar_values(model, inputs.model_inputs(model))
    assert [value.value for value in implied["sr"]] == [16000, 8000]  # the main graph's first
    ((outputs,), used, choice), tried = _accept(model)
    assert [int(batch["sr"]) for batch in tried] == [0, 16000]  # the default 0/1 int, then 16000
    assert choice.values == {"sr": 16000} and choice.dims == {}
    assert used[0]["sr"].dtype == np.int64 and used[0]["sr"].shape == ()
    state_mean = float(np.mean(used[0]["state"]))
    np.testing.assert_allclose(
        outputs[0], used[0]["input"].mean(axis=1, keepdims=True) + state_mean, rtol=1e-6
    )


def _never_runs() -> ir.Model:
    """Patch Conv (16, stride 16), a position embedding of 197 rows (224 pixels), then a Reshape
    to 50 rows that 197 rows never fit: no size runs."""
    hidden = 8
    nodes = [
        helper.make_node("Conv", ["pixel_values", "patch"], ["patches"], name="patch", strides=[16, 16]),
        helper.make_node("Reshape", ["patches", "flat"], ["tokens_t"], name="flatten"),
        helper.make_node("Transpose", ["tokens_t"], ["tokens"], name="to_tokens", perm=[0, 2, 1]),
        helper.make_node("Add", ["tokens", "pos197"], ["embedded"], name="add197"),
        helper.make_node("Reshape", ["embedded", "rows50"], ["y"], name="to50"),
    ]
    proto = make_model(
        nodes,
        [value_info("pixel_values", ["batch", 3, "height", "width"])],
        [value_info("y", [1, 50, None])],
        [
            weight("patch", [hidden, 3, 16, 16], scale=0.05),
            numpy_helper.from_array(np.array([0, hidden, -1], np.int64), "flat"),
            weight("pos197", [1, 197, hidden], seed=1),
            numpy_helper.from_array(np.array([1, 50, -1], np.int64), "rows50"),
        ],
    )
    return ir.serde.deserialize_model(proto)


def test_nothing_runs_names_the_dims_and_the_best_guess():
    error, tried = _accept_tries(_never_runs())
    message = error.message
    assert "\n" not in message and "height, width" in message
    assert "--shape height:224 --shape width:224" in message and "--inputs" in message
    # default 16; 224 (197 rows); 256, 384, 512; the ladder without repeats
    sides = [batch["pixel_values"].shape[2] for batch in tried]
    assert sides == [16, 224, 256, 384, 512, 32, 64, 128, 1024, 4096]


def _accept_tries(model: ir.Model, **kwargs):
    specs = inputs.input_specs(model)
    run, tried = _counting_runner(model)
    try:
        accepted_inputs.run_accepting_inputs(model, run, [inputs.generate_from_specs(specs)], specs, **kwargs)
    except inputs.InputsError as exc:
        return exc, tried
    return None, tried


def test_retries_stop_at_the_time_limit_and_still_suggest_the_implied_size():
    error, tried = _accept_tries(vit_224(), time_limit=0.0)
    assert len(tried) == 1 and error is not None
    assert "stopped at the 0 s limit" in error.message
    assert "--shape height:224 --shape width:224" in error.message


def test_retries_stop_after_max_tries():
    error, tried = _accept_tries(_never_runs(), max_tries=2)
    assert len(tried) == 3 and "stopped after 2 tries" in error.message


def _reshaped_to_seven() -> ir.Model:
    """x[batch, sequence, 2] reshaped to 7 elements: no size runs; the Reshape's 7 is the guess."""
    return ir.serde.deserialize_model(
        make_model(
            [helper.make_node("Reshape", ["x", "seven"], ["y"], name="reshape")],
            [value_info("x", ["batch", "sequence", 2])],
            [value_info("y", [7])],
            [numpy_helper.from_array(np.array([7], np.int64), "seven")],
        )
    )


def test_cli_error_is_one_line_with_the_shape_hint(tmp_path):
    path = tmp_path / "never.onnx"
    onnx.save(ir.to_proto(_reshaped_to_seven()), path)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "mpcompile.cli",
            "convert",
            str(path),
            "-o",
            str(tmp_path / "o.onnx"),
            "--auto",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 2, completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert "dynamic dims sequence" in lines[0] and "--shape sequence:7" in lines[0] and "--inputs" in lines[0]


CORPUS_ARCHITECTURES = ("vit", "clip", "swin")


def _vision_entries() -> tuple[list[corpus.Entry], str]:
    try:
        entries = corpus.load_manifest(status="ok")
    except FileNotFoundError as exc:
        return [], str(exc)
    chosen = [entry for entry in entries if entry.architecture in CORPUS_ARCHITECTURES]
    return chosen, "" if chosen else f"the corpus has no {'/'.join(CORPUS_ARCHITECTURES)} entry"


VISION_ENTRIES, VISION_SKIP = _vision_entries()


@pytest.mark.slow
@pytest.mark.parametrize("entry", VISION_ENTRIES or [None], ids=lambda entry: entry.name if entry else "none")
def test_corpus_vision_models_auto_with_generated_inputs(entry, tmp_path):
    if entry is None:
        print(f"skipped: {VISION_SKIP}")
        pytest.skip(VISION_SKIP)
    out = tmp_path / "auto.onnx"
    command = ["convert", str(entry.model_path), "-o", str(out), "--auto", "--budget", "4", "--json"]
    completed = subprocess.run(
        [sys.executable, "-m", "mpcompile.cli", *command], capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr
    auto = json.loads(completed.stdout)["auto"]
    print(
        f"{entry.name}: inputs {auto['inputs']}; evaluations {auto['evaluations']}, passed {auto['passed']}"
    )
    assert auto["inputs"].startswith("generated") and out.is_file()
