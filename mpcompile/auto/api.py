"""``auto_convert``: as much low precision as the accuracy tolerance allows (``convert --auto``).

1. One FP32 reference run with every intermediate exposed; the range rules
   (``mpcompile.analysis.range_rules``) keep the clearly unsafe nodes FP32 up front (``auto:range``).
2. The conversion with those nodes kept FP32 runs once FP16-faithfully with its intermediates
   exposed; if it meets the tolerance, that is the answer.
3. Otherwise the search (``mpcompile.auto.search``) finds which low-precision regions and
   nodes must stay FP32 (``auto:sensitivity``), within a budget of evaluations.

The answer is a normal mpcompile conversion: the core keeps the chosen nodes FP32 through
``node_overrides`` (exact names), stamped with the ``auto:*`` reasons and rules given there, and
the search trace is saved in the model metadata (``mpcompile.auto``, see docs/auto.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from mpcompile import errors
from mpcompile.analysis.range_rules import RangeFinding, RangeRules, find_unsafe_nodes
from mpcompile.auto import DEFAULT_BUDGET
from mpcompile.auto.criteria import Criterion, CriterionError, make_criterion, output_criterion
from mpcompile.auto.evaluator import Evaluator, low_precision_nodes
from mpcompile.auto.feeds import InputsLike, resolve_feeds
from mpcompile.auto.flops import node_flops
from mpcompile.auto.fp32_warning import fp32_heavy_warning
from mpcompile.auto.graph import main_nodes, name_nodes
from mpcompile.auto.progress import INPUTS, ProgressCallback
from mpcompile.auto.reasons import AUTO_RANGE, AUTO_SENSITIVITY
from mpcompile.auto.search import Search
from mpcompile.auto.trace import TRACE_KEY, TRACE_VERSION, SearchStep, jsonable
from mpcompile.compiler.converter import (
    ConvertOptions,
    ConvertResult,
    OpenedConversion,
    open_conversion,
    save_conversion,
    to_ir_model,
)
from mpcompile.core.plan import Decision
from mpcompile.core.precision import LowPrecisionFormat, Precision, low_precision_format
from mpcompile.evaluate import implied_sizes
from mpcompile.evaluate.accepted_inputs import run_accepting_inputs
from mpcompile.evaluate.inputs import InputSpec, input_specs, model_inputs
from mpcompile.evaluate.load_probe import LoadProbe
from mpcompile.evaluate.ort_session import serialize_for_session
from mpcompile.passes.infer_types import infer_once
from mpcompile.passes.range_run import range_run
from mpcompile.policy import op_classes

MIN_BUDGET = 2  # the reference run and one candidate


@dataclasses.dataclass
class AutoResult:
    """The converted model (same kind as given; ``ir.Model`` for a path) and how it was found."""

    model: Any
    convert_result: ConvertResult
    criterion: Criterion
    passed: bool
    error: float  # the final candidate's error (comparable to ``criterion.limit``)
    evaluations: int  # model runs: reference, candidates, the answer's confirmation
    budget: int
    fp16_flop_share: float
    range_blocked: dict[str, str]  # node -> finding, reason auto:range
    sensitivity_blocked: dict[str, str]  # node -> why, reason auto:sensitivity
    trace: list[SearchStep]
    inputs: str
    seconds: float
    notes: list[str] = dataclasses.field(default_factory=list)
    measured_ops: tuple[str, ...] = ()  # block-list ops made candidates (empty: static_blocks)
    sessions: int = 0  # ONNX Runtime session builds
    measured_casts: bool = False  # Casts from integers were candidates (False: static_blocks)
    warnings: list[str] = dataclasses.field(default_factory=list)  # fp32_warning: most heavy FLOPs FP32

    def __bool__(self) -> bool:
        return self.passed

    @property
    def plan(self):
        return self.convert_result.plan

    def to_dict(self) -> dict[str, Any]:
        """The record saved in the model metadata under ``mpcompile.auto`` (docs/auto.md); no
        timings, so two runs on the same model and inputs write identical files."""
        return {
            "version": TRACE_VERSION,
            "criterion": self.criterion.to_dict(),
            "inputs": self.inputs,
            "budget": self.budget,
            "evaluations": self.evaluations,
            "sessions": self.sessions,
            "passed": self.passed,
            "error": jsonable(self.error),
            "limit": self.criterion.limit,
            "fp16_flop_share": self.fp16_flop_share,
            "measured_ops": list(self.measured_ops),
            "measured_casts": self.measured_casts,
            "range_blocked": dict(sorted(self.range_blocked.items())),
            "sensitivity_blocked": dict(sorted(self.sensitivity_blocked.items())),
            "steps": [step.to_dict() for step in self.trace],
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary: the conversion's plus the ``auto`` record."""
        return {
            **self.convert_result.summary(),
            "auto": {**self.to_dict(), "seconds": round(self.seconds, 3)},
        }


def auto_convert(
    model: onnx.ModelProto | ir.Model | str | os.PathLike | OpenedConversion,
    *,
    inputs: InputsLike = None,
    rtol: float | None = None,
    atol: float | None = None,
    metric: str | None = None,
    budget: int = DEFAULT_BUDGET,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    rules: RangeRules | None = None,
    static_blocks: bool = False,
    switchboard: bool = True,
    options: ConvertOptions | None = None,
    progress: ProgressCallback | None = None,
    acceptance: Callable[[ir.Model], str] | None = None,
    inputs_label: str | None = None,
    **convert_options: Any,
) -> AutoResult:
    """Convert ``model`` with the most low-precision FLOPs that keep its outputs within tolerance.

    ``inputs``: None/"generated", an .npz path (or folder), a feed dict or a list of them.
    Criterion: ``rtol``/``atol`` per element (either given; the other defaults to 1e-2 for fp16),
    ``metric`` ("cosine:0.9999", "rel-l2:1e-3", "max-abs:0.05") for every output, or by default
    a measure per output (``criteria.output_criterion``: logits by cosine and top-k agreement,
    other outputs by relative L2 error). ``budget``: most model evaluations (runs of the reference
    or of a candidate over every batch), the reference included; confirming the answer in its
    own session is one more. ``switchboard``: run the search's later candidates in one shared
    session (``mpcompile.auto.switchboard``; False: a session per candidate, same results).
    ``static_blocks``: keep every op of the core's block list FP32;
    by default the measurable ones (``op_classes.MEASURABLE``: Exp, Pow, Log, reductions, ...)
    are candidates like follow ops, decided by the range rules and the search (user
    ``block_ops``/``block_nodes``/policy files still win), and so are Casts from integers to
    float (``measured_casts``: the Cast of a 0/1 attention mask goes to FP16; other integers
    stay FP32); ``static_blocks`` turns both off. ``progress``: called after every evaluation
    (``mpcompile.auto.progress``: the CLI's progress bar). ``acceptance``: a candidate that meets
    the criterion passes only if ``acceptance(candidate)`` returns "" (else why not): a folder's
    greedy generation (``mpcompile.commands.auto_folder``). ``inputs_label``: where ``inputs`` came from,
    for the record. ``options`` (a ``ConvertOptions``) and the
    other keyword arguments are ``mpcompile.convert`` options, as ``mpcompile.convert`` takes them. ``model`` may also be an ``OpenedConversion``
    (``auto_convert_file``): a model loaded and checked already, searched in place.
    """
    started = time.perf_counter()
    options = ConvertOptions.build(options, **convert_options).resolved()  # unknown options fail here
    if not static_blocks and "measured_ops" not in convert_options and not options.measured_ops:
        options = dataclasses.replace(options, measured_ops=measured_op_names())
    if not static_blocks and "measured_casts" not in convert_options:
        options = dataclasses.replace(options, measured_casts=True)
    criterion = make_criterion(rtol=rtol, atol=atol, metric=metric, precision=options.precision)
    if budget < MIN_BUDGET:
        raise CriterionError(
            f"--budget {budget}: at least {MIN_BUDGET} evaluations (reference and one candidate)"
        )
    work, kind = _working_copy(model)
    if metric is None and rtol is None and atol is None:  # the default: a measure per output
        criterion = default_criterion(work, str(options.precision))
    if options.optimize:  # optimise once up front, so every candidate shares the optimised graph's names
        from mpcompile.passes.optimize import optimize
        from mpcompile.targets import get_target

        target = get_target(options.target) if isinstance(options.target, str) else options.target
        work, _ = optimize(
            work, options.optimize, target, low_precision_format(str(options.precision)).precision.value
        )
        options = dataclasses.replace(options, optimize=None)
    renamed = name_nodes(work)
    infer_once(work)  # the FP32 typing every candidate's conversion shares
    feeds, label, specs = resolve_feeds(work, inputs, shapes=shapes, seed=seed)
    label = inputs_label or label
    evaluator = Evaluator(work, feeds, criterion, options, budget, switchboard=switchboard)
    evaluator.on_evaluation = progress
    evaluator.acceptance = acceptance

    baseline = evaluator.baseline()
    if baseline.already_converted:
        raise errors.AlreadyLowPrecisionError(f"{baseline.notes[-1]}; nothing to do")
    # ONNX Runtime loads both in a child while the reference is serialized; the first session waits.
    probe = LoadProbe(
        {
            "the FP32 model": serialize_for_session(work),
            "its conversion": serialize_for_session(baseline.model),
        }
    )
    evaluator.before_session = probe.wait
    nodes = main_nodes(work)
    try:
        reference, label = _reference_run(evaluator, work, label, specs, shapes, seed)
        probe.wait()
    finally:
        probe.close()
    feeds = evaluator.feeds
    evaluator.set_flops(node_flops(work, feeds[0], reference[0]))
    values: dict[str, list] = {}
    for batch_feeds, batch_values in zip(feeds, reference, strict=True):
        for name, array in [*batch_feeds.items(), *batch_values.items()]:
            values.setdefault(name, []).append(array)
    baseline_low = low_precision_nodes(baseline.model)
    candidates = [name for name in nodes if name in baseline_low]
    relative_budget = criterion.relative_budget(evaluator.reference_outputs)
    findings = find_unsafe_nodes(
        nodes, candidates, values, low_precision_format(baseline.precision), rules or RangeRules(),
        work.opset_imports.get("", 0), relative_budget,
    )  # fmt: skip
    deployed_note = ""
    if specs is not None:  # generated inputs: ranges at the deployed image size too
        deployed, deployed_note = _deployment_findings(
            work, feeds, shapes, low_precision_format(baseline.precision), candidates, seed
        )
        findings = {**deployed, **findings}

    search = Search(
        evaluator, nodes, frozenset(findings), candidates,
        fmt=low_precision_format(baseline.precision), relative_budget=relative_budget,
        relaxable=frozenset(name for name, finding in findings.items() if finding.rule == "underflow"),
    )  # fmt: skip
    search.record_reference()
    outcome = search.run(
        [{**batch_feeds, **batch_values} for batch_feeds, batch_values in zip(feeds, reference, strict=True)]
    )
    best = outcome.best

    range_why = {name: finding.describe() for name, finding in findings.items() if name in best.blocked}
    decisions = {
        name: Decision(Precision.FP32, AUTO_SENSITIVITY, why) for name, why in outcome.blocked_why.items()
    }
    decisions.update((name, Decision(Precision.FP32, AUTO_RANGE, why)) for name, why in range_why.items())
    # auto_convert_file checks the file it saves (as convert_file does): not the model here too
    checked_on_save = isinstance(model, OpenedConversion) and options.verify
    final = evaluator.convert(
        best.blocked, verify=True, static=best.static, decisions=decisions, check=not checked_on_save
    )
    warning = fp32_heavy_warning(final.model, criterion, budget_spent=search.exhausted)
    notes = list(outcome.notes)
    if deployed_note:
        notes.append(deployed_note)
    if renamed:
        notes.append(
            f"{renamed} unnamed or duplicate node name(s) given unique names (auto/<OpType>_<index>)"
        )
    result = AutoResult(
        model=final.model,
        convert_result=final,
        criterion=criterion,
        passed=best.passed,
        error=best.check.error,
        evaluations=evaluator.evaluations,
        sessions=evaluator.sessions,
        budget=budget,
        fp16_flop_share=best.fp16_flop_share,
        range_blocked=range_why,
        sensitivity_blocked=dict(outcome.blocked_why),
        trace=outcome.steps,
        inputs=label,
        seconds=time.perf_counter() - started,
        notes=notes,
        measured_ops=() if best.static else tuple(options.measured_ops),
        measured_casts=options.measured_casts and not best.static,
        warnings=[warning] if warning else [],
    )
    final.model.metadata_props[TRACE_KEY] = json.dumps(result.to_dict(), sort_keys=True)
    final.notes.extend(notes)
    if kind == "proto":
        result.model = ir.to_proto(final.model)
        final.model = result.model
    return result


def auto_convert_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    overwrite: bool = False,
    external_data: bool | str | None = None,
    **auto_options: Any,
) -> AutoResult:
    """``auto_convert`` of the model at ``input_path``, saved atomically at ``output_path``: the
    same input checks, output-is-input guard and checked save as ``convert_file``. The search
    reads every weight into memory first, so ``overwrite`` may replace the input's own files."""
    opened = open_conversion(input_path, output_path, overwrite=overwrite, external_data=external_data)
    result = auto_convert(opened, **auto_options)
    options = auto_options.get("options")
    verify = auto_options.get("verify", options.verify if options is not None else True) is not False
    save_conversion(result.model, opened, external_data=external_data, verify=verify, notes=result.notes)
    return result


def _reference_run(
    evaluator: Evaluator,
    model: ir.Model,
    label: str,
    specs: list[InputSpec] | None,
    shapes: Mapping[str, Sequence[int]] | None,
    seed: int,
) -> tuple[list[dict[str, Any]], str]:
    """The reference run and the inputs' label; generated inputs the model rejects grow their
    sizes on the same session (``accepted_inputs.run_accepting_inputs``)."""

    def run(feeds: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if feeds is not evaluator.feeds:
            evaluator.use_feeds(feeds)
            evaluator.report(INPUTS)  # a retry: the progress bar says why it waits
        return evaluator.run_reference()

    reference, _, choice = run_accepting_inputs(model, run, evaluator.feeds, specs, shapes=shapes, seed=seed)
    if choice is not None:
        label = f"{label}; {choice.describe()}, as the model rejects the default inputs"
    return reference, label


def default_criterion(model: ir.Model, precision: str) -> Criterion:
    """``criteria.output_criterion`` for the model's graph outputs (logits or values), judged
    from the graph as loaded (before any ``--optimize`` fusion renames producers)."""
    outputs = []
    for value in model.graph.outputs:
        shape = (
            None if value.shape is None else [dim if isinstance(dim, int) else None for dim in value.shape]
        )
        is_float = value.dtype is not None and value.dtype.is_floating_point()
        producer = value.producer()
        outputs.append((value.name, is_float, shape, None if producer is None else producer.op_type))
    return output_criterion(outputs, precision)


def measured_op_names() -> tuple[str, ...]:
    """The core's BLOCK-list ops that ``--auto`` measures instead of blocking (``domain::Op``)."""
    return tuple(sorted(f"{domain}::{op}" if domain else op for domain, op in op_classes.MEASURABLE))


def _deployment_findings(
    model: ir.Model,
    feeds: Sequence[Mapping[str, Any]],
    shapes: Mapping[str, Sequence[int]] | None,
    low: LowPrecisionFormat,
    candidates: Sequence[str],
    seed: int,
) -> tuple[dict[str, RangeFinding], str]:
    """Range findings of one more FP32 run (plain convert's range run) with the image inputs at
    the size the model is deployed at, when the generated feeds are smaller: sums over the
    pixels of a small generated image stay in range where 224x224 overflows (efficientvit's
    linear attention). ``({}, "")`` when the feeds already have that size or it has no image input."""
    dims, _ = implied_sizes.deployment_image_dims(model, model_inputs(model), given=shapes or {})
    if not dims:
        return {}, ""
    deployed = input_specs(model, shapes, dims=dims)
    if all(tuple(np.shape(feeds[0][spec.name])) == spec.shape for spec in deployed if spec.name in feeds[0]):
        return {}, ""
    run = range_run(model, low, lambda: candidates, seed=seed)
    return run.findings, run.note


def _working_copy(
    model: onnx.ModelProto | ir.Model | str | os.PathLike | OpenedConversion,
) -> tuple[ir.Model, str]:
    if isinstance(model, OpenedConversion):
        working, kind = model.model, "path"
    else:
        working, kind = to_ir_model(model)
    if kind == "path":
        ir.external_data.load_to_model(working)  # every candidate is serialized for a session
    return working, kind
