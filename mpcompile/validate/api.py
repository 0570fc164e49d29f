"""``validate()``: run the original and the converted model on each EP and compare them."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from mpcompile import errors
from mpcompile.evaluate import inputs as model_inputs
from mpcompile.evaluate.accepted_inputs import run_accepting_inputs
from mpcompile.evaluate.load_probe import check_survives_loading
from mpcompile.evaluate.ort_session import (
    ModelLike,
    import_onnxruntime,
    to_ir_model,
)
from mpcompile.evaluate.run_memory import check_run_fits
from mpcompile.irtools.graphs import model_graphs
from mpcompile.validate import latency as latency_module
from mpcompile.validate.compare import OutputComparison, compare_output
from mpcompile.validate.interface import check_comparable
from mpcompile.validate.results import (
    MODE_FAITHFUL,
    MODE_NATIVE,
    ROLE_CONVERTED,
    ROLE_TRT_FP16_BASELINE,
    STATUS_FAILED,
    STATUS_PASSED,
    STATUS_SKIPPED,
    EpResult,
    Latency,
    ValidationResult,
)
from mpcompile.validate.runners import (
    CPU,
    GPU_EPS,
    SHORT_NAMES,
    TENSORRT,
    EpChoice,
    EpLoadError,
    FaithfulRunner,
    OrtRunner,
    choose_eps,
    parse_ep_option,
    provider_options,
    tensorrt_cache_folder,
)
from mpcompile.validate.tolerances import DEFAULT_TOLERANCES, Tolerance

Feeds = dict[str, np.ndarray]
InputsArg = str | os.PathLike | Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]] | None
ToleranceArg = float | Mapping[str, float] | Tolerance | None

DEFAULT_RUNS = 20
RUN_WHAT = "running the original model"
DEFAULT_WARMUP = 3


def validate(
    original: ModelLike,
    converted: ModelLike,
    *,
    eps: str | Sequence[str] | None = None,
    rtol: ToleranceArg = None,
    atol: ToleranceArg = None,
    inputs: InputsArg = None,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    batches: int = 1,
    runs: int = DEFAULT_RUNS,
    warmup: int = DEFAULT_WARMUP,
    faithful: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> ValidationResult:
    """Compare ``converted`` against the FP32 ``original`` on each execution provider.

    The reference is the original on the CPU EP. Each EP row runs the converted model
    (``faithful=None``: the CPU row is FP16-faithful when no GPU EP runs), and measures latency
    of both models on that EP (``runs`` timed after ``warmup``; ``runs=0`` skips latency).
    ``rtol``/``atol``: a number or ``{output: value}`` with ``""`` for the default; defaults
    depend on the low-precision type (``DEFAULT_TOLERANCES``). ``inputs``: an ``.npz`` file, a
    folder of them, a feed dict or a list of feed dicts; otherwise generated (``shapes``,
    ``seed``, ``batches``). The result is truthy when every converted-model row passes.
    """
    ort = import_onnxruntime()
    log = log or (lambda _line: None)
    if runs < 0 or warmup < 0:
        raise ValueError("runs and warmup must not be negative")
    original_ir = to_ir_model(original, copy=False)
    converted_ir = to_ir_model(converted, copy=False)
    check_comparable(original_ir, converted_ir, log)
    low_precision = detect_low_precision(converted_ir)
    default_rtol, default_atol = DEFAULT_TOLERANCES[low_precision]
    rtol_t = Tolerance.coerce(rtol, default_rtol, "--rtol")
    atol_t = Tolerance.coerce(atol, default_atol, "--atol")
    output_names = [value.name for value in original_ir.graph.outputs]
    rtol_t.check_names(output_names, "--rtol")
    atol_t.check_names(output_names, "--atol")
    feeds, inputs_info, specs = _prepare_inputs(original_ir, inputs, shapes, seed, batches)
    original_source = _session_source(original)
    converted_source = _session_source(converted)
    check_survives_loading({"the original model": original_source, "the converted model": converted_source})
    reference_runner = OrtRunner("original", original_source, CPU)
    reference_runner.activate()
    references, feeds, choice = run_accepting_inputs(
        original_ir,
        lambda batches: [reference_runner.infer(batch) for batch in batches],
        feeds,
        specs,
        shapes=shapes,
        seed=seed,
        what="the original model",
    )
    if choice is not None:
        inputs_info.update(_inputs_info(feeds, list(choice.specs)))
        inputs_info["chosen"] = choice.to_dict()
        if choice.free_dim is not None:
            inputs_info["free_dim"] = choice.free_dim

    requested = parse_ep_option([eps] if isinstance(eps, str) else eps)
    chosen, skipped = choose_eps(requested)
    context = _Context(
        original=original_source,
        converted=converted_source,
        converted_model=converted,
        feeds=feeds,
        converted_feeds=[model_inputs.cast_feeds(converted_ir, batch) for batch in feeds],
        output_names=output_names,
        rtol=rtol_t,
        atol=atol_t,
        runs=runs,
        warmup=warmup,
        log=log,
    )
    context.references = references

    result = ValidationResult(
        original=_describe(original),
        converted=_describe(converted),
        low_precision=low_precision,
        rtol=rtol_t.to_dict(),
        atol=atol_t.to_dict(),
        inputs=inputs_info,
        onnxruntime=ort.__version__,
    )
    gpu_ran = False
    with tensorrt_cache_folder() as cache_folder:
        for choice in [c for c in chosen if c.provider != CPU]:
            rows = _run_gpu_ep(context, choice, cache_folder)
            result.eps.extend(rows)
            gpu_ran = gpu_ran or any(row.status != STATUS_SKIPPED for row in rows)
    if any(choice.provider == CPU for choice in chosen):
        use_faithful = (not gpu_ran) if faithful is None else faithful
        result.eps.append(_run_cpu(context, reference_runner, use_faithful))
        if use_faithful:
            result.notes.append(
                "CPU accuracy is FP16-faithful: every FP16/BF16 node output is rounded as a GPU stores it; "
                "CPU latency is that of plain CPU EP sessions"
            )
        else:
            result.notes.append(
                "CPU accuracy is native ORT CPU: FP16 nodes without CPU kernels run in FP32, "
                "which can hide FP16 overflow"
            )
    for provider, reason in skipped.items():
        result.eps.append(EpResult(ep=SHORT_NAMES.get(provider, provider), provider=provider, reason=reason))
    return result


def detect_low_precision(model: ir.Model) -> str:
    """``fp16`` or ``bf16``: the converted model's stamp, else the types it holds."""
    stamped = model.metadata_props.get("mpcompile.low_precision")
    if stamped in DEFAULT_TOLERANCES:
        return stamped
    for graph in model_graphs(model):
        values = [*graph.initializers.values(), *(v for node in graph for v in node.outputs)]
        if any(value.dtype == ir.DataType.BFLOAT16 for value in values):
            return "bf16"
    return "fp16"


@dataclasses.dataclass
class _Context:
    """What every EP row needs; built once per ``validate`` call."""

    original: bytes | str  # what ORT loads (see _session_source)
    converted: bytes | str
    converted_model: ModelLike  # as given, for the faithful evaluator
    feeds: list[Feeds]  # per batch, in the original's input dtypes
    converted_feeds: list[Feeds]  # the same, cast to the converted model's input dtypes
    output_names: list[str]
    rtol: Tolerance
    atol: Tolerance
    runs: int
    warmup: int
    log: Callable[[str], None]
    references: list[dict[str, np.ndarray]] = dataclasses.field(default_factory=list)


def _run_gpu_ep(context: _Context, choice: EpChoice, cache_folder: str) -> list[EpResult]:
    provider = choice.provider
    options = provider_options(provider, cache_folder)
    row = EpResult(ep=choice.short_name, provider=provider, io_binding=True)
    try:
        original = _activated(OrtRunner("original", context.original, provider, options))
        converted = _activated(OrtRunner("converted", context.converted, provider, options))
    except EpLoadError as exc:
        if choice.explicit:
            raise errors.ExecutionProviderError(str(exc)) from None
        row.reason = str(exc)
        context.log(f"{exc}; skipping {choice.short_name}, CPU runs instead")
        return [row]
    _fill_row(context, row, converted, context.converted_feeds, original, timed=converted)
    rows = [row]
    if provider == TENSORRT:
        baseline_options = provider_options(provider, cache_folder, trt_fp16=True)
        baseline = EpResult(
            ep=choice.short_name, provider=provider, role=ROLE_TRT_FP16_BASELINE, io_binding=True
        )
        try:
            runner = _activated(OrtRunner("original+trt-fp16", context.original, provider, baseline_options))
        except EpLoadError as exc:
            baseline.reason = str(exc)
        else:
            _fill_row(context, baseline, runner, context.feeds, original, timed=runner)
        rows.append(baseline)
    return rows


def _run_cpu(context: _Context, reference_runner: OrtRunner, faithful: bool) -> EpResult:
    row = EpResult(ep="cpu", provider=CPU, accuracy_mode=MODE_FAITHFUL if faithful else MODE_NATIVE)
    if not faithful:
        converted = _activated(OrtRunner("converted", context.converted, CPU))
        _fill_row(context, row, converted, context.converted_feeds, reference_runner, timed=converted)
        return row
    accuracy = _activated(FaithfulRunner("converted (faithful)", context.converted_model))
    try:
        timed = _activated(OrtRunner("converted", context.converted, CPU))
    except errors.InvalidModelError as exc:
        # BF16 nodes: the CPU EP has no kernels for them, but faithful evaluation still runs.
        # Any other load failure (a malformed model) stays an error.
        if "NOT_IMPLEMENTED" not in exc.message:
            raise
        timed = None
        row.reason = (
            f"converted model does not run natively on the CPU EP, latency not measured ({exc.message})"
        )
        context.log(row.reason)
    _fill_row(context, row, accuracy, context.converted_feeds, reference_runner, timed=timed)
    return row


def _activated(runner):
    runner.activate()
    return runner


def _fill_row(
    context: _Context, row: EpResult, candidate, candidate_feeds, original_runner, *, timed
) -> None:
    """Compare ``candidate``'s outputs with the references; time the original and ``timed`` (if any)."""
    outputs = [candidate.infer(batch) for batch in candidate_feeds]
    row.outputs = [_compare(context, name, outputs) for name in context.output_names]
    row.status = STATUS_PASSED if all(row.outputs) else STATUS_FAILED
    if context.runs == 0:
        return
    measure = functools.partial(latency_module.measure, runs=context.runs, warmup=context.warmup)
    row.latency = Latency(original=measure(original_runner.timer(context.feeds[0])))
    if timed is not None:
        timed_feeds = context.feeds[0] if row.role == ROLE_TRT_FP16_BASELINE else candidate_feeds[0]
        row.latency.converted = measure(timed.timer(timed_feeds))
        row.latency.speedup = latency_module.speedup(row.latency.original, row.latency.converted)


def _compare(context: _Context, name: str, outputs: list[dict[str, np.ndarray]]) -> OutputComparison:
    rtol, atol = context.rtol.for_output(name), context.atol.for_output(name)
    if any(name not in batch for batch in outputs):
        reference = context.references[0][name]
        return OutputComparison(
            name=name,
            shape=list(reference.shape),
            dtype="missing",
            reference_dtype=str(reference.dtype),
            rtol=rtol,
            atol=atol,
            failure="output missing from the converted model",
        )
    references = [batch[name] for batch in context.references]
    return compare_output(name, references, [batch[name] for batch in outputs], rtol=rtol, atol=atol)


def _prepare_inputs(
    model: ir.Model,
    inputs: InputsArg,
    shapes: Mapping[str, Sequence[int]] | None,
    seed: int,
    batches: int,
) -> tuple[list[Feeds], dict, list[model_inputs.InputSpec] | None]:
    """The feeds, their description for the result, and how they were generated (None: given)."""
    if inputs is None:
        specs = model_inputs.input_specs(model, shapes)
        check_run_fits(model, {spec.name: spec.shape for spec in specs}, RUN_WHAT)  # before generating
        feeds = [model_inputs.generate_from_specs(specs, seed=seed, batch_index=i) for i in range(batches)]
        info = {"source": "generated", "seed": seed, **_inputs_info(feeds, specs)}
        return feeds, info, specs
    feeds, source = model_inputs.given_inputs(model, inputs)
    check_run_fits(model, {name: np.shape(array) for name, array in feeds[0].items()}, RUN_WHAT)
    return feeds, {"source": source, "seed": None, **_inputs_info(feeds, None)}, None


def _inputs_info(feeds: list[Feeds], specs: list[model_inputs.InputSpec] | None) -> dict:
    return {
        "specs": None if specs is None else [spec.to_dict() for spec in specs],
        "batches": len(feeds),
        "shapes": {name: list(np.shape(array)) for name, array in feeds[0].items()},
    }


def _session_source(model: ModelLike) -> bytes | str:
    """What ORT loads: a path as is (external data resolves), otherwise serialized bytes."""
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(os.path.abspath(model))
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    copy = model.clone()
    ir.external_data.load_to_model(copy)
    return ir.to_proto(copy).SerializeToString()


def _describe(model: ModelLike) -> str:
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    return f"<in-memory {type(model).__name__}>"


__all__ = ["DEFAULT_RUNS", "DEFAULT_WARMUP", "GPU_EPS", "ROLE_CONVERTED", "detect_low_precision", "validate"]
