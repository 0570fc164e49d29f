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
