"""The exporter-built corpus in every mode (``tools/real_models.py``; issue 14's acceptance).

Every corpus model (transformers architectures and torchvision CNNs exported by torch.onnx with
and without dynamo and by optimum, with KV caches and merged decoders) is converted by the
mpcompile command line in every mode of ``real_models.MODES``. Accuracy is judged with the
FP16-faithful evaluation against the FP32 model on the corpus's two input samples (of different
sizes), at each mode's criterion: rtol = atol = 1e-2 for FP16, 5e-2 for BF16, cosine 0.9999
for ``auto-cosine``. The peers run too, but are not judged.
"""

from __future__ import annotations

import os
import sys

import pytest

from models import corpus
from tools import real_models

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus_run():
    try:
        entries = corpus.load_manifest(status="ok")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    if not entries:
        pytest.skip("the corpus manifest lists no model that exported")
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    rows = real_models.run_corpus(entries, jobs=os.cpu_count() or 1, log=log)
    print(real_models.markdown_table(rows))
    return entries, rows


def _ours(rows):
    return [row for row in rows if row.mode not in real_models.PEERS]


def test_no_internal_error_in_any_mode(corpus_run):
    _, rows = corpus_run
    internal = [f"{row.model} [{row.mode}]: {row.error}" for row in _ours(rows) if row.exit_code == 70]
    assert not internal, "\n".join(internal)


def test_every_corpus_model_converts_in_every_mode(corpus_run):
    _, rows = corpus_run
    failed = [
        f"{row.model} [{row.mode}]: exit {row.exit_code}: {row.error}"
        for row in _ours(rows)
        if row.exit_code != 0
    ]
    assert not failed, "\n".join(failed)


def test_every_output_passes_the_checker_and_runs_at_both_sizes(corpus_run):
    _, rows = corpus_run
    invalid = [
        f"{row.model} [{row.mode}]: {row.error}" for row in _ours(rows) if row.converted and not row.valid
    ]
    assert not invalid, "\n".join(invalid)


def test_optimize_transformer_for_cuda_succeeds_on_every_decoder(corpus_run):
    entries, rows = corpus_run
    decoders = {
        entry.name for entry in entries if entry.has_family("llm") or entry.has_family("merged-decoder")
    }
    assert decoders, "the corpus has no decoder-only LLM or merged decoder"
    optimize = {row.model: row for row in rows if row.mode == "optimize"}
    failed = [
        f"{name}: exit {optimize[name].exit_code}: {optimize[name].error}"
        for name in sorted(decoders)
        if not optimize[name].valid
    ]
    assert not failed, "\n".join(failed)


def test_auto_meets_its_tolerance_with_at_least_plain_converts_share(corpus_run):
    entries, rows = corpus_run
    problems = [
        problem
        for problem in real_models.acceptance_problems(rows, entries)
        if any(f"[{mode}]" in problem for mode in real_models.AUTO_MODES)
    ]
    assert not problems, "\n".join(problems)


def _rows_of(rows, entries, families: tuple[str, ...], mode: str) -> dict[str, real_models.Row]:
    names = {entry.name for entry in entries if any(entry.has_family(family) for family in families)}
    if not names:
        pytest.skip(f"the corpus has no {'/'.join(families)} entry; rebuild it (models/corpus)")
    return {row.model: row for row in rows if row.model in names and row.mode == mode}


def test_plain_convert_is_finite_faithfully_on_range_hazards(corpus_run):
    """Issue 22: efficientvit's linear attention (q @ (k^T v) past FP16's range) and a mel
    spectrogram fed int16-scale audio (power spectrum ~1e9): plain convert's outputs stay finite
    under the FP16-faithful judge and close to FP32 (cosine >= 0.999 on both samples)."""
    entries, rows = corpus_run
    plain = _rows_of(rows, entries, ("linear-attention", "spectrogram"), "convert")
    assert plain
    for name, row in plain.items():
        assert row.valid and row.new_nonfinite == 0, f"{name}: {row.new_nonfinite} new NaN/Inf: {row.error}"
        assert row.cosine_faithful is not None and row.cosine_faithful >= 0.999, f"{name}: {row}"


def test_auto_keeps_plain_converts_share_on_ultralytics_yolo(corpus_run):
    """Issue 22: where plain convert of ultralytics' own YOLO export meets cosine >= 0.999 under the
    FP16-faithful judge with no new NaN/Inf, every --auto mode keeps at least its FLOP share."""
    entries, rows = corpus_run
    plain = _rows_of(rows, entries, ("ultralytics",), "convert")
    by_key = {(row.model, row.mode): row for row in rows}
    assert plain
    for name, row in plain.items():
        assert row.valid, f"{name}: {row.error}"
        if row.new_nonfinite or (row.cosine_faithful or 0.0) < 0.999:
            continue
        for mode in (*real_models.AUTO_MODES, "auto-generated"):
            auto = by_key[(name, mode)]
            assert auto.exit_code == 0 and auto.new_nonfinite == 0, f"{name} [{mode}]: {auto.error}"
            assert (auto.low_flop_share or 0.0) + 1e-9 >= (row.low_flop_share or 0.0), (
                f"{name} [{mode}]: {auto.low_flop_share} < plain convert's {row.low_flop_share}"
            )
