"""Convert the real-model corpus in every mode and check every output (docs/real-models.md).

For each model of the exporter-built corpus (``models.corpus``: transformers architectures and
torchvision CNNs exported by torch.onnx with and without dynamo and by optimum), mpcompile runs
through its own command line in each mode of ``MODES``, and the two peer converters
(onnxconverter-common and ONNX Runtime's transformers float16) run on the same model. Each
output is checked: ONNX's full checker; ONNX Runtime (CPU EP) loads it and runs it on the
corpus's two input samples, which differ in size; the minimum cosine similarity to the FP32
outputs under ORT CPU and under mpcompile's FP16-faithful evaluation (every low-precision node
output rounded as a GPU stores it); the worst error against the default tolerance of its
precision (1e-2 for FP16, 5e-2 for BF16, and the metric for ``auto-cosine``) under the faithful
evaluation; NaN/Inf the FP32 outputs do not have; the share of MatMul/Gemm/Conv FLOPs (fused
forms included) in low precision; and the Casts added.

    python tools/real_models.py                                   # the whole corpus, every mode
    python tools/real_models.py --only llama --modes convert auto --jobs 2
    python tools/real_models.py --markdown docs/real-models.md    # the documented table

The corpus is built by ``python -m models.corpus build`` (in ``.venv-corpus``: ``bash
tools/corpus_env.sh``). Exit status 1 when an acceptance check fails (``acceptance_problems``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import io
import json
import math
import os
import pathlib
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np
import onnx

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models import corpus  # noqa: E402

_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
SAMPLES = "{samples}"  # replaced by a folder holding the entry's input samples
MODES: dict[str, tuple[str, ...]] = {
    "convert": (),
    "auto": ("--auto", "--inputs", SAMPLES),
    "auto-cosine": ("--auto", "--inputs", SAMPLES, "--metric", "cosine:0.9999"),
    "auto-generated": ("--auto",),
    "optimize": ("--optimize", "transformer", "--target", "cuda"),
    "cpu": ("--target", "cpu"),
    "bf16": ("--precision", "bf16", "--target", "cpu"),
}
PEERS = ("onnxconverter-common", "ort-float16")
AUTO_MODES = ("auto", "auto-cosine")
COSINE_METRIC = 0.9999
# MatMul/Gemm/Conv and the fused forms ORT's optimiser makes of them.
COMPUTE_OPS = frozenset(
    {
        ("", "MatMul"),
        ("", "Gemm"),
        ("", "Conv"),
        ("", "ConvTranspose"),
        ("com.microsoft", "FusedMatMul"),
        ("com.microsoft", "FusedGemm"),
        ("com.microsoft", "FusedConv"),
        ("com.microsoft", "Attention"),
        ("com.microsoft", "MultiHeadAttention"),
        ("com.microsoft", "GroupQueryAttention"),
    }
)


@dataclasses.dataclass
class Row:
    """One model converted in one mode (or by one peer) and what its output did."""

    model: str
    mode: str
    exit_code: int | None = None  # mpcompile's exit status; None for peers
    error: str = ""  # the one-line error (mpcompile) or exception (peers, checks)
    checker: bool | None = None
    ort_runs: bool | None = None  # loads and runs on both samples
    cosine_ort: float | None = None  # min over outputs and samples, ORT CPU EP
    cosine_faithful: float | None = None  # min over outputs and samples, FP16-faithful
    tolerance_error: float | None = None  # worst error / limit of the mode's criterion (<= 1 passes)
    new_nonfinite: int | None = None
    low_flop_share: float | None = None
    casts_added: int | None = None
    seconds: float = 0.0
    auto_passed: bool | None = None  # what --auto reported for itself
    gpu_only: str = ""  # ops of a --target cuda output that only a CUDA build of ORT can run

    @property
    def target_cuda(self) -> bool:
        return self.mode in MODES and "cpu" not in MODES[self.mode]

    @property
    def converted(self) -> bool:
        return (self.exit_code == 0) if self.mode not in PEERS else not self.error

    @property
    def valid(self) -> bool:
        """Converted, and the output passes the checker and runs on both samples (or, for
        --target cuda, holds fused ops only ORT's CUDA provider has: not runnable here)."""
        return self.converted and bool(self.checker) and (bool(self.ort_runs) or bool(self.gpu_only))


@dataclasses.dataclass
class Reference:
    """The FP32 model's outputs on each sample: ORT CPU (default session) and faithful reference."""

    ort: list[dict[str, np.ndarray]]
    faithful: list[dict[str, np.ndarray]]
    casts: int


@dataclasses.dataclass
class Bench:
    """One corpus entry being converted: its samples, FP32 reference and scratch folder."""

    entry: corpus.Entry
    work: pathlib.Path
    sample_dir: pathlib.Path  # the samples as .npz files, for --auto --inputs
    samples: Sequence[Mapping[str, np.ndarray]]
    reference: Reference


# ---- one model ------------------------------------------------------------------------


def run_entry(entry: corpus.Entry, modes: Sequence[str], peers: Sequence[str]) -> list[Row]:
    """Every mode and peer on one corpus entry (a worker process's job)."""
    samples = entry.load_inputs()
    reference = _reference(entry.model_path, samples)
    rows = []
    with tempfile.TemporaryDirectory(prefix="real-models-") as folder:
        work = pathlib.Path(folder)
        sample_dir = work / "samples"
        sample_dir.mkdir()
        for index, path in enumerate(entry.input_paths):
            os.symlink(path, sample_dir / f"sample{index}.npz")
        bench = Bench(entry, work, sample_dir, samples, reference)
        rows += [_run_mode(bench, mode) for mode in modes]
        rows += [_run_peer(bench, peer) for peer in peers]
    return rows


def _reference(model_path: pathlib.Path, samples: Sequence[Mapping[str, np.ndarray]]) -> Reference:
    from mpcompile.evaluate import faithful

    session = _ort_session(str(model_path))
    names = [output.name for output in session.get_outputs()]
    ort_outputs = [dict(zip(names, session.run(None, dict(sample)), strict=True)) for sample in samples]
    faithful_session = faithful.ReferenceSession(str(model_path))
    faithful_outputs = [faithful_session.run(sample) for sample in samples]
    return Reference(
        ort_outputs, faithful_outputs, _count_casts(onnx.load(str(model_path), load_external_data=False))
    )


def _run_mode(bench: Bench, mode: str) -> Row:
    from mpcompile.cli import main

    row = Row(bench.entry.name, mode)
    output = bench.work / f"{mode}.onnx"
    arguments = [str(bench.sample_dir) if argument == SAMPLES else argument for argument in MODES[mode]]
    started = time.perf_counter()
    stderr = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
        row.exit_code = main(["convert", str(bench.entry.model_path), "-o", str(output), *arguments])
    row.seconds = time.perf_counter() - started
    if row.exit_code != 0:
        row.error = _last_error_line(stderr.getvalue())
        return row
    if mode.startswith("auto"):
        row.auto_passed = _auto_record(output).get("passed")
    _check_output(row, output, bench, _criterion(mode))
    return row


def _run_peer(bench: Bench, peer: str) -> Row:
    row = Row(bench.entry.name, peer)
    output = bench.work / f"{peer}.onnx"
    started = time.perf_counter()
    try:
        converted = PEER_CONVERTERS[peer](onnx.load(str(bench.entry.model_path)))
        onnx.save(converted, str(output))
    except Exception as exc:  # a peer's failure is a result to report, whatever its type
        row.error = f"{type(exc).__name__}: {_first_line(exc)}"
        return row
    finally:
        row.seconds = time.perf_counter() - started
    _check_output(row, output, bench, _criterion(peer))
    return row


def _onnxconverter_common(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxconverter_common import float16

    return float16.convert_float_to_float16(model, keep_io_types=True)


def _ort_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True)


PEER_CONVERTERS: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {
    "onnxconverter-common": _onnxconverter_common,
    "ort-float16": _ort_float16,
}


def _criterion(mode: str):
    """The mode's accuracy criterion: --auto's metric, else the default tolerance of the mode's
    low precision (``mpcompile validate``'s defaults)."""
    from mpcompile.auto.criteria import make_criterion

    if mode == "auto-cosine":
        return make_criterion(metric=f"cosine:{COSINE_METRIC}")
    return make_criterion(precision="bf16" if mode == "bf16" else "fp16")


def _check_output(row: Row, output: pathlib.Path, bench: Bench, criterion) -> None:
    """Fill the checks of ``row`` for the converted model at ``output``."""
    from mpcompile.evaluate import faithful

    samples, reference = bench.samples, bench.reference
    try:
        onnx.checker.check_model(str(output), full_check=True)
        row.checker = True
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        row.checker, row.error = False, f"checker: {_first_line(exc)}"
    proto = onnx.load(str(output))
    row.casts_added = _count_casts(proto) - reference.casts
    if row.checker:  # the audit needs a valid graph (peers' outputs may be out of topological order)
        row.low_flop_share = low_compute_share(proto, samples[0])
    try:
        session = _ort_session(str(output))
        declared = {value.name: value.type for value in session.get_inputs()}
        names = [value.name for value in session.get_outputs()]
        got = [
            dict(zip(names, session.run(None, _cast_feeds(sample, declared)), strict=True))
            for sample in samples
        ]
        row.ort_runs = True
    except Exception as exc:  # ORT's own error types; the row records them
        row.ort_runs = False
        row.error = row.error or f"onnxruntime: {_first_line(exc)}"
        row.gpu_only = _gpu_only_ops(proto, str(exc)) if row.target_cuda else ""
        return
    row.cosine_ort = _min_cosine(reference.ort, got)
    row.new_nonfinite = sum(_new_nonfinite(ref, out) for ref, out in zip(reference.ort, got, strict=True))
    try:
        faithful_session = faithful.FaithfulSession(proto)
        rounded = [faithful_session.run(_cast_feeds(sample, declared)) for sample in samples]
    except Exception as exc:  # ORT's own error types; the row records them
        row.error = row.error or f"faithful evaluation: {_first_line(exc)}"
        return
    rounded = [_widened(batch) for batch in rounded]
    row.cosine_faithful = _min_cosine(reference.faithful, rounded)
    row.new_nonfinite += sum(
        _new_nonfinite(ref, out) for ref, out in zip(reference.faithful, rounded, strict=True)
    )
    names = list(reference.faithful[0])
    check = criterion.check(
        [{name: batch[name] for name in names} for batch in reference.faithful],
        [{name: batch[name] for name in names} for batch in rounded],
    )
    row.tolerance_error = check.error / criterion.limit if criterion.limit else check.error


_NO_KERNEL = re.compile(r"Could not find an implementation for (\w+)\(")


def _gpu_only_ops(model: onnx.ModelProto, message: str) -> str:
    """The op ORT's CPU provider has no kernel for, when the CUDA kernel tables have one (a
    legitimate fusion for --target cuda that a CPU-only onnxruntime cannot load), else ""."""
    import onnx_ir as ir

    from mpcompile.targets import get_target

    match = _NO_KERNEL.search(message)
    if match is None:
        return ""
    op = match.group(1)
    domains = {node.domain for node in _all_nodes(model) if node.op_type == op}
    opsets = {entry.domain: entry.version for entry in model.opset_import}
    cuda, cpu = get_target("cuda"), get_target("cpu")
    for domain in domains:
        opset = opsets.get(domain, 1)
        floats = (ir.DataType.FLOAT, ir.DataType.FLOAT16)
        if any(cuda.supports(domain, op, opset, t) for t in floats) and not any(
            cpu.supports(domain, op, opset, t) for t in floats
        ):
            return op
    return ""


def _ort_session(path: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


_ORT_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


def _cast_feeds(sample: Mapping[str, np.ndarray], declared: Mapping[str, str]) -> dict[str, np.ndarray]:
    """The sample in the dtypes the converted model declares (FP16 inputs when the IO changed)."""
    feeds = {}
    for name, array in sample.items():
        if name not in declared:
            continue
        dtype = _ORT_NUMPY.get(declared[name])
        if declared[name] == "tensor(bfloat16)":
            dtype = _BFLOAT16
        feeds[name] = array.astype(dtype) if dtype is not None else array
    return feeds


def _widened(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """FP16/BF16 outputs as FP32 (exact), for comparison with the FP32 reference."""
    return {
        name: value.astype(np.float32) if value.dtype in (np.float16, _BFLOAT16) else value
        for name, value in batch.items()
    }


def _as_float64(array: np.ndarray) -> np.ndarray:
    return np.asarray(array).astype(np.float64).reshape(-1)


def _min_cosine(
    references: Sequence[Mapping[str, np.ndarray]], outputs: Sequence[Mapping[str, np.ndarray]]
) -> float:
    from mpcompile.auto.criteria import cosine_similarity

    worst = 1.0
    for ref_batch, out_batch in zip(references, outputs, strict=True):
        for name, ref in ref_batch.items():
            got = out_batch.get(name)
            if got is None or got.shape != ref.shape:
                return 0.0
            if ref.dtype.kind != "f":
                continue
            r, g = _as_float64(ref), _as_float64(got)
            finite = np.isfinite(r) & np.isfinite(g)
            worst = min(worst, cosine_similarity(r[finite], g[finite]) if finite.any() else 1.0)
    return worst


def _new_nonfinite(reference: Mapping[str, np.ndarray], output: Mapping[str, np.ndarray]) -> int:
    count = 0
    for name, ref in reference.items():
        got = output.get(name)
        if got is None or ref.dtype.kind != "f" or got.shape != ref.shape:
            continue
        count += int(np.sum(np.isfinite(_as_float64(ref)) & ~np.isfinite(_as_float64(got))))
    return count


def low_compute_share(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> float:
    """Share of the MatMul/Gemm/Conv FLOPs (fused forms included, every graph) in FP16/BF16."""
    import onnx_ir as ir

    from mpcompile.analysis.audit import audit_model
    from mpcompile.evaluate.shapes import ShapeSpec

    spec = ShapeSpec(feed_shapes={name: tuple(np.shape(array)) for name, array in feeds.items()})
    audit = audit_model(ir.from_proto(model), shapes=spec)
    compute = [node for node in audit.nodes if (node.domain or "", node.op_type) in COMPUTE_OPS]
    total = sum(node.flops or 0 for node in compute)
    low = sum(node.flops or 0 for node in compute if node.precision in ("fp16", "bf16"))
    return low / total if total else 0.0


def _all_nodes(model: onnx.ModelProto) -> Iterable[onnx.NodeProto]:
    pending = [model.graph, *(function for function in model.functions)]
    while pending:
        graph = pending.pop()
        for node in graph.node:
            yield node
            for attribute in node.attribute:
                pending.extend([attribute.g] if attribute.HasField("g") else [])
                pending.extend(attribute.graphs)


def _count_casts(model: onnx.ModelProto) -> int:
    return sum(node.op_type == "Cast" and node.domain in ("", "ai.onnx") for node in _all_nodes(model))


def _auto_record(path: pathlib.Path) -> dict[str, Any]:
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.metadata_props:
        if entry.key == "mpcompile.auto":
            return json.loads(entry.value)
    return {}


def _last_error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error:", "internal error"))]
    return (errors or lines or [""])[-1][:300]


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


# ---- the corpus -----------------------------------------------------------------------


def run_corpus(
    entries: Sequence[corpus.Entry],
    modes: Sequence[str] = tuple(MODES),
    peers: Sequence[str] = PEERS,
    *,
    jobs: int = 1,
    log: Callable[[str], None] = lambda line: None,
) -> list[Row]:
    """Every entry in every mode, ``jobs`` entries at a time (each in its own process)."""
    rows: list[Row] = []
    if jobs <= 1:
        for entry in entries:
            rows.extend(run_entry(entry, modes, peers))
            log(f"{entry.name}: done")
        return _ordered(rows, entries)
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, max_tasks_per_child=1) as pool:
        futures = {pool.submit(run_entry, entry, modes, peers): entry for entry in entries}
        for future in concurrent.futures.as_completed(futures):
            entry = futures[future]
            try:
                rows.extend(future.result())
            except Exception as exc:  # a crashed worker is a result: every mode of that model failed
                rows.extend(
                    Row(entry.name, mode, error=f"worker failed: {_first_line(exc)}") for mode in modes
                )
            log(f"{entry.name}: done")
    return _ordered(rows, entries)


def _ordered(rows: list[Row], entries: Sequence[corpus.Entry]) -> list[Row]:
    order = {entry.name: index for index, entry in enumerate(entries)}
    columns = {mode: index for index, mode in enumerate([*MODES, *PEERS])}
    return sorted(rows, key=lambda row: (order[row.model], columns[row.mode]))


def acceptance_problems(rows: Iterable[Row], entries: Sequence[corpus.Entry]) -> list[str]:
    """What issue 14's acceptance forbids: any mpcompile exit code but 0 (70 above all), an
    output that fails the checker or does not run on both samples, an --auto answer outside
    its tolerance under the faithful evaluation, or one with a smaller low-precision FLOP share
    than plain convert where plain convert met that tolerance. Peers are not judged."""
    rows = list(rows)
    by_key = {(row.model, row.mode): row for row in rows}
    problems = []
    for row in rows:
        if row.mode in PEERS:
            continue
        if row.exit_code != 0:
            problems.append(f"{row.model} [{row.mode}]: exit {row.exit_code}: {row.error}")
        elif not row.valid:
            problems.append(f"{row.model} [{row.mode}]: invalid output: {row.error}")
        elif row.mode in AUTO_MODES:
            if row.tolerance_error is None or row.tolerance_error > 1.0:
                problems.append(
                    f"{row.model} [{row.mode}]: misses its tolerance FP16-faithfully "
                    f"(error {_fmt(row.tolerance_error)} of the limit)"
                )
            plain = by_key.get((row.model, "convert"))
            if _below_plain(row, plain):
                problems.append(
                    f"{row.model} [{row.mode}]: low-precision FLOP share {_pct(row.low_flop_share)} "
                    f"below plain convert's {_pct(plain.low_flop_share)}, which meets the tolerance"
                )
    return problems


def _below_plain(row: Row, plain: Row | None) -> bool:
    """An --auto row with less low-precision compute than plain convert, where plain convert met
    the same criterion."""
    if plain is None or not plain.valid or not _plain_meets(plain, row.mode):
        return False
    return (row.low_flop_share or 0.0) + 1e-9 < (plain.low_flop_share or 0.0)


def _plain_meets(plain: Row, mode: str) -> bool:
    if plain.new_nonfinite:  # the cosine skips non-finite elements: new NaN/Inf never meet a criterion
        return False
    if mode == "auto-cosine":
        return plain.cosine_faithful is not None and plain.cosine_faithful >= COSINE_METRIC
    return plain.tolerance_error is not None and plain.tolerance_error <= 1.0


# ---- rendering ------------------------------------------------------------------------

COLUMNS = (
    "model",
    "mode",
    "result",
    "checker",
    "ORT runs (2 sizes)",
    "min cos ORT CPU",
    "min cos faithful",
    "error / limit (faithful)",
    "new NaN/Inf",
    "low-precision MatMul/Gemm/Conv FLOPs",
    "Casts added",
    "s",
)


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if math.isinf(value) or math.isnan(value):
        return str(value)
    return f"{value:.{digits}g}"


def _cosine(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _runs(row: Row) -> str:
    if row.gpu_only and not row.ort_runs:
        return f"CUDA only ({row.gpu_only})"
    return _yes(row.ort_runs)


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "**no**")


def _result(row: Row) -> str:
    if row.mode in PEERS:
        return "converts" if not row.error or row.checker is not None else f"**fails**: {row.error[:80]}"
    if row.exit_code == 0:
        return "exit 0" if row.auto_passed is not False else "exit 0 (auto: not met)"
    return f"**exit {row.exit_code}**"


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [
            row.model,
            row.mode,
            _result(row),
            _yes(row.checker),
            _runs(row),
            _cosine(row.cosine_ort),
            _cosine(row.cosine_faithful),
            _fmt(row.tolerance_error),
            "-" if row.new_nonfinite is None else str(row.new_nonfinite),
            _pct(row.low_flop_share),
            "-" if row.casts_added is None else str(row.casts_added),
            f"{row.seconds:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def failure_lines(rows: Sequence[Row]) -> list[str]:
    """Every row that did not give a valid output, with its cause."""
    return [
        f"- `{row.model}` [{row.mode}]: {row.error or 'no cause recorded'}" for row in rows if not row.valid
    ]


def summary_lines(rows: Sequence[Row]) -> list[str]:
    lines = []
    for mode in [*MODES, *PEERS]:
        chosen = [row for row in rows if row.mode == mode]
        if not chosen:
            continue
        valid = sum(row.valid for row in chosen)
        internal = sum(row.exit_code == 70 for row in chosen)
        met = sum(row.tolerance_error is not None and row.tolerance_error <= 1.0 for row in chosen)
        lines.append(
            f"| {mode} | {len(chosen)} | {valid} | {internal if mode not in PEERS else '-'} | {met} |"
        )
    return [
        "| mode | models | valid outputs | exit 70 | within tolerance (faithful) |",
        "|---|---|---|---|---|",
        *lines,
    ]


def document(
    rows: Sequence[Row],
    entries: Sequence[corpus.Entry],
    skipped: Sequence[corpus.Entry],
    command: str,
    seconds: float,
) -> str:
    """docs/real-models.md: how it was measured, the summary, the table, every failure."""
    import onnxruntime

    import mpcompile

    problems = acceptance_problems(rows, entries)
    versions = (
        f"mpcompile {getattr(mpcompile, '__version__', '?')}, onnx {onnx.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}"
    )
    parts = [
        "# Real exporter-built models",
        "",
        "Generated by `tools/real_models.py` (do not edit by hand). Command: "
        f"`{command}`; {len(entries)} corpus models, {seconds / 60:.1f} min on {os.cpu_count()} CPU cores; {versions}.",
        "",
        "The corpus (`models/corpus`, docs/corpus.md) holds Hugging Face `transformers` architectures",
        "and torchvision CNNs built from small seeded configs and exported with dynamic axes by",
        "`torch.onnx.export` (TorchScript and `dynamo=True`) and by optimum, each with two input samples",
        "of different sizes. Modes: "
        + "; ".join(
            f"`{mode}`: `mpcompile convert {' '.join(args) or '(defaults: fp16, --target cuda)'}`"
            for mode, args in MODES.items()
        )
        + ". `auto` and `auto-cosine` search on the corpus samples; `auto-generated` on generated inputs.",
        "Peers: onnxconverter-common `float16.convert_float_to_float16(keep_io_types=True)` and",
        "`onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)`.",
        "",
        "Numbers are measured on the CPU: ORT's CPU EP runs FP16 nodes that lack an FP16 kernel in FP32",
        "behind its own Casts, which hides FP16 overflow, so the **faithful** columns (every FP16/BF16",
        "node output rounded as a GPU stores it) are the judge. `error / limit` is the worst output's error",
        "against the mode's criterion (rtol = atol = 1e-2 for FP16, 5e-2 for BF16, `cosine:0.9999` for",
        "`auto-cosine`), at most 1 when it passes.",
        "",
        "## Acceptance",
        "",
        *(
            [
                "All checks pass: no mpcompile exit code but 0, every output passes the full checker and runs "
                "on both sizes, every --auto answer meets its tolerance with at least plain convert's FLOP share."
            ]
            if not problems
            else [f"- {problem}" for problem in problems]
        ),
        "",
        "## Summary",
        "",
        *summary_lines(rows),
        "",
        "## Every model and mode",
        "",
        markdown_table(rows),
        "",
        "## Failures and their causes",
        "",
        *(failure_lines(rows) or ["None."]),
        "",
        "## Outputs only a CUDA build of onnxruntime can run",
        "",
        "For `--target cuda`, ORT's fusions may create ops that only its CUDA provider has (T5's",
        "`RelativePositionBias`). They pass the full checker, but this CPU-only onnxruntime cannot load",
        "them, so they were not run: their accuracy is unmeasured until a GPU runs them.",
        "",
        *(
            [
                f"- `{row.model}` [{row.mode}]: {row.gpu_only}"
                for row in rows
                if row.gpu_only and not row.ort_runs
            ]
            or ["None."]
        ),
        "",
    ]
    if skipped:
        parts += [
            "## Corpus entries that did not export",
            "",
            *[f"- `{entry.name}` ({entry.exporter}): {entry.status}: {entry.cause}" for entry in skipped],
            "",
        ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=None, help="corpus folder (default .cache/corpus)")
    parser.add_argument("--only", nargs="*", default=(), help="entries whose name contains one of these")
    parser.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--markdown", help="write the document (docs/real-models.md) here")
    parser.add_argument("--json", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    every = corpus.load_manifest(args.corpus)
    chosen = [entry for entry in every if not args.only or any(part in entry.name for part in args.only)]
    entries = [entry for entry in chosen if entry.ok]
    skipped = [entry for entry in chosen if not entry.ok]
    started = time.perf_counter()
    rows = run_corpus(
        entries, args.modes, args.peers, jobs=args.jobs, log=lambda line: print(line, file=sys.stderr)
    )
    seconds = time.perf_counter() - started
    print(markdown_table(rows))
    problems = acceptance_problems(rows, entries)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if args.markdown:
        command = "python tools/real_models.py " + " ".join(argv if argv is not None else sys.argv[1:])
        path = pathlib.Path(args.markdown)
        text = document(rows, entries, skipped, command.strip(), seconds)
        path.write_text(text + _kept_sections(path))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps([dataclasses.asdict(row) for row in rows], indent=1))
    return 1 if problems else 0


def _kept_sections(path: pathlib.Path) -> str:
    """The sections other scripts or measurements wrote between ``<!-- NAME:begin ... -->`` and
    ``<!-- NAME:end -->`` markers (tools/deploy_folders.py's "Folders", the fused-graph results):
    kept on a rewrite."""
    previous = path.read_text() if path.is_file() else ""
    blocks = re.finditer(r"<!-- ([\w-]+):begin.*?<!-- \1:end -->", previous, flags=re.S)
    return "".join("\n" + block.group(0) + "\n" for block in blocks)


if __name__ == "__main__":
    sys.exit(main())
