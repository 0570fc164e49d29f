"""Feeds captured from the FP32 pipeline: ``convert FOLDER --auto`` and ``report FOLDER --numerics``
(mpcompile/validate/pipeline.py, mpcompile/commands/auto_folder.py, mpcompile/commands/report.py).

The toy encoder-decoder is built in code: its encoder emits values of a few thousand, and the
decoder's first MatMul multiplies them to ~1e5, beyond FP16's 65504. On the N(0, 1)
``encoder_hidden_states`` a file judged alone is fed, that MatMul stays around 100, so plain
``convert`` (whose range check runs on generated inputs) converts it and the FP16 folder's greedy
tokens break; only the encoder's real outputs show the overflow. The corpus folders' acceptance
is at the end (slow; skipped when the corpus is not built).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.corpus import generative_corpus_folders
from models.corpus.manifest import FolderEntry
from mpcompile.analysis.flop_share import heavy_flops
from mpcompile.cli import main
from mpcompile.errors import ExitCode
from mpcompile.validate.pipeline import GenerationJudge, capture_pipeline

VOCAB, HIDDEN, NEW_TOKENS = 16, 16, 6
UNSEEN_PROMPTS = "3 14 9\n12 5 7 11 4\n"  # neither validate's (seed 0) nor --auto's (seed 1) prompts


def _model(nodes, name, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def _encoder(rng: np.random.Generator) -> onnx.ModelProto:
    """``last_hidden_state = Gather(E, input_ids) @ We``: values of a few thousand (FP16 holds them)."""
    embedding = rng.normal(size=(VOCAB, HIDDEN)).astype(np.float32)
    weight = (rng.normal(size=(HIDDEN, HIDDEN)) * 300).astype(np.float32)
    return _model(
        [
            helper.make_node("Gather", ["E", "input_ids"], ["embedded"]),
            helper.make_node("MatMul", ["embedded", "We"], ["last_hidden_state"]),
        ],
        "encoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, "sequence"]),
        ],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [1, "sequence", HIDDEN])],
        [numpy_helper.from_array(embedding, "E"), numpy_helper.from_array(weight, "We")],
    )


def _decoder_weights(rng: np.random.Generator) -> list[onnx.TensorProto]:
    arrays = {
        "W1": rng.normal(size=(HIDDEN, HIDDEN)) * 8,
        "W2": rng.normal(size=(HIDDEN, VOCAB)) * 1e-4,
        "D": rng.normal(size=(VOCAB, HIDDEN)),
        "W3": rng.normal(size=(HIDDEN, VOCAB)),
    }
    initializers = [numpy_helper.from_array(a.astype(np.float32), name) for name, a in arrays.items()]
    initializers.append(helper.make_tensor("axis_1", TensorProto.INT64, [1], [1]))
    return initializers


def _decoder_nodes(logits: str = "logits") -> list[onnx.NodeProto]:
    """``logits = Gather(D, ids) @ W3 + ReduceMean(encoder_hidden_states @ W1) @ W2``: the first
    MatMul reaches ~1e5 on the encoder's real outputs, ~1e2 on N(0, 1) ones. Named nodes, as an
    exporter writes them: a merged decoder's branches repeat the names."""
    return [
        helper.make_node("MatMul", ["encoder_hidden_states", "W1"], ["large"], name="/large/MatMul"),
        helper.make_node("ReduceMean", ["large", "axis_1"], ["pooled"], keepdims=1, name="/pool/ReduceMean"),
        helper.make_node("MatMul", ["pooled", "W2"], ["from_encoder"], name="/from_encoder/MatMul"),
        helper.make_node("Gather", ["D", "input_ids"], ["embedded"], name="/embed/Gather"),
        helper.make_node("MatMul", ["embedded", "W3"], ["from_ids"], name="/from_ids/MatMul"),
        helper.make_node("Add", ["from_ids", "from_encoder"], [logits], name="/logits/Add"),
    ]


_DECODER_INPUTS = [
    helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "target"]),
    helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, [1, "sequence", HIDDEN]),
    helper.make_tensor_value_info("encoder_attention_mask", TensorProto.INT64, [1, "sequence"]),
]
_LOGITS = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "target", VOCAB])


def _decoder(rng: np.random.Generator) -> onnx.ModelProto:
    return _model(_decoder_nodes(), "decoder", _DECODER_INPUTS, [_LOGITS], _decoder_weights(rng))


def _merged_decoder(rng: np.random.Generator) -> onnx.ModelProto:
    """optimum's merged layout: ``If(use_cache_branch)`` whose two branches are the decoder."""
    branches = [
        helper.make_graph(
            _decoder_nodes("branch_logits"),
            name,
            [],
            [helper.make_tensor_value_info("branch_logits", TensorProto.FLOAT, None)],
        )
        for name in ("with_past", "without_past")
    ]
    use_cache = helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])
    return _model(
        [
            helper.make_node(
                "If", ["use_cache_branch"], ["logits"], then_branch=branches[0], else_branch=branches[1]
            )
        ],
        "merged",
        [*_DECODER_INPUTS, use_cache],
        [_LOGITS],
        _decoder_weights(rng),
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The toy export folder (FP32)."""
    path = tmp_path_factory.mktemp("toy") / "fp32"
    path.mkdir()
    rng = np.random.default_rng(0)
    onnx.save_model(_encoder(rng), path / "encoder_model.onnx")
    onnx.save_model(_decoder(rng), path / "decoder_model.onnx")
    (path / "config.json").write_text(json.dumps({"vocab_size": VOCAB, "decoder_start_token_id": 0}))
    return path


@pytest.fixture(scope="module")
def merged_folder(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The toy folder in optimum's merged layout: encoder, decoder, decoder-with-past (the same
    graph: the toy has no cache) and the merged decoder."""
    path = tmp_path_factory.mktemp("toy") / "merged"
    path.mkdir()
    onnx.save_model(_encoder(np.random.default_rng(0)), path / "encoder_model.onnx")
    for name in ("decoder_model.onnx", "decoder_with_past_model.onnx"):
        onnx.save_model(_decoder(np.random.default_rng(1)), path / name)
    onnx.save_model(_merged_decoder(np.random.default_rng(1)), path / "decoder_model_merged.onnx")
    (path / "config.json").write_text(json.dumps({"vocab_size": VOCAB, "decoder_start_token_id": 0}))
    return path


@pytest.fixture(scope="module")
def plain(folder: pathlib.Path) -> pathlib.Path:
    """Plain ``convert`` of the toy folder."""
    output = folder.parent / "plain"
    assert main(["convert", str(folder), "-o", str(output), "-q"]) == 0
    return output


def _validate(capsys, reference: pathlib.Path, candidate: pathlib.Path, *extra: str) -> tuple[int, dict]:
    code = main(["validate", str(reference), str(candidate), "--runs", "0", "--json", *extra])
    captured = capsys.readouterr()
    assert code in (0, 1), captured.err
    return code, json.loads(captured.out)


def _large_matmul_precision(path: pathlib.Path, file: str = "decoder_model.onnx") -> str:
    """The precision the decoder's first MatMul runs in (the type of its output)."""
    model = ir.load(path / file)
    (node,) = [n for n in model.graph if n.op_type == "MatMul" and "W1" in [v.name for v in n.inputs]]
    return "fp16" if node.outputs[0].dtype == ir.DataType.FLOAT16 else "fp32"


def test_capture_feeds_the_decoder_the_encoders_real_outputs(folder: pathlib.Path) -> None:
    capture = capture_pipeline(folder, prompts=[(3, 4, 5), (7, 9)], new_tokens=NEW_TOKENS)
    assert capture.files == ("encoder_model.onnx", "decoder_model.onnx")
    # per prompt: the encoder runs once; the decoder's first and last runs are kept
    assert len(capture.feeds["encoder_model.onnx"]) == 2 and len(capture.feeds["decoder_model.onnx"]) == 4
    import onnxruntime as ort

    encoder = ort.InferenceSession(folder / "encoder_model.onnx", providers=["CPUExecutionProvider"])
    ids = np.array([[7, 9]], np.int64)
    (expected,) = encoder.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    last = capture.feeds["decoder_model.onnx"][-1]
    np.testing.assert_array_equal(last["encoder_hidden_states"], expected)
    assert np.abs(expected).max() > 1000  # not the N(0, 1) a file judged alone is fed
    assert last["input_ids"].shape == (1, NEW_TOKENS)  # the start token and 5 generated ones
    assert "2 batch(es) of encoder_model.onnx" in capture.label("encoder_model.onnx")


def test_judge_refuses_a_file_that_breaks_generation(folder: pathlib.Path, plain: pathlib.Path) -> None:
    capture = capture_pipeline(folder, new_tokens=NEW_TOKENS)
    judge = GenerationJudge(capture)
    assert judge.check("encoder_model.onnx", ir.load(plain / "encoder_model.onnx")) == ""
    refusal = judge.check("decoder_model.onnx", ir.load(plain / "decoder_model.onnx"))
    assert "differs from FP32's at step 0 of prompt 1" in refusal
    assert (judge.checks, judge.failures) == (2, 1)


def test_plain_convert_breaks_generation_and_validate_says_so(
    folder: pathlib.Path, plain: pathlib.Path, capsys
) -> None:
    assert _large_matmul_precision(plain) == "fp16"
    code, document = _validate(capsys, folder, plain, "--new-tokens", str(NEW_TOKENS))
    assert code == 1 and not document["generation"]["passed"]


def test_auto_on_a_folder_keeps_generation(folder: pathlib.Path, tmp_path: pathlib.Path, capsys) -> None:
    output = tmp_path / "auto"
    code = main(
        ["convert", str(folder), "-o", str(output), "--auto", "--new-tokens", str(NEW_TOKENS), "--json"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert _large_matmul_precision(output) == "fp32"
    decoder = ir.load(output / "decoder_model.onnx")
    record = json.loads(decoder.metadata_props["mpcompile.auto"])
    assert record["inputs"].startswith("captured from the FP32 pipeline")
    assert record["criterion"] == {"kind": "metric", "metric": "cosine", "threshold": 0.999}
    assert "'large' reaches max |x|" in json.dumps(record["range_blocked"])
    assert heavy_flops(decoder).low > 0  # the MatMul of the token embedding stays FP16
    encoder = heavy_flops(ir.load(output / "encoder_model.onnx"))
    assert encoder.fp32 == 0 and encoder.low > 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(UNSEEN_PROMPTS)
    code, document = _validate(capsys, folder, output, "--new-tokens", "10", "--prompts", str(prompts))
    assert code == 0 and document["generation"]["passed"]
    agreement = [row["token_agreement"] for row in document["generation"]["layouts"][0]["prompts"]]
    assert agreement == [1.0, 1.0]


def _branch_matmuls(path: pathlib.Path) -> dict[str, str]:
    """Precision of each MatMul in the merged decoder's branches, by name (suffixes dropped)."""
    model = ir.load(path / "decoder_model_merged.onnx")
    (node,) = model.graph
    found = {}
    for branch in node.attributes.values():
        for inner in branch.as_graph():
            if inner.op_type == "MatMul":
                low = inner.outputs[0].dtype == ir.DataType.FLOAT16
                found[f"{branch.name}:{inner.name.split('__')[0]}"] = "fp16" if low else "fp32"
    return found


def test_auto_on_a_merged_decoder_takes_its_branches_decisions(
    merged_folder: pathlib.Path, tmp_path: pathlib.Path, capsys
) -> None:
    """The search cannot measure the merged decoder's If branches; it keeps FP32 in them what the
    decoder and decoder-with-past searches kept FP32, instead of falling back to an FP32 file."""
    plain = tmp_path / "plain"
    assert main(["convert", str(merged_folder), "-o", str(plain), "-q"]) == 0
    assert set(_branch_matmuls(plain).values()) == {"fp16"}
    code, _ = _validate(capsys, merged_folder, plain, "--new-tokens", str(NEW_TOKENS))
    assert code == 1
    output = tmp_path / "auto"
    arguments = ["convert", str(merged_folder), "-o", str(output), "--auto", "--new-tokens", str(NEW_TOKENS)]
    assert main([*arguments, "-q"]) == 0, capsys.readouterr().err
    expected = {"/large/MatMul": "fp32", "/from_encoder/MatMul": "fp32", "/from_ids/MatMul": "fp16"}
    for branch in ("then_branch", "else_branch"):
        assert {name: _branch_matmuls(output)[f"{branch}:{name}"] for name in expected} == expected
    for name in ("decoder_model.onnx", "decoder_with_past_model.onnx"):
        assert _large_matmul_precision(output, name) == "fp32"
    record = json.loads(ir.load(output / "decoder_model_merged.onnx").metadata_props["mpcompile.auto"])
    assert record["passed"] and record["fp16_flop_share"] > 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(UNSEEN_PROMPTS)
    code, document = _validate(capsys, merged_folder, output, "--new-tokens", "10", "--prompts", str(prompts))
    assert code == 0 and len(document["generation"]["layouts"]) == 2


def test_auto_refuses_prompts_outside_the_vocabulary(
    folder: pathlib.Path, tmp_path: pathlib.Path, capsys
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"3 {VOCAB}\n")
    code = main(["convert", str(folder), "-o", str(tmp_path / "out"), "--auto", "--prompts", str(prompts)])
    assert code == ExitCode.USAGE
    assert "outside the vocabulary (16)" in capsys.readouterr().err


def test_generation_options_only_for_auto_on_a_folder(
    folder: pathlib.Path, tmp_path: pathlib.Path, capsys
) -> None:
    single = ["convert", str(folder / "decoder_model.onnx"), "-o", str(tmp_path / "one.onnx"), "--auto"]
    assert main([*single, "--new-tokens", "3"]) == ExitCode.USAGE
    assert "only for --auto on an export folder" in capsys.readouterr().err
    assert main(["convert", str(folder), "-o", str(tmp_path / "out"), "--new-tokens", "3"]) == ExitCode.USAGE
    assert "--new-tokens: only with --auto" in capsys.readouterr().err


def _numerics(capsys, *args: str) -> dict[str, dict]:
    code = main(["report", *args, "--numerics", "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    document = json.loads(captured.out)
    if "files" not in document:
        return {"": document}
    return {row["file"]: row["report"] for row in document["files"]}


def test_report_numerics_measures_each_file_on_pipeline_feeds(
    folder: pathlib.Path, plain: pathlib.Path, capsys
) -> None:
    reports = _numerics(capsys, str(plain), "--compare", str(folder))
    decoder = reports["decoder_model.onnx"]["numerics"]
    assert decoder["inputs"].startswith("captured from the FP32 pipeline")
    assert [node["op_type"] for node in decoder["overflow_nodes"]] == ["MatMul"]
    assert decoder["output_errors"]["logits"]["error_rel"] == "inf"
    assert reports["encoder_model.onnx"]["numerics"]["overflow_nodes"] == []
    # the same file reported alone, on generated N(0, 1) inputs, shows no overflow
    alone = _numerics(
        capsys, str(plain / "decoder_model.onnx"), "--compare", str(folder / "decoder_model.onnx")
    )
    assert alone[""]["numerics"]["overflow_nodes"] == []


def test_report_prompts_usage(
    folder: pathlib.Path, plain: pathlib.Path, tmp_path: pathlib.Path, capsys
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"3 {VOCAB}\n")
    assert main(["report", str(plain), "--prompts", str(prompts)]) == ExitCode.USAGE
    assert "--prompts: only with --numerics" in capsys.readouterr().err
    assert main(
        ["report", str(plain), "--compare", str(folder), "--numerics", "--prompts", str(prompts)]
    ) == (ExitCode.USAGE)
    assert "outside the vocabulary" in capsys.readouterr().err
    assert main(["report", str(plain / "decoder_model.onnx"), "--prompts", str(prompts)]) == ExitCode.USAGE


# -- the corpus's generative export folders (slow; skipped when the corpus is not built) ---------

BUILD_HINT = ".venv-corpus/bin/python -m models.corpus build --only t5-large-activation-folder"


_CORPUS_FOLDERS = generative_corpus_folders()


def _low_share(folder: pathlib.Path) -> float:
    low = total = 0
    for path in sorted(folder.rglob("*.onnx")):
        counted = heavy_flops(ir.load(path))
        low, total = low + counted.low, total + counted.low + counted.fp32
    return low / total


@pytest.mark.slow
@pytest.mark.parametrize(
    "entry", _CORPUS_FOLDERS or [None], ids=[entry.name for entry in _CORPUS_FOLDERS] or ["not-built"]
)
def test_auto_generates_like_fp32_on_corpus_folders(entry: FolderEntry | None, tmp_path, capsys) -> None:
    """``convert DIR --auto`` without inputs: greedy generation equals FP32's on the corpus entry's
    own prompts (which --auto never sees), and where plain convert already generates identically
    --auto keeps at least its share of heavy FLOPs in FP16."""
    if entry is None:
        pytest.skip(f"the corpus has no generative export folders; build them with `{BUILD_HINT}`")
    output = tmp_path / "auto"
    assert main(["convert", str(entry.path), "-o", str(output), "--auto", "-q"]) == 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(" ".join(map(str, prompt)) + "\n" for prompt in entry.prompts))
    options = ["--new-tokens", str(entry.new_tokens), "--prompts", str(prompts)]
    code, document = _validate(capsys, entry.path, output, *options)
    assert code == 0, document["generation"]
    if entry.plain_fp16_generates:
        plain = tmp_path / "plain"
        assert main(["convert", str(entry.path), "-o", str(plain), "-q"]) == 0
        assert _low_share(output) >= _low_share(plain) - 1e-9
