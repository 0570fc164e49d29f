"""The exporter corpus (models/corpus): manifest reader, input-file conventions, and the built corpus.

The first tests use a tiny fake corpus and need no torch. ``test_built_entry_runs_at_both_sizes``
checks every ``ok`` entry of the corpus in ``$MPCOMPILE_CORPUS`` (default ``.cache/corpus``) when
it is built, and ``test_built_folder_is_an_optimum_export`` every ``ok`` export folder; both are
skipped with instructions when it is not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from models.corpus import manifest as corpus_manifest
from models.corpus.folders import FOLDER_JOBS, select_folder_jobs, split_only
from models.corpus.listing import describe, markdown_table
from models.corpus.manifest import (
    Entry,
    FolderEntry,
    load_feeds,
    load_folders,
    load_manifest,
    save_feeds,
    write_folder_section,
    write_manifest,
)
from models.corpus.plan import JOBS, select_jobs
from mpcompile.validate.generation import Generator

BUILD_HINT = "bash tools/corpus_env.sh && .venv-corpus/bin/python -m models.corpus build --jobs 2"


def _dynamic_model() -> onnx.ModelProto:
    """y = x * 2 over ``(batch, sequence)``: a stand-in corpus model with dynamic axes."""
    node = helper.make_node("Mul", ["x", "two"], ["y"])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [node],
        "fake",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence"])],
        [two],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture
def fake_corpus(tmp_path: Path) -> Path:
    """A corpus folder with one ok entry (two samples of different sizes) and one failed entry."""
    (tmp_path / "fake-torchscript").mkdir()
    onnx.save_model(_dynamic_model(), tmp_path / "fake-torchscript" / "model.onnx")
    shapes = [(2, 3), (3, 5)]
    for index, shape in enumerate(shapes):
        x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
        save_feeds(tmp_path / "fake-torchscript" / f"model.inputs-{index}.npz", {"x": x})
    ok = Entry(
        name="fake-torchscript",
        architecture="fake",
        exporter="torchscript",
        variant="encoder",
        family=("encoder", "layernorm"),
        model="fake-torchscript/model.onnx",
        inputs=("fake-torchscript/model.inputs-0.npz", "fake-torchscript/model.inputs-1.npz"),
        opset=17,
        status="ok",
        key="0123456789abcdef",
        job="fake-torchscript",
        input_names=("x",),
        output_names=("y",),
        input_shapes=({"x": [2, 3]}, {"x": [3, 5]}),
    )
    failed = Entry(
        name="fake-dynamo",
        architecture="fake",
        exporter="dynamo",
        variant="encoder",
        family=("encoder",),
        model="fake-dynamo/model.onnx",
        inputs=(),
        opset=None,
        status="export-failed",
        key="fedcba9876543210",
        cause="RuntimeError: unordered_map::at",
        job="fake-dynamo",
    )
    write_manifest(tmp_path, [ok, failed], {"torch": "0.0"})
    return tmp_path


def test_reader_resolves_paths_and_loads_inputs(fake_corpus: Path) -> None:
    entries = {entry.name: entry for entry in load_manifest(fake_corpus)}
    assert sorted(entries) == ["fake-dynamo", "fake-torchscript"]
    entry = entries["fake-torchscript"]
    assert entry.ok and entry.has_family("encoder") and not entry.has_family("llm")
    assert entry.model_path == fake_corpus / "fake-torchscript" / "model.onnx"
    assert [path.name for path in entry.input_paths] == ["model.inputs-0.npz", "model.inputs-1.npz"]
    samples = entry.load_inputs()
    assert [sample["x"].shape for sample in samples] == [(2, 3), (3, 5)]
    assert entries["fake-dynamo"].cause.startswith("RuntimeError")
    assert [e.name for e in load_manifest(fake_corpus, status="ok")] == ["fake-torchscript"]


def test_fake_entry_runs_both_samples(fake_corpus: Path) -> None:
    (entry,) = load_manifest(fake_corpus, status="ok")
    _check_runs_at_both_sizes(entry)


def test_manifest_rows_round_trip(fake_corpus: Path) -> None:
    entries = load_manifest(fake_corpus)
    document = json.loads((fake_corpus / "manifest.json").read_text())
    assert [row["name"] for row in document["entries"]] == [entry.name for entry in entries]
    assert [entry.to_dict() for entry in entries] == document["entries"]
    required = {
        "name",
        "architecture",
        "exporter",
        "variant",
        "family",
        "model",
        "inputs",
        "opset",
        "status",
        "key",
    }
    assert all(required <= set(row) for row in document["entries"])


def test_listing_shows_status_and_shapes(fake_corpus: Path) -> None:
    entries = load_manifest(fake_corpus)
    lines = describe(entries)
    assert any("fake-dynamo" in line and "export-failed: RuntimeError" in line for line in lines)
    table = markdown_table(entries)
    assert table[0].startswith("| entry |") and len(table) == 2 + len(entries)
    assert "x 2x3" in table[3] and "x 3x5" in table[3]


def test_reader_rejects_bad_manifests(tmp_path: Path, fake_corpus: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"models\.corpus build"):
        load_manifest(tmp_path / "absent")
    document = json.loads((fake_corpus / "manifest.json").read_text())
    document["entries"][0]["status"] = "maybe"
    (fake_corpus / "manifest.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match="unknown status"):
        load_manifest(fake_corpus)
    document["version"] = 999
    (fake_corpus / "manifest.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match="manifest version"):
        load_manifest(fake_corpus)


def test_write_manifest_refuses_duplicate_names(fake_corpus: Path) -> None:
    (entry, _) = load_manifest(fake_corpus)
    with pytest.raises(ValueError, match="duplicate"):
        write_manifest(fake_corpus, [entry, entry], {})


def test_folder_variable_overrides_default(monkeypatch: pytest.MonkeyPatch, fake_corpus: Path) -> None:
    monkeypatch.setenv(corpus_manifest.FOLDER_VARIABLE, str(fake_corpus))
    assert corpus_manifest.manifest_path() == fake_corpus / "manifest.json"
    assert len(load_manifest()) == 2


def test_saved_feeds_are_byte_reproducible(tmp_path: Path) -> None:
    feeds = {
        "input_ids": np.arange(6, dtype=np.int64).reshape(2, 3),
        "empty": np.zeros((2, 4, 0, 8), np.float32),
    }
    save_feeds(tmp_path / "a.npz", feeds)
    save_feeds(tmp_path / "b.npz", feeds)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    loaded = load_feeds(tmp_path / "a.npz")
    assert list(loaded) == ["input_ids", "empty"]
    assert loaded["empty"].shape == (2, 4, 0, 8)
    np.testing.assert_array_equal(loaded["input_ids"], feeds["input_ids"])


def test_plan_names_are_unique_and_tagged() -> None:
    entries = [entry for job in JOBS for entry in job.entries()]
    names = [entry.name for entry in entries]
    assert len(names) == len(set(names))
    by_name = {entry.name: entry for entry in entries}
    assert {"llm", "rmsnorm", "kv-cache"} <= set(by_name["llama-optimum-with-past"].families)
    assert "rmsnorm" not in by_name["gpt2-optimum-with-past"].families
    assert {"merged-decoder", "control-flow"} <= set(by_name["t5-optimum-decoder-merged"].families)
    assert by_name["t5-optimum-decoder-merged"].file == "decoder_model_merged.onnx"
    exporters = {job.exporter for job in JOBS}
    assert exporters == {"torchscript", "dynamo", "optimum", "ultralytics"}
    assert {"timm", "linear-attention"} <= set(by_name["efficientvit_b0-torchscript"].families)
    assert {"audio", "spectrogram"} <= set(by_name["melspectrogram-torchscript"].families)
    assert {"detection", "ultralytics"} <= set(by_name["yolov8n-ultralytics"].families)
    assert [job.name for job in select_jobs(["t5-optimum-decoder-merged"])] == ["t5-optimum-with-past"]
    with pytest.raises(KeyError, match="unknown corpus name"):
        select_jobs(["no-such-model"])


def _fake_folder(root: Path) -> FolderEntry:
    export = root / "folders" / "fake-optimum-folder" / "export"
    export.mkdir(parents=True)
    onnx.save_model(_dynamic_model(), export / "model.onnx")
    (export / "config.json").write_text("{}")
    return FolderEntry(
        name="fake-optimum-folder",
        architecture="fake",
        task="text-generation-with-past",
        variant="decoder-only-with-past",
        folder="folders/fake-optimum-folder/export",
        files=("model.onnx",),
        status="ok",
        key="00112233aabbccdd",
        prompts=((5, 6, 7), (8, 9)),
        reference=((3, 3), (4, 4)),
        new_tokens=2,
        opset=17,
    )


def test_folder_section_and_graph_entries_keep_each_other(fake_corpus: Path) -> None:
    graphs = load_manifest(fake_corpus)
    folder = _fake_folder(fake_corpus)
    write_folder_section(fake_corpus, [folder], {"torch": "0.0"})
    assert load_manifest(fake_corpus) == graphs
    (loaded,) = load_folders(fake_corpus)
    assert loaded == folder and loaded.path == fake_corpus / folder.folder and loaded.generates
    assert loaded.prompts == ((5, 6, 7), (8, 9)) and loaded.reference == ((3, 3), (4, 4))
    write_manifest(fake_corpus, graphs[:1], {"torch": "0.0"})  # the graph builder's rewrite
    assert load_folders(fake_corpus) == [folder]
    assert [entry.name for entry in load_manifest(fake_corpus)] == [graphs[0].name]
    assert load_folders(fake_corpus, status="export-failed") == []
    document = json.loads((fake_corpus / "manifest.json").read_text())
    assert document["folders"] == [folder.to_dict()]


def test_manifest_without_folders_has_none(fake_corpus: Path) -> None:
    assert load_folders(fake_corpus) == []
    with pytest.raises(FileNotFoundError, match=r"models\.corpus build"):
        load_folders(fake_corpus / "absent")


def test_folder_plan_and_only_names() -> None:
    names = [job.name for job in FOLDER_JOBS]
    graph_names = {entry.name for job in JOBS for entry in job.entries()} | {job.name for job in JOBS}
    assert len(names) == len(set(names)) and not set(names) & graph_names
    variants = {job.variant for job in FOLDER_JOBS}
    assert {"decoder-only-with-past", "encoder-decoder-merged", "encoder-decoder", "encoder"} <= variants
    unmerged = next(job for job in FOLDER_JOBS if job.variant == "encoder-decoder")
    assert unmerged.no_post_process and unmerged.arch.config["tie_word_embeddings"] is False
    for job in FOLDER_JOBS:
        prompts = job.prompts()
        assert prompts == job.prompts() and len(prompts) == 3 and len({len(p) for p in prompts}) == 3
        assert all(3 <= token < job.arch.vocab_size for prompt in prompts for token in prompt)
    assert split_only(None) == (None, None)
    assert split_only(["llama-optimum-folder"]) == ([], ["llama-optimum-folder"])
    assert split_only(["t5"]) == (["t5"], ["t5"])
    assert [job.name for job in select_folder_jobs(["t5"])] == [
        "t5-optimum-folder",
        "t5-optimum-folder-unmerged",
        "t5-large-activation-folder",
    ]
    broken = [job for job in FOLDER_JOBS if not job.plain_fp16_generates]
    assert [job.name for job in broken] == ["t5-large-activation-folder", "llama-large-activation-folder"]
    assert broken[0].arch.config["initializer_factor"] == 16.0
    assert broken[1].arch.config["initializer_range"] == 4.0 and broken[1].variant == "decoder-only-with-past"
    assert split_only(["llama-torchscript"]) == (["llama-torchscript"], [])
    with pytest.raises(KeyError, match="unknown corpus name"):
        split_only(["no-such-folder"])


def test_reading_the_corpus_imports_no_torch() -> None:
    code = (
        "import sys, models, models.corpus, models.corpus.plan, models.corpus.builder,"
        " models.corpus.folders, models.corpus.deploy;"
        "bad = [m for m in ('torch', 'transformers', 'optimum') if m in sys.modules];"
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def _check_runs_at_both_sizes(entry: Entry) -> None:
    assert len(entry.input_paths) >= 2, f"{entry.name}: fewer than two input samples"
    samples = entry.load_inputs()
    shapes = [{name: array.shape for name, array in sample.items()} for sample in samples]
    assert any(shape != shapes[0] for shape in shapes[1:]), f"{entry.name}: the samples have the same shapes"
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(entry.model_path), options, providers=["CPUExecutionProvider"])
    graph_inputs = [value.name for value in session.get_inputs()]
    if entry.output_names:
        assert [value.name for value in session.get_outputs()] == list(entry.output_names)
    for index, sample in enumerate(samples):
        assert sorted(sample) == sorted(graph_inputs), f"{entry.name} sample {index}: feeds != graph inputs"
        outputs = session.run(None, sample)
        for value, array in zip(session.get_outputs(), outputs, strict=True):
            if np.issubdtype(array.dtype, np.floating):
                assert np.isfinite(array).all(), f"{entry.name} sample {index}: {value.name} not finite"


def _built_entries() -> list[Entry]:
    try:
        return load_manifest(status="ok")
    except FileNotFoundError:
        return []


_BUILT = _built_entries()


@pytest.mark.parametrize("entry", _BUILT or [None], ids=[entry.name for entry in _BUILT] or ["not-built"])
def test_built_entry_runs_at_both_sizes(entry: Entry | None) -> None:
    if entry is None:
        pytest.skip(
            f"the exporter corpus is not built ({corpus_manifest.manifest_path()}); build it with `{BUILD_HINT}`"
        )
    _check_runs_at_both_sizes(entry)


def _built_folders() -> list[FolderEntry]:
    try:
        return load_folders(status="ok")
    except FileNotFoundError:
        return []


_BUILT_FOLDERS = _built_folders()


@pytest.mark.parametrize(
    "entry", _BUILT_FOLDERS or [None], ids=[entry.name for entry in _BUILT_FOLDERS] or ["not-built"]
)
def test_built_folder_is_an_optimum_export(entry: FolderEntry | None) -> None:
    """The folder holds what optimum writes; its FP32 graphs give the recorded torch tokens."""
    if entry is None:
        pytest.skip(
            f"the corpus has no export folders ({corpus_manifest.manifest_path()}); build it with `{BUILD_HINT}`"
        )
    names = {path.name for path in entry.path.iterdir()}
    assert {"config.json", *entry.files} <= names
    assert sorted(name for name in names if name.endswith(".onnx")) == sorted(entry.files)
    assert len(entry.prompts) == 3
    if not entry.generates:
        assert entry.files == ("model.onnx",) and not entry.reference
        return
    assert "generation_config.json" in names
    generator = Generator(entry.path)
    for prompt, expected in zip(entry.prompts, entry.reference, strict=True):
        assert generator.generate(prompt, entry.new_tokens).tokens == expected
