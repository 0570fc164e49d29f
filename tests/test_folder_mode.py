"""Folder mode: ``convert EXPORT_DIR -o OUT_DIR``, ``convert_folder``, and ``report``/``validate``
on folders, over small optimum-style export folders built here.

Numeric checks run on ONNX Runtime's CPU EP against the FP32 models, rtol = atol = 1e-2.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import onnx
import pytest

from models.builder import FLOAT, GraphBuilder
from mpcompile import errors
from mpcompile.cli import main
from mpcompile.compiler.folder import convert_folder, keep_io_per_file
from mpcompile.core.io_links import linked_io_names
from mpcompile.io.export_folder import scan_folder
from tests.helpers import assert_close, run

HIDDEN = 8
RTOL = ATOL = 1e-2
OTHER_FILES = {
    "config.json": b'{"model_type": "t5", "d_model": 8}\n',
    "generation_config.json": b'{"decoder_start_token_id": 0}\n',
    "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}\n',
    "sub/special_tokens_map.json": b'{"eos_token": "</s>"}\n',
    "spiece.model": bytes(range(256)) * 4,
}


def encoder() -> onnx.ModelProto:
    """inputs_embeds -> Tanh(x W1) W2 -> last_hidden_state."""
    g = GraphBuilder("encoder", seed=1)
    x = g.input("inputs_embeds", FLOAT, [1, "encoder_sequence", HIDDEN])
    h = g.op("Tanh", [g.op("MatMul", [x, g.weight("w1", [HIDDEN, 256], scale=0.3)])])
    g.output(
        g.op("MatMul", [h, g.weight("w2", [256, HIDDEN], scale=0.3)]),
        FLOAT,
        [1, "encoder_sequence", HIDDEN],
        "last_hidden_state",
    )
    return g.model(17)


def decoder(with_past: bool) -> onnx.ModelProto:
    """Decoder step: keys from the encoder (or the past plus this step's), logits = q k^T."""
    g = GraphBuilder("decoder_with_past" if with_past else "decoder", seed=2)
    embeds = g.input("decoder_inputs_embeds", FLOAT, [1, "decoder_sequence", HIDDEN])
    encoded = g.input("encoder_hidden_states", FLOAT, [1, "encoder_sequence", HIDDEN])
    keys = g.op("MatMul", [encoded, g.weight("wk", [HIDDEN, HIDDEN], scale=0.3)])
    if with_past:
        past = g.input("past_key_values.0.key", FLOAT, [1, "past_sequence", HIDDEN])
        keys = g.op(
            "Concat",
            [past, g.op("MatMul", [embeds, g.weight("wn", [HIDDEN, HIDDEN], scale=0.3)])],
            {"axis": 1},
        )
    query = g.op("MatMul", [embeds, g.weight("wq", [HIDDEN, HIDDEN], scale=0.3)])
    logits = g.op("MatMul", [query, g.op("Transpose", [keys], {"perm": [0, 2, 1]})])
    g.output(logits, FLOAT, [1, "decoder_sequence", "keys"], "logits")
    g.output(keys, FLOAT, [1, "keys", HIDDEN], "present.0.key")
    return g.model(17)


def write_export(folder: pathlib.Path) -> pathlib.Path:
    """An optimum-style seq2seq folder: the encoder with external data (encoder_model.onnx_data),
    two embedded decoders, configs, tokenizer files and a subfolder."""
    folder.mkdir()
    onnx.save(
        encoder(),
        folder / "encoder_model.onnx",
        save_as_external_data=True,
        location="encoder_model.onnx_data",
        size_threshold=0,
    )
    onnx.save(decoder(False), folder / "decoder_model.onnx")
    onnx.save(decoder(True), folder / "decoder_with_past_model.onnx")
    for name, data in OTHER_FILES.items():
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def feeds(name: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    embeds = rng.standard_normal((1, 3, HIDDEN)).astype(np.float32)
    if name == "encoder_model.onnx":
        return {"inputs_embeds": rng.standard_normal((1, 5, HIDDEN)).astype(np.float32)}
    step = {
        "decoder_inputs_embeds": embeds,
        "encoder_hidden_states": rng.standard_normal((1, 5, HIDDEN)).astype(np.float32),
    }
    if name == "decoder_with_past_model.onnx":
        step["decoder_inputs_embeds"] = embeds[:, :1]
        step["past_key_values.0.key"] = rng.standard_normal((1, 4, HIDDEN)).astype(np.float32)
    return step


def no_leftovers(parent: pathlib.Path) -> list[str]:
    return sorted(path.name for path in parent.iterdir() if path.name.startswith("."))


MODELS = ("decoder_model.onnx", "decoder_with_past_model.onnx", "encoder_model.onnx")


# -- cross-file names -----------------------------------------------------------------------


def test_linked_io_names_follow_optimums_naming():
    assert linked_io_names(["present.0.key"]) == {"present.0.key", "past_key_values.0.key"}
    assert linked_io_names(["past_key_values.3.value"]) == {"past_key_values.3.value", "present.3.value"}
    assert linked_io_names(["present.1.decoder.key", "past_key_values.2.encoder.value"]) == {
        "present.1.decoder.key",
        "past_key_values.1.decoder.key",
        "past_key_values.2.encoder.value",
        "present.2.encoder.value",
    }
    assert linked_io_names(["last_hidden_state"]) == {"last_hidden_state", "encoder_hidden_states"}
    assert linked_io_names(["encoder_hidden_states"]) == {"last_hidden_state", "encoder_hidden_states"}
    assert linked_io_names(["logits", "input_ids", "present", "present."]) == {
        "logits",
        "input_ids",
        "present",
        "present.",
    }
    assert linked_io_names([]) == set()


def test_keep_io_list_is_linked_and_given_per_file(tmp_path):
    folder = scan_folder(write_export(tmp_path / "export"))
    per_file = keep_io_per_file(["present.0.key"], folder)
    assert per_file == {
        "decoder_model.onnx": ("present.0.key",),
        "decoder_with_past_model.onnx": ("past_key_values.0.key", "present.0.key"),
        "encoder_model.onnx": (),
    }
    per_file = keep_io_per_file(("last_hidden_state",), folder)
    assert per_file["encoder_model.onnx"] == ("last_hidden_state",)
    assert per_file["decoder_model.onnx"] == ("encoder_hidden_states",)
    assert keep_io_per_file(False, folder) == dict.fromkeys(MODELS, False)
    assert keep_io_per_file(frozenset({"last_hidden_state"}), folder)["decoder_model.onnx"] == (
        "encoder_hidden_states",
    )
    with pytest.raises(errors.UsageError, match=r"present\.9\.key"):
        keep_io_per_file(["present.9.key"], folder)


# -- convert ---------------------------------------------------------------------------------


def test_convert_folder_keeps_names_layout_and_other_files(tmp_path):
    source = write_export(tmp_path / "export")
    result = convert_folder(source, tmp_path / "out")
    out = tmp_path / "out"
    assert result and [outcome.status for outcome in result.files] == ["converted"] * 3
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        [*MODELS, "encoder_model.onnx_data", *OTHER_FILES]
    )
    for name, data in OTHER_FILES.items():
        assert (out / name).read_bytes() == data
    # one data file for the model that had one, under the input's name; the others stay embedded
    encoder_proto = onnx.load(out / "encoder_model.onnx", load_external_data=False)
    locations = {
        entry.value
        for tensor in encoder_proto.graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }
    assert locations == {"encoder_model.onnx_data"}
    for name in ("decoder_model.onnx", "decoder_with_past_model.onnx"):
        proto = onnx.load(out / name, load_external_data=False)
        assert all(tensor.data_location != onnx.TensorProto.EXTERNAL for tensor in proto.graph.initializer)
    for name in MODELS:
        converted = onnx.load(out / name)
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in converted.graph.initializer)
        assert_close(run(onnx.load(source / name), feeds(name)), run(converted, feeds(name)), RTOL, ATOL)
    summary = result.summary()
    assert [row["file"] for row in summary["files"]] == list(MODELS)
    assert all(row["stats"]["nodes_by_precision"]["fp16"] > 0 for row in summary["files"])
    assert no_leftovers(tmp_path) == []


def test_cli_json_is_pure_json_with_one_entry_per_file(tmp_path, capsys):
    source = write_export(tmp_path / "export")
    assert main(["convert", str(source), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["output"] == str(tmp_path / "export.fp16")  # default: EXPORT_DIR.<precision>
    assert summary["converted"] is True
    assert [(row["file"], row["status"]) for row in summary["files"]] == [
        (name, "converted") for name in MODELS
    ]
    sizes = {row["file"]: (row["bytes_before"], row["bytes_after"]) for row in summary["files"]}
    before, after = sizes[
        "encoder_model.onnx"
    ]  # the one with weights to speak of: 8 KiB of FP32 in its data file
    assert before == sum(f.stat().st_size for f in source.glob("encoder_model.onnx*"))
    assert after == sum(f.stat().st_size for f in (tmp_path / "export.fp16").glob("encoder_model.onnx*"))
    assert after < before and all(b > 0 and a > 0 for b, a in sizes.values())
    assert sorted(summary["copied"]) == sorted(OTHER_FILES)


def test_cli_table_has_one_row_per_file(tmp_path, capsys):
    source = write_export(tmp_path / "export")
    assert (
        main(["convert", str(source), "-o", str(tmp_path / "out"), "--precision", "bf16", "--target", "cpu"])
        == 0
    )
    out = capsys.readouterr().out
    for name in MODELS:
        assert name in out
    assert out.count("converted") == 3 and "nodes low/FP32" in out


def test_existing_output_folder_needs_overwrite(tmp_path, capsys):
    source = write_export(tmp_path / "export")
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert main(["convert", str(source), "-o", str(out), "-q"]) == 9
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert main(["convert", str(source), "-o", str(out), "-q", "--overwrite"]) == 0
    assert not (out / "old.txt").exists() and (out / "encoder_model.onnx").exists()
    assert no_leftovers(tmp_path) == []


def test_one_failing_file_fails_the_folder_and_writes_nothing(tmp_path, capsys):
    source = write_export(tmp_path / "export")
    (source / "decoder_model.onnx").write_bytes(b"not a protobuf at all")
    code = main(["convert", str(source), "-o", str(tmp_path / "out"), "--json"])
    captured = capsys.readouterr()
    assert code == 4
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "decoder_model.onnx" in err[0]
    summary = json.loads(captured.out)
    assert summary["converted"] is False
    assert [row["status"] for row in summary["files"]] == ["failed", "skipped", "skipped"]
    assert summary["files"][0]["error"]["exit_code"] == 4
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path) == []


def test_an_already_fp16_file_fails_after_others_converted(tmp_path, capsys):
    source = write_export(tmp_path / "export")
    # a later file (in name order) that is already converted: exit 8, and the earlier ones are discarded
    assert main(["convert", str(source / "decoder_model.onnx"), "-o", str(tmp_path / "d.onnx"), "-q"]) == 0
    os.replace(tmp_path / "d.onnx", source / "zz_model.onnx")
    code = main(["convert", str(source), "-o", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 8
    assert captured.err.count("error:") == 1 and "zz_model.onnx" in captured.err
    assert "nothing written" in captured.out
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path) == []


def test_interrupt_midway_leaves_no_partial_folder(tmp_path, monkeypatch):
    from mpcompile.compiler import converter

    source = write_export(tmp_path / "export")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous")
    real = converter.convert_file
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(converter, "convert_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert_folder(source, out, overwrite=True)
    assert len(calls) == 2
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # the old folder is untouched
    assert no_leftovers(tmp_path) == []


def test_api_raises_the_failing_files_error_or_returns_it(tmp_path):
    source = write_export(tmp_path / "export")
    (source / "encoder_model.onnx_data").write_bytes(b"short")
    with pytest.raises(errors.ExternalDataError, match="encoder_model"):
        convert_folder(source, tmp_path / "out")
    result = convert_folder(source, tmp_path / "out", raise_on_error=False)
    assert not result and result.first_failure().file == "encoder_model.onnx"
    assert [o.status for o in result.files] == ["converted", "converted", "failed"]
    assert not (tmp_path / "out").exists() and no_leftovers(tmp_path) == []


def test_output_inside_or_equal_to_input_is_refused(tmp_path, capsys):
    source = write_export(tmp_path / "export")
    assert main(["convert", str(source), "-o", str(source / "fp16")]) == 10
    assert main(["convert", str(source), "-o", str(source), "--overwrite"]) == 10
    assert main(["convert", str(source), "-o", str(tmp_path), "--overwrite"]) == 10  # would remove the input
    assert capsys.readouterr().err.count("error:") == 3
    assert sorted(p.name for p in source.iterdir()) == sorted(
        [*MODELS, "encoder_model.onnx_data", "sub", *(n for n in OTHER_FILES if "/" not in n)]
    )


def test_folder_without_models_is_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    assert main(["convert", str(tmp_path / "empty")]) == 4
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no .onnx file" in err


def test_symlinks_inside_are_copied_outside_refused(tmp_path, capsys):
    source = write_export(tmp_path / "export")
    os.symlink("tokenizer.json", source / "tokenizer_link.json")
    assert main(["convert", str(source), "-o", str(tmp_path / "out"), "-q"]) == 0
    copied = tmp_path / "out" / "tokenizer_link.json"
    assert not copied.is_symlink() and copied.read_bytes() == OTHER_FILES["tokenizer.json"]
    (tmp_path / "secret.txt").write_text("outside")
    os.symlink(tmp_path / "secret.txt", source / "vocab.txt")
    assert main(["convert", str(source), "-o", str(tmp_path / "out2")]) == 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "outside the folder" in err
    assert not (tmp_path / "out2").exists()


def test_report_option_with_a_folder_is_refused(tmp_path, capsys):
    source = write_export(tmp_path / "export")
    assert main(["convert", str(source), "--report", str(tmp_path / "r.html")]) == 2
    assert "mpcompile report" in capsys.readouterr().err
    assert not (tmp_path / "export.fp16").exists()


def test_auto_runs_per_file(tmp_path, capsys):
    source = write_export(tmp_path / "export")
    assert main(["convert", str(source), "-o", str(tmp_path / "out"), "--auto", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert all(row["status"] == "converted" and "auto" in row for row in summary["files"])
    for name in MODELS:
        converted = onnx.load(tmp_path / "out" / name)
        assert "mpcompile.auto" in {entry.key for entry in converted.metadata_props}
        assert_close(run(onnx.load(source / name), feeds(name)), run(converted, feeds(name)), RTOL, ATOL)


# -- report and validate ------------------------------------------------------------------


def test_report_on_folders(tmp_path, capsys):
    source = write_export(tmp_path / "export")
    convert_folder(source, tmp_path / "out")
    assert main(["report", str(tmp_path / "out"), "--format", "json", "--compare", str(source)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [entry["file"] for entry in document["files"]] == list(MODELS)
    assert all(
        any(node["precision"] == "fp16" for node in entry["report"]["nodes"]) for entry in document["files"]
    )
    assert main(["report", str(tmp_path / "out")]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in MODELS)
    assert main(["report", str(tmp_path / "out"), "-o", str(tmp_path / "reports")]) == 0
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == sorted(
        name.replace(".onnx", ".html") for name in MODELS
    )
    assert main(["report", str(tmp_path / "out"), "--format", "html"]) == 2


def test_validate_on_folders(tmp_path, capsys):
    source = write_export(tmp_path / "export")
    out = tmp_path / "out"
    convert_folder(source, out)
    assert main(["validate", str(source), str(out), "--runs", "0", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["passed"] is True and [entry["file"] for entry in document["files"]] == list(MODELS)
    # a candidate that computes something else fails, and the folder fails with it
    bad = tmp_path / "bad"
    convert_folder(source, bad)
    swapped = decoder(True)
    for tensor in swapped.graph.initializer:
        tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor) * 3, tensor.name))
    onnx.save(swapped, bad / "decoder_with_past_model.onnx")
    assert main(["validate", str(source), str(bad), "--runs", "0"]) == 1
    out_text = capsys.readouterr().out
    assert "FAILED" in out_text and "PASSED" in out_text
    (bad / "decoder_model.onnx").unlink()
    assert main(["validate", str(source), str(bad), "--runs", "0"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "decoder_model.onnx" in err
