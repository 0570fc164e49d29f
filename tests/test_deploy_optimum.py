"""optimum's ORTModel classes load every converted corpus export folder and generate as on FP32.

Runs in the corpus environment (optimum, torch):
``.venv-corpus/bin/python -m pytest -q -m deploy tests/test_deploy_optimum.py``; elsewhere it is
skipped with that reason. For every export folder and every mode of
``models.corpus.deploy.MODES``, the folder is converted with ``mpcompile.convert_folder`` and
loaded on CPU by ``ORTModelForCausalLM`` / ``ORTModelForSeq2SeqLM`` (merged decoder, and the
decoder / decoder-with-past pair, where the folder has them) / ``ORTModelForFeatureExtraction``.
Decoders: ``generate`` (greedy, 20 new tokens, end-of-sequence suppressed by ``min_new_tokens``)
gives, for the three fixed prompts, the tokens optimum gives on the FP32 folder, which are the
seeded torch model's recorded at build time. Encoders: ``last_hidden_state`` within the stated
tolerance of FP32.
"""

from __future__ import annotations

import pathlib

import pytest

pytestmark = [pytest.mark.deploy, pytest.mark.slow]
pytest.importorskip(
    "optimum.onnxruntime",
    reason="optimum is not installed (run: bash tools/corpus_env.sh; "
    ".venv-corpus/bin/python -m pytest -q -m deploy tests/test_deploy_optimum.py)",
)

from models.corpus import load_folders  # noqa: E402
from models.corpus import manifest as corpus_manifest  # noqa: E402
from models.corpus.deploy import (  # noqa: E402
    ENCODER_TOLERANCE,
    MODES,
    ConvertedFolders,
    encoder_error,
    mode_precision,
    optimum_generate,
    optimum_hidden_state,
    optimum_models,
)
from models.corpus.folders import encoder_feeds  # noqa: E402
from models.corpus.manifest import FolderEntry  # noqa: E402

BUILD_HINT = "bash tools/corpus_env.sh && .venv-corpus/bin/python -m models.corpus build --jobs 2"


def _folders() -> list[FolderEntry]:
    try:
        folders = load_folders(status="ok")
    except FileNotFoundError:
        return []
    # a folder built to break under plain FP16 is tests/test_validate_generation.py's case
    return [entry for entry in folders if entry.plain_fp16_generates]


_FOLDERS = _folders()
_CASES = [(entry, mode) for entry in _FOLDERS for mode in ("fp32", *MODES)]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> ConvertedFolders:
    """``converted(entry, mode)``: the folder converted in that mode (the FP32 folder for "fp32")."""
    return ConvertedFolders(tmp_path_factory.mktemp("deploy-optimum"))


@pytest.mark.parametrize(
    ("entry", "mode"),
    _CASES or [(None, None)],
    ids=[f"{entry.name}-{mode}" for entry, mode in _CASES] or ["not-built"],
)
def test_optimum_loads_and_generates(entry: FolderEntry | None, mode: str | None, converted) -> None:
    if entry is None or mode is None:
        pytest.skip(
            f"the corpus has no export folders ({corpus_manifest.manifest_path()}); build it with `{BUILD_HINT}`"
        )
    folder = converted(entry, mode)
    if not entry.generates:
        _check_encoder(entry, folder, mode)
        return
    for name, model in optimum_models(entry, folder).items():
        tokens = [optimum_generate(model, prompt, entry.new_tokens) for prompt in entry.prompts]
        for index, (got, expected) in enumerate(zip(tokens, entry.reference, strict=True)):
            step = next((i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b), None)
            assert step is None, (
                f"{name}, prompt {index}: step {step} gives {got[step]}, FP32 {expected[step]}"
            )


def _check_encoder(entry: FolderEntry, folder: pathlib.Path, mode: str) -> None:
    (model,) = optimum_models(entry, folder).values()
    (reference_model,) = optimum_models(entry, entry.path).values()
    names = set(model.input_names)
    bound, cosine_floor = ENCODER_TOLERANCE["fp16" if mode == "fp32" else mode_precision(mode)]
    for index, prompt in enumerate(entry.prompts):
        feeds = encoder_feeds(prompt, names)
        got, expected = optimum_hidden_state(model, feeds), optimum_hidden_state(reference_model, feeds)
        relative, cosine = encoder_error(expected, got)
        assert relative <= bound and cosine >= cosine_floor, (
            f"prompt {index}: relative max error {relative:.2e} (bound {bound}), cosine {cosine:.6f}"
        )
