"""The corpus's optimum export folders, converted as folders, deploy in a plain onnxruntime loop.

For every export folder (``models.corpus.load_folders``) and every mode of
``models.corpus.deploy.MODES`` (plain, ``--no-keep-io-types``, ``--target cpu``,
``--precision bf16 --target cpu``): the folder converts, its other files are byte-identical, and
the converted decoders generate the same 20 greedy tokens as the FP32 folder for the three fixed
prompts (plain ONNX Runtime, CPU, and the same loop on the FP16-faithful evaluation, which rounds
every FP16/BF16 node output as a GPU stores it; every decoder layout the folder has: merged, and
the decoder / decoder-with-past pair). The FP32 folder itself must reproduce the seeded torch model's tokens
recorded at build time. With ``--no-keep-io-types`` every float input and output of every graph is
FP16, and the loop runs with FP16 presents fed back as past and an FP16 encoder output.
Encoders: ``last_hidden_state`` within the stated tolerance of FP32. Skipped when the corpus is
not built.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from models.corpus import load_folders
from models.corpus import manifest as corpus_manifest
from models.corpus.deploy import (
    ENCODER_TOLERANCE,
    MODES,
    ConvertedFolders,
    compare_generations,
    convert_export_folder,
    encoder_error,
    mode_precision,
)
from models.corpus.folders import encoder_feeds
from models.corpus.manifest import FolderEntry
from mpcompile.validate.generation import ENCODER_DECODER, Generator, detect_layout

pytestmark = pytest.mark.slow

BUILD_HINT = "bash tools/corpus_env.sh && .venv-corpus/bin/python -m models.corpus build --jobs 2"


def _folders() -> list[FolderEntry]:
    try:
        folders = load_folders(status="ok")
    except FileNotFoundError:
        return []
    # a folder built to break under plain FP16 is tests/test_validate_generation.py's case
    return [entry for entry in folders if entry.plain_fp16_generates]


_FOLDERS = _folders()
_CASES = [(entry, mode) for entry in _FOLDERS for mode in MODES]


def _layouts(folder: pathlib.Path) -> list[bool | None]:
    """Every decoder layout of the folder: merged and/or the decoder / decoder-with-past pair."""
    if detect_layout(folder).kind != ENCODER_DECODER:
        return [None]
    merged = (folder / "decoder_model_merged.onnx").is_file()
    pair = (folder / "decoder_with_past_model.onnx").is_file()
    return [True] * merged + [False] * pair


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> ConvertedFolders:
    """``converted(entry, mode)``: the folder converted in that mode, once per module."""
    return ConvertedFolders(tmp_path_factory.mktemp("deploy"))


@pytest.mark.parametrize(
    ("entry", "mode"),
    _CASES or [(None, None)],
    ids=[f"{entry.name}-{mode}" for entry, mode in _CASES] or ["not-built"],
)
def test_converted_folder_deploys(entry: FolderEntry | None, mode: str | None, converted) -> None:
    if entry is None or mode is None:
        pytest.skip(
            f"the corpus has no export folders ({corpus_manifest.manifest_path()}); build it with `{BUILD_HINT}`"
        )
    output = converted(entry, mode)
    _check_other_files_identical(entry.path, output)
    low_io = mode == "no-keep-io"
    if entry.generates:
        _check_generation(entry, output, low_io)
    else:
        _check_encoder(entry, output, low_io, mode_precision(mode))


@pytest.mark.parametrize("entry", _FOLDERS or [None], ids=[entry.name for entry in _FOLDERS] or ["not-built"])
def test_cli_converts_the_folder_as_the_api_does(entry: FolderEntry | None, converted, tmp_path) -> None:
    """``mpcompile convert DIR -o OUT`` exits 0 and writes the same bytes as ``convert_folder``."""
    if entry is None:
        pytest.skip(
            f"the corpus has no export folders ({corpus_manifest.manifest_path()}); build it with `{BUILD_HINT}`"
        )
    output = tmp_path / "out"
    command = [sys.executable, "-m", "mpcompile.cli", "convert", str(entry.path), "-o", str(output)]
    run = subprocess.run(command, capture_output=True, text=True, cwd=pathlib.Path(__file__).parents[1])
    assert run.returncode == 0, run.stderr
    expected = converted(entry, "plain")
    assert sorted(path.name for path in output.iterdir()) == sorted(path.name for path in expected.iterdir())
    for path in expected.iterdir():
        assert (output / path.name).read_bytes() == path.read_bytes(), path.name


def _check_other_files_identical(source: pathlib.Path, output: pathlib.Path) -> None:
    names = sorted(path.name for path in source.iterdir())
    assert sorted(path.name for path in output.iterdir()) == names
    for name in names:
        if not name.endswith(".onnx"):
            assert (output / name).read_bytes() == (source / name).read_bytes(), f"{name} changed"


def _check_generation(entry: FolderEntry, output: pathlib.Path, low_io: bool) -> None:
    for merged in _layouts(entry.path):
        fp32 = Generator(entry.path, merged=merged)
        reference = [fp32.generate(prompt, entry.new_tokens) for prompt in entry.prompts]
        assert [run.tokens for run in reference] == list(entry.reference), "FP32 folder != torch"
        generator = Generator(output, merged=merged)
        runs = [generator.generate(prompt, entry.new_tokens) for prompt in entry.prompts]
        divergences = compare_generations(reference, runs)
        layout = ", ".join(generator.layout.files)
        assert not divergences, f"{layout}: " + "; ".join(map(str, divergences))
        faithful = Generator(output, merged=merged, faithful=True)  # as a GPU rounds FP16/BF16 outputs
        runs_faithful = [faithful.generate(prompt, entry.new_tokens) for prompt in entry.prompts]
        divergences = compare_generations(reference, runs_faithful)
        assert not divergences, f"{layout}, faithful: " + "; ".join(map(str, divergences))
        if low_io:
            declared = generator.declared_float_io()
            assert declared and set(declared.values()) == {"tensor(float16)"}, {
                name: kind for name, kind in declared.items() if kind != "tensor(float16)"
            }
            fed = {name: dtype for run in runs for name, dtype in run.float_io.items()}
            assert set(fed.values()) == {"float16"}, fed


def _check_encoder(entry: FolderEntry, output: pathlib.Path, low_io: bool, precision: str) -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    sessions = [
        ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        for folder in (entry.path, output)
    ]
    if low_io:
        kinds = {value.name: value.type for value in sessions[1].get_outputs()}
        assert set(kinds.values()) == {"tensor(float16)"}, kinds
    names = {value.name for value in sessions[0].get_inputs()}
    bound, cosine_floor = ENCODER_TOLERANCE[precision]
    for index, prompt in enumerate(entry.prompts):
        feeds = encoder_feeds(prompt, names)
        reference, candidate = (session.run(["last_hidden_state"], feeds)[0] for session in sessions)
        assert np.isfinite(candidate).all()
        relative, cosine = encoder_error(reference, candidate)
        assert relative <= bound and cosine >= cosine_floor, (
            f"prompt {index}: relative max error {relative:.2e} (bound {bound}), cosine {cosine:.6f}"
        )


def test_the_deploying_pages_io_binding_loop_runs_an_fp16_cache(tmp_path):
    """docs/deploying.md's ONNX Runtime loop (IO binding, FP16 cache bound from present to past)
    runs as printed on the Llama folder converted with --no-keep-io-types and gives the FP32
    folder's greedy tokens (CPU, ``device="cpu"``)."""
    folders = [
        entry
        for entry in _FOLDERS
        if (entry.path / "model.onnx").is_file()
        and any(
            value.name.startswith("past_key_values.")
            for value in ort.InferenceSession(str(entry.path / "model.onnx")).get_inputs()
        )
    ]
    if not folders:
        pytest.skip(f"no decoder-only export folder is built; build it with `{BUILD_HINT}`")
    page = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "deploying.md").read_text()
    block = next(code for code in page.split("```python\n")[1:] if "def greedy(" in code).split("```")[0]
    namespace: dict = {}
    exec(compile(block, "docs/deploying.md", "exec"), namespace)
    entry = folders[0]
    converted = tmp_path / "fp16-io"
    convert_export_folder(entry.path, converted, keep_io_types=False)
    session = ort.InferenceSession(str(converted / "model.onnx"), providers=["CPUExecutionProvider"])
    past = [value.type for value in session.get_inputs() if value.name.startswith("past_key_values.")]
    assert past and set(past) == {"tensor(float16)"}
    prompt = list(entry.prompts[0])
    expected = namespace["greedy"](str(entry.path / "model.onnx"), prompt, 20, device="cpu")
    assert namespace["greedy"](str(converted / "model.onnx"), prompt, 20, device="cpu") == expected
    assert len(expected) == 20
