"""mpcompile/validate/generation.py: the plain-ORT greedy loop on tiny hand-built decoders (no corpus).

The toy decoder's next token is (sum of every token so far) mod 16, computed from its KV cache:
``present.0.key`` is the past with the new ids appended, so the loop generates the numpy rule's
tokens only when it feeds each present back as the next past. The real export folders are in
tests/test_deploy_folders.py.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from rich.console import Console

from models.corpus import generative_corpus_folders
from models.corpus.manifest import FolderEntry
from mpcompile.cli import main
from mpcompile.validate.generation import (
    DECODER_ONLY,
    ENCODER_DECODER,
    GenerationError,
    Generator,
    NotGenerativeError,
    detect_layout,
)
from mpcompile.validate.generative import (
    JUDGE_FAITHFUL,
    JUDGE_NATIVE,
    PromptsError,
    generated_prompts,
    read_prompts,
    validate_generation,
)
from mpcompile.validate.render import render_generation

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


# -- generation-aware validate (mpcompile/validate/generative.py, `validate REF CAND` on folders) --

NEW_TOKENS = 6


def _rule_decoder(
    bias: int = 0, threshold: int = 0, float_type: int = TensorProto.FLOAT, past: bool = True
) -> onnx.ModelProto:
    """The toy rule with a switch: next token = (sum of the tokens + ``bias`` once the sequence
    holds ``threshold`` tokens) mod VOCAB; ``past=False``: no cache, the whole sequence each run."""
    ids_source = "concat" if past else "ids_4d"
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids_float"], to=float_type),
        helper.make_node("Unsqueeze", ["ids_float", "axes_1_3"], ["ids_4d"]),
        helper.make_node("ReduceSum", [ids_source], ["total"], keepdims=1),
        helper.make_node("Shape", [ids_source], ["shape"]),
        helper.make_node("Gather", ["shape", "two"], ["length"]),
        helper.make_node("GreaterOrEqual", ["length", "threshold"], ["switched"]),
        helper.make_node("Cast", ["switched"], ["switched_float"], to=float_type),
        helper.make_node("Mul", ["switched_float", "bias"], ["shift"]),
        helper.make_node("Add", ["total", "shift"], ["shifted"]),
        helper.make_node("Cast", ["shifted"], ["total_int"], to=TensorProto.INT64),
        helper.make_node("Mod", ["total_int", "vocab"], ["token"]),
        helper.make_node("OneHot", ["token", "vocab", "one_hot_values"], ["one_hot"]),
        helper.make_node("Reshape", ["one_hot", "logits_shape"], ["logits"]),
    ]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "sequence"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, VOCAB])]
    if past:
        nodes.insert(2, helper.make_node("Concat", ["past_key_values.0.key", "ids_4d"], ["concat"], axis=2))
        nodes.append(helper.make_node("Identity", ["concat"], ["present.0.key"]))
        inputs.append(helper.make_tensor_value_info("past_key_values.0.key", float_type, [1, 1, "past", 1]))
        outputs.append(helper.make_tensor_value_info("present.0.key", float_type, [1, 1, "total", 1]))
    scalar = np.float16 if float_type == TensorProto.FLOAT16 else np.float32
    initializers = [
        helper.make_tensor("axes_1_3", TensorProto.INT64, [2], [1, 3]),
        helper.make_tensor("two", TensorProto.INT64, [], [2]),
        helper.make_tensor("threshold", TensorProto.INT64, [], [threshold]),
        onnx.numpy_helper.from_array(np.array(bias, scalar), "bias"),
        helper.make_tensor("vocab", TensorProto.INT64, [], [VOCAB]),
        helper.make_tensor("one_hot_values", TensorProto.FLOAT, [2], [0.0, 1.0]),
        helper.make_tensor("logits_shape", TensorProto.INT64, [3], [1, 1, VOCAB]),
    ]
    graph = helper.make_graph(nodes, "rule_decoder", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _export(folder: pathlib.Path, model: onnx.ModelProto, vocab: int | None = None) -> pathlib.Path:
    folder.mkdir()
    onnx.save_model(model, folder / "model.onnx")
    if vocab is not None:
        (folder / "config.json").write_text(json.dumps({"vocab_size": vocab}))
    return folder


def _validate_json(capsys, *args: str) -> tuple[int, dict]:
    code = main(["validate", *args, "--runs", "0", "--json"])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code in (0, 1) else captured.err)


def test_decoder_without_past_is_fed_the_whole_sequence(tmp_path: pathlib.Path) -> None:
    generator = Generator(_export(tmp_path / "ref", _rule_decoder(past=False)))
    assert generator.layout.kind == DECODER_ONLY
    assert list(generator.generate([3, 5, 7], 10).tokens) == _expected([3, 5, 7], 10)


def test_feature_extraction_folder_is_not_generative(tmp_path: pathlib.Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["last_hidden_state"], to=TensorProto.FLOAT)],
        "encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "sequence"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [1, "sequence"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    folder = _export(tmp_path / "bert", model)
    with pytest.raises(NotGenerativeError, match="no logits output"):
        detect_layout(folder)


def test_identical_folders_agree_on_every_step(tmp_path: pathlib.Path) -> None:
    reference = _export(tmp_path / "ref", _rule_decoder())
    candidate = _export(tmp_path / "cand", _rule_decoder())
    result = validate_generation(reference, candidate, new_tokens=NEW_TOKENS, seed=3)
    assert result.passed and result.judge == JUDGE_NATIVE  # an FP32 candidate: native ORT CPU
    (layout,) = result.layouts
    assert layout.files == ("model.onnx",) and len(layout.prompts) == 3
    for prompt in layout.prompts:
        assert list(prompt.reference_tokens) == _expected(list(prompt.prompt), NEW_TOKENS)
        assert prompt.candidate_tokens == prompt.reference_tokens and prompt.first_divergence is None
        assert prompt.token_agreement == 1.0 and all(prompt.top1) and set(prompt.top5) == {1.0}
        assert prompt.cosine == (1.0,) * NEW_TOKENS


@pytest.mark.parametrize("diverge_at", [0, 2, 5])
def test_first_divergence_and_per_step_agreement(tmp_path: pathlib.Path, diverge_at: int) -> None:
    prompt = (3, 4, 5, 6)
    reference = _export(tmp_path / "ref", _rule_decoder())
    # the candidate adds 1 once the sequence holds len(prompt) + diverge_at tokens
    candidate = _export(tmp_path / "cand", _rule_decoder(bias=1, threshold=len(prompt) + diverge_at))
    result = validate_generation(reference, candidate, prompts=[prompt], new_tokens=NEW_TOKENS)
    (layout,) = result.layouts
    (found,) = layout.prompts
    assert not result.passed and found.first_divergence == diverge_at
    assert found.token_agreement == pytest.approx(diverge_at / NEW_TOKENS)
    assert list(found.reference_tokens) == _expected(list(prompt), NEW_TOKENS)
    assert found.candidate_tokens[:diverge_at] == found.reference_tokens[:diverge_at]
    # teacher-forced on the reference's tokens, the candidate's argmax is off by one from there on
    assert found.top1 == (True,) * diverge_at + (False,) * (NEW_TOKENS - diverge_at)
    assert found.cosine == (1.0,) * diverge_at + (0.0,) * (NEW_TOKENS - diverge_at)
    assert [step.top1_agreement for step in layout.steps] == [float(ok) for ok in found.top1]
    loose = validate_generation(
        reference,
        candidate,
        prompts=[prompt],
        new_tokens=NEW_TOKENS,
        min_token_agreement=diverge_at / NEW_TOKENS,
    )
    assert loose.passed


def test_fp16_candidate_is_judged_faithfully(tmp_path: pathlib.Path) -> None:
    reference = _export(tmp_path / "ref", _rule_decoder())
    candidate = _export(tmp_path / "cand", _rule_decoder(float_type=TensorProto.FLOAT16))
    assert validate_generation(reference, candidate, new_tokens=NEW_TOKENS).judge == JUDGE_FAITHFUL
    native = validate_generation(reference, candidate, new_tokens=NEW_TOKENS, faithful=False)
    assert native.judge == JUDGE_NATIVE and native.passed


def test_generated_prompts_are_seeded_and_in_vocabulary(tmp_path: pathlib.Path) -> None:
    assert generated_prompts(16, 0) == generated_prompts(16, 0) != generated_prompts(16, 1)
    assert all(3 <= token < 16 for prompt in generated_prompts(16, 0) for token in prompt)
    with pytest.raises(GenerationError, match="vocabulary of 3"):
        generated_prompts(3, 0)
    # the vocabulary: config.json's vocab_size first, else the logits' last dim
    reference = _export(tmp_path / "ref", _rule_decoder(), vocab=8)
    result = validate_generation(reference, reference, new_tokens=2)
    assert all(token < 8 for prompt in result.layouts[0].prompts for token in prompt.prompt)
    assert "ids 3..7" in result.prompts_source
    plain = _export(tmp_path / "plain", _rule_decoder())
    assert "ids 3..15" in validate_generation(plain, plain, new_tokens=2).prompts_source


def test_prompts_file_parsing(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("# token ids\n3 4 5\n\n  7\t8 \n")
    assert read_prompts(path) == [(3, 4, 5), (7, 8)]
    for text, message in (
        ("3 4\n5 x 6\n", "line 2: 'x' is not a token id"),
        ("3 -4\n", "line 1: '-4' is not a token id"),
        ("# nothing\n\n", "no prompts"),
    ):
        path.write_text(text)
        with pytest.raises(PromptsError, match=message):
            read_prompts(path)
    path.write_bytes(b"\xff\xfe3")
    with pytest.raises(PromptsError, match="UTF-8"):
        read_prompts(path)


def test_cli_exit_codes_json_and_prompts(tmp_path: pathlib.Path, capsys) -> None:
    reference = _export(tmp_path / "ref", _rule_decoder())
    good = _export(tmp_path / "good", _rule_decoder())
    bad = _export(tmp_path / "bad", _rule_decoder(bias=1, threshold=5))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("3 4\n5 6 7\n")
    code, document = _validate_json(capsys, str(reference), str(good))
    assert code == 0 and document["passed"] and document["files"] == []
    assert document["generation"]["judge"] == JUDGE_NATIVE and document["generation"]["new_tokens"] == 20
    options = ["--prompts", str(prompts), "--new-tokens", "5"]
    code, document = _validate_json(capsys, str(reference), str(bad), *options)
    assert code == 1 and not document["passed"]
    generated = document["generation"]
    assert generated["prompts_source"] == f"--prompts {prompts}"
    assert [row["first_divergence"] for row in generated["layouts"][0]["prompts"]] == [3, 2]
    assert [row["token_agreement"] for row in generated["layouts"][0]["prompts"]] == [0.6, 0.4]
    assert len(generated["layouts"][0]["steps"]) == 5
    code, _ = _validate_json(capsys, str(reference), str(bad), *options, "--min-token-agreement", "0")
    assert code == 0
    # the terminal: the diverging step, the judge, the verdict; within 80 columns
    assert main(["validate", str(reference), str(bad), *options, "--runs", "0"]) == 1
    captured = capsys.readouterr()
    assert "step 3" in captured.out and "native ORT CPU" in captured.out
    assert "FAILED generation" in captured.out and captured.err.count("\n") == 1
    # the generation tables fit an 80-column terminal, numbers unfolded
    console = Console(width=80, record=True, emoji=False)
    result = validate_generation(reference, bad, prompts=[(3, 4), (5, 6, 7)], new_tokens=20)
    render_generation(result, console)
    text = console.export_text()
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80
    assert "step 3" in text and "│   19 │ 0.000000 │    0% │" in text
    # bad prompts: one line, exit 2 (3 for a missing file); ids outside the vocabulary too
    for text, code_expected in (("3 x\n", 2), ("3 99\n", 2)):
        prompts.write_text(text)
        assert main(["validate", str(reference), str(good), "--prompts", str(prompts)]) == code_expected
        assert capsys.readouterr().err.count("\n") == 1
    assert main(["validate", str(reference), str(good), "--prompts", str(tmp_path / "absent")]) == 3
    assert capsys.readouterr().err.startswith("error: --prompts")
    # single files keep today's behaviour; the generation options do not apply to them
    model = str(reference / "model.onnx")
    assert main(["validate", model, model, "--new-tokens", "3"]) == 2
    assert "apply to export folders" in capsys.readouterr().err


def test_cli_non_generative_files_still_validated_per_file(tmp_path: pathlib.Path, capsys) -> None:
    reference = _export(tmp_path / "ref", _rule_decoder())
    candidate = _export(tmp_path / "cand", _rule_decoder())
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "side",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    side = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for folder in (reference, candidate):
        onnx.save_model(side, folder / "side.onnx")
    code, document = _validate_json(capsys, str(reference), str(candidate))
    assert code == 0 and [row["file"] for row in document["files"]] == ["side.onnx"]
    assert document["generation"]["layouts"][0]["files"] == ["model.onnx"]
    # a folder that is not generative: per-file only, and --prompts is a usage error
    for folder in (reference, candidate):
        (folder / "model.onnx").unlink()
    code, document = _validate_json(capsys, str(reference), str(candidate))
    assert code == 0 and document["generation"] is None
    assert main(["validate", str(reference), str(candidate), "--new-tokens", "3"]) == 2


# -- the corpus's export folders (slow; skipped when the corpus is not built) ---------------------

BUILD_HINT = ".venv-corpus/bin/python -m models.corpus build --only t5-large-activation-folder"


_CORPUS_FOLDERS = generative_corpus_folders()


@pytest.mark.slow
@pytest.mark.parametrize(
    "entry", _CORPUS_FOLDERS or [None], ids=[entry.name for entry in _CORPUS_FOLDERS] or ["not-built"]
)
def test_validate_judges_plain_convert_of_corpus_folders(entry: FolderEntry | None, tmp_path, capsys) -> None:
    """Plain ``convert`` of a corpus folder: ``validate`` passes where the FP16 folder generates
    FP32's tokens; on the large-activation folders the static rules alone (``--static``, no range
    run) break generation, and ``validate`` fails at step 0 (NaN logits under the FP16-faithful
    judge, which ORT's native CPU run hides)."""
    if entry is None:
        pytest.skip(f"the corpus has no generative export folders; build them with `{BUILD_HINT}`")
    converted = tmp_path / "fp16"
    static = [] if entry.plain_fp16_generates else ["--static"]
    assert main(["convert", str(entry.path), "-o", str(converted), *static]) == 0
    capsys.readouterr()
    options = ["--new-tokens", str(entry.new_tokens)]
    code, document = _validate_json(capsys, str(entry.path), str(converted), *options)
    generated = document["generation"]
    assert generated["judge"] == JUDGE_FAITHFUL and generated["layouts"]
    assert document["files"] == []  # every file of a generative folder is in a generation loop
    if entry.plain_fp16_generates:
        assert code == 0, generated
        return
    assert code == 1 and not generated["passed"]
    for layout in generated["layouts"]:
        assert [row["first_divergence"] for row in layout["prompts"]] == [0, 0, 0]
        assert layout["steps"][0]["min_cosine"] is None  # non-finite logits
    # the FP32 folder itself generates torch's tokens, and ORT's native CPU hides the overflow
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(" ".join(map(str, prompt)) + "\n" for prompt in entry.prompts))
    code, document = _validate_json(
        capsys, str(entry.path), str(entry.path), *options, "--prompts", str(prompts)
    )
    assert code == 0
    first = document["generation"]["layouts"][0]["prompts"]
    assert [tuple(row["reference_tokens"]) for row in first] == list(entry.reference)
    code, _ = _validate_json(
        capsys, str(entry.path), str(converted), *options, "--prompts", str(prompts), "--native-cpu"
    )
    assert code == 0
