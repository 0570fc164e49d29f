"""ORT-fused graphs of the exporter corpus (``models.corpus``) convert: the FP32 output of ORT's
transformers optimizer on the corpus BERT, GPT-2, T5 and BART files, and optimum's ``-O1``/``-O2``
(``ORTOptimizer`` with ``AutoOptimizationConfig``, run in the corpus environment, which has optimum).

Each conversion (target cuda) must load and run on ORT's CPU provider with the corpus inputs and
keep, FP16-faithfully, a cosine similarity of at least 0.999 with the FP32 model on every float
output; a graph holding an op only CUDA runs (T5's RelativePositionBias) is checked structurally
(the conversion's note says the CPU load was skipped). The optimizer's FP16 output exits 8.
Marked ``slow``; skipped, saying why, without the built corpus or the corpus environment.
"""

from __future__ import annotations

import os
import pathlib
import subprocess

import numpy as np
import onnx
import pytest

import mpcompile
from models import corpus
from mpcompile.errors import AlreadyLowPrecisionError
from mpcompile.evaluate import faithful
from mpcompile.evaluate.ort_session import is_onnxruntime_error

ort = pytest.importorskip("onnxruntime", reason="the graphs come from onnxruntime's optimizer")

pytestmark = pytest.mark.slow

MIN_COSINE = 0.999
MODEL_TYPES = {"bert": "bert", "gpt2": "gpt2", "t5": "t5", "bart": "bart"}
# The corpus environment of tools/corpus_env.sh (MPCOMPILE_CORPUS_PYTHON names another one).
CORPUS_PYTHON = pathlib.Path(
    os.environ.get(
        "MPCOMPILE_CORPUS_PYTHON",
        pathlib.Path(__file__).resolve().parents[1] / ".venv-corpus" / "bin" / "python",
    )
)


def _entries() -> tuple[list[corpus.Entry], str]:
    try:
        entries = corpus.load_manifest(status="ok")
    except FileNotFoundError as exc:
        return [], str(exc)
    chosen = [e for e in entries if e.architecture in MODEL_TYPES and not e.has_family("control-flow")]
    return chosen, "" if chosen else "the corpus holds no BERT/GPT-2/T5/BART file"


ENTRIES, SKIP_REASON = _entries()


def _cosine(expected: np.ndarray, actual: np.ndarray) -> float:
    want, got = expected.astype(np.float64).ravel(), actual.astype(np.float64).ravel()
    norms = np.linalg.norm(want) * np.linalg.norm(got)
    return float(want @ got / norms) if norms else float(np.allclose(want, got))


def _check_conversion(entry: corpus.Entry, fused_path: pathlib.Path, tmp_path: pathlib.Path) -> None:
    output = tmp_path / "converted.onnx"
    result = mpcompile.convert_file(fused_path, output, target="cuda")
    print(f"{entry.name}: {dict(result.stats.nodes_by_precision)} notes={result.notes}")
    if any("no ORT CPU load" in note for note in result.notes):
        pytest.skip(f"{entry.name}: holds an op only CUDA runs; checked structurally ({result.notes})")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    reference = ort.InferenceSession(str(entry.model_path), options, providers=["CPUExecutionProvider"])
    ort.InferenceSession(str(output), options, providers=["CPUExecutionProvider"])  # loads
    for feeds in entry.load_inputs():
        names = [value.name for value in reference.get_inputs()]
        feeds = {name: feeds[name] for name in names}
        expected = dict(
            zip([o.name for o in reference.get_outputs()], reference.run(None, feeds), strict=True)
        )
        judged = faithful.run(str(output), feeds)
        cosines = [
            _cosine(want, np.asarray(judged[name], np.float32))
            for name, want in expected.items()
            if np.issubdtype(want.dtype, np.floating) and name in judged
        ]
        print(f"  faithful min cosine {min(cosines):.6f}")
        assert min(cosines) >= MIN_COSINE


@pytest.mark.skipif(not ENTRIES, reason=SKIP_REASON or "no corpus")
@pytest.mark.parametrize("entry", ENTRIES or [None], ids=[e.name for e in ENTRIES] or ["no-corpus"])
def test_ort_optimizer_output_converts(entry, tmp_path):
    from onnxruntime.transformers import optimizer

    try:
        optimized = optimizer.optimize_model(
            str(entry.model_path), MODEL_TYPES[entry.architecture], opt_level=0
        )
    except Exception as exc:  # the optimizer's own failure: there is no fused graph to convert
        if not is_onnxruntime_error(exc):
            raise
        pytest.skip(
            f"{entry.name}: onnxruntime's transformers optimizer fails on this export before mpcompile "
            f"runs ({type(exc).__name__}: {exc})"
        )
    fused_path = tmp_path / "fused.onnx"
    optimized.save_model_to_file(str(fused_path))
    _check_conversion(entry, fused_path, tmp_path)
    optimized.convert_float_to_float16(keep_io_types=True)
    fp16_path = tmp_path / "fused_fp16.onnx"
    optimized.save_model_to_file(str(fp16_path))
    with pytest.raises(AlreadyLowPrecisionError):
        mpcompile.convert_file(fp16_path, tmp_path / "fp16_out.onnx")


OPTIMUM_SCRIPT = """
import sys
from optimum.onnxruntime import ORTOptimizer
from optimum.onnxruntime.configuration import AutoOptimizationConfig
folder, name, level, out = sys.argv[1:]
optimizer = ORTOptimizer.from_pretrained(folder, file_names=[name])
optimizer.optimize(getattr(AutoOptimizationConfig, level)(), out)
"""


def _optimum_reason() -> str:
    if not CORPUS_PYTHON.exists():
        return f"the corpus environment ({CORPUS_PYTHON}) is not installed"
    probe = subprocess.run([str(CORPUS_PYTHON), "-c", "import optimum.onnxruntime"], capture_output=True)
    return "" if probe.returncode == 0 else "optimum.onnxruntime is not importable in the corpus environment"


OPTIMUM_ENTRIES = [e for e in ENTRIES if e.architecture in ("bert", "gpt2") and e.exporter == "optimum"]


@pytest.mark.skipif(not OPTIMUM_ENTRIES, reason=SKIP_REASON or "no optimum BERT/GPT-2 export in the corpus")
@pytest.mark.parametrize("level", ["O1", "O2"])
@pytest.mark.parametrize(
    "entry", OPTIMUM_ENTRIES or [None], ids=[e.name for e in OPTIMUM_ENTRIES] or ["none"]
)
def test_optimum_optimized_output_converts(entry, level, tmp_path):
    reason = _optimum_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "optimum"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [
            str(CORPUS_PYTHON),
            "-c",
            OPTIMUM_SCRIPT,
            str(entry.model_path.parent),
            entry.model_path.name,
            level,
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    (fused_path,) = [p for p in out.glob("*.onnx")]
    fused = onnx.load(str(fused_path), load_external_data=False)
    print(f"{entry.name} -O{level[1]}: {sorted({n.op_type for n in fused.graph.node if n.domain})}")
    _check_conversion(entry, fused_path, tmp_path)
