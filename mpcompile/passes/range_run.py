"""Plain convert's range run: ``--auto``'s range rules on one FP32 run of generated inputs, no search.

When onnxruntime is installed and the target format is narrower than FP32 in range (FP16),
``convert`` runs the FP32 model once on CPU, on inputs generated from its signature, image inputs
at the size the model is deployed at (``implied_sizes.deployment_image_dims``: 224 unless it
implies another), other sizes as it implies them (``mpcompile.evaluate.accepted_inputs``), with
every main-graph intermediate exposed.
A node the static rules put in low precision stays FP32 (reason ``range-measured``) when the
run shows one of its non-constant float inputs or outputs beyond half the format's maximum
(``overflow``), a kernel accumulator beyond it (``accumulator``), or a reduction deeper than
``REDUCTION_DEPTH`` (``deep-reduction``): ``mpcompile.analysis.range_rules``. Every reader of a
value beyond range is checked too, so no such value is handed to a low-precision reader of the
main graph (openwakeword's melspectrogram, the linear attention ``q @ (kᵀv)`` of timm's
efficientvit).

Left to ``--auto``, which weighs them against a tolerance: the underflow rule (it costs
accuracy, not finiteness), the cancellation rule (it needs a tolerance) and the integer-cast
rule (plain convert's integer Casts follow ``policy/integer_casts.py``).

The run is skipped with a note, never an error, when onnxruntime is missing, when the model is
above ``MAX_WEIGHT_BYTES`` (256 MiB: ONNX Runtime's FP32 copy of the weights would break the
streaming conversion's memory bound), when the run would need more
memory than the limit (``mpcompile.evaluate.memory_limit``), or when no generated input runs
within ``RETRY_SECONDS`` (then the static rules alone decide). ``--static`` / ``static=True``
skips it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Collection, Mapping
from types import SimpleNamespace

import onnx
import onnx_ir as ir

from mpcompile import errors
from mpcompile.analysis.range_rules import RangeFinding, RangeRules, find_unsafe_nodes
from mpcompile.core.plan import Decision, Reason
from mpcompile.core.precision import LowPrecisionFormat, Precision
from mpcompile.io import model_io
from mpcompile.passes.base import ConversionPass
from mpcompile.passes.context import ConversionContext, ConvertStats
from mpcompile.policy import range_propagation

# The underflow rule is off (inf); the cancellation rule is off by the infinite budget below.
RULES = RangeRules(underflow_mass=math.inf)
LEFT_TO_AUTO = frozenset({"integer-cast", "underflow", "cancellation", "cancellation-input"})
RETRY_SECONDS = 10.0  # generated inputs the model rejects: new sizes tried for at most this long
MAX_TRIES = 8
# Above this the session's FP32 copy of the weights would break streaming conversion's memory
# bound (peak below weights + their FP16 copy: tests/test_large_model.py); --auto measures instead.
MAX_WEIGHT_BYTES = 256 << 20
NAMES_SHOWN = 5
STATIC_HINT = "--static skips it"


@dataclasses.dataclass
class RangeRun:
    """What the range run kept FP32 (by node name) and the note saying so ('' when none)."""

    decisions: dict[str, Decision] = dataclasses.field(default_factory=dict)
    note: str = ""
    seconds: float = 0.0
    findings: dict[str, RangeFinding] = dataclasses.field(default_factory=dict)  # what decided them


@dataclasses.dataclass
class LoadedProto:
    """The protobuf a model was deserialized from (``model_io.load_model_and_proto``), held for
    the range run, which takes it (so it is freed after) and evaluates it instead of
    serializing the IR again when the graph is still the loaded one."""

    proto: onnx.ModelProto | None

    def take(self) -> onnx.ModelProto | None:
        proto, self.proto = self.proto, None
        return proto


def range_run(
    model: ir.Model,
    low: LowPrecisionFormat,
    low_nodes: Callable[[], Collection[str]],
    *,
    seed: int = 0,
    loaded: LoadedProto | None = None,
) -> RangeRun:
    """Run ``model`` (FP32, not modified) once on generated inputs and keep FP32 the nodes of
    ``low_nodes()`` (the static conversion's low-precision main-graph nodes) that the range rules
    find unsafe; see the module docstring for when it is skipped. ``low_nodes`` is called only
    when the rules find something (``measured_findings``): most models have nothing to keep.
    ``loaded``: the protobuf ``model`` was loaded from, taken and evaluated where it still
    describes the model (``faithful.reference_from_loaded``)."""
    if not range_propagation.needed(low):
        return RangeRun()
    started = time.perf_counter()
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return RangeRun(note="range run skipped (static rules only): onnxruntime is not installed")
    if model_io.weight_bytes(model) > MAX_WEIGHT_BYTES:
        return RangeRun(
            note=f"range run skipped (static rules only): weights above {MAX_WEIGHT_BYTES >> 20} MiB "
            "(memory); --auto measures ranges on any size"
        )
    try:
        values, label = _reference_values(model, seed, loaded)
    except Exception as exc:  # the static rules decide instead: never an error
        return RangeRun(note=f"range run skipped (static rules only): {_first_line(exc)}")
    kept = measured_findings(model, values, low)
    if kept:  # the (costly) static low-precision set is needed only when something was measured
        low_set = set(low_nodes())
        kept = {name: finding for name, finding in kept.items() if name in low_set}
    seconds = time.perf_counter() - started
    decisions = {name: range_decision(finding) for name, finding in kept.items()}
    return RangeRun(decisions, kept_note(kept, label, low, seconds), seconds, kept)


def measured_findings(
    model: ir.Model, values: Mapping[str, list], low: LowPrecisionFormat
) -> dict[str, RangeFinding]:
    """The findings the range run acts on, for every named main-graph node in graph order, low
    precision or not: those the rules of ``LEFT_TO_AUTO`` and additive masks leave out.

    A node's finding does not depend on which nodes are candidates (only the cancellation-input
    rule does, and it is left to ``--auto``), so restricting these to the low-precision nodes
    afterwards gives what ``find_unsafe_nodes`` gives on those nodes alone."""
    nodes = {node.name: node for node in model.graph if node.name}
    findings = find_unsafe_nodes(
        nodes, list(nodes), values, low, RULES, model.opset_imports.get("", 0), relative_budget=math.inf
    )
    masks = _additive_masks(model, findings, values, RULES.overflow_fraction * low.max)
    return {
        name: finding
        for name, finding in findings.items()
        if finding.rule not in LEFT_TO_AUTO and finding.value not in masks
    }


class RangeRunPass(ConversionPass):
    """The range run as the pass after ``OrtLoadablePass`` (the graph as optimised and named):
    fills ``overrides`` (which the context's ``node_overrides`` reads after the caller's own)
    with the nodes it keeps FP32, and adds its note."""

    def __init__(
        self,
        context: ConversionContext,
        overrides: dict[str, Decision],
        loaded: LoadedProto | None = None,
    ):
        super().__init__(context)
        self.overrides = overrides
        self.loaded = loaded

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        run = range_run(
            model, self.context.low, lambda: static_low_nodes(model, self.context), loaded=self.loaded
        )
        if self.loaded is not None:
            self.loaded.take()  # a run skipped left it: freed before the passes that follow
        if run.note:
            self.context.notes.append(run.note)
        self.overrides.update(run.decisions)
        return ir.passes.PassResult(model, modified=False)


def static_low_nodes(model: ir.Model, context: ConversionContext) -> set[str]:
    """The main-graph nodes the static paint alone puts in low precision (a trial paint whose
    stats and notes are dropped)."""
    from mpcompile.core.plan import PrecisionPlan
    from mpcompile.core.ranges import ConstantRanges
    from mpcompile.passes.assign_precision import AssignPrecisionPass
    from mpcompile.passes.infer_types import InferTypesPass

    trial = dataclasses.replace(context, stats=ConvertStats(), notes=[])
    plan = PrecisionPlan(ranges=ConstantRanges(context.low))
    try:
        AssignPrecisionPass(trial, plan)(InferTypesPass(trial)(model).model)
        return {node.name for node, decision in plan.items() if decision.is_low and node.graph is model.graph}
    finally:
        plan.close()


def range_decision(finding: RangeFinding) -> Decision:
    """The decision stamped on a node the range run keeps FP32: reason ``range-measured``, the
    rule and what it measured."""
    return Decision(Precision.FP32, Reason.RANGE_MEASURED, f"{finding.rule}: {finding.describe()}")


def kept_note(kept: Mapping[str, RangeFinding], label: str, low: LowPrecisionFormat, seconds: float) -> str:
    """``range run (generated inputs, seed 0; 0.3 s): 2 node(s) kept FP32 ...`` ('' when none)."""
    if not kept:
        return ""
    names = sorted(kept)
    shown = "; ".join(f"{name} ({kept[name].describe()})" for name in names[:NAMES_SHOWN])
    more = f"; and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else ""
    return (
        f"range run ({label}, {seconds:.1f} s): {len(names)} node(s) kept FP32 as their values leave "
        f"{low.precision.value} range (reason range-measured): {shown}{more}; {STATIC_HINT}"
    )


def _additive_masks(
    model: ir.Model, findings: Mapping[str, RangeFinding], values: Mapping[str, list], limit: float
) -> set[str]:
    """Values behind overflow findings that are additive attention masks: beyond range only
    below zero (``finfo.min``, -1e9) and reaching a Softmax through mask-path ops
    (``policy.attention_mask``). In FP16 they become -inf and the Softmax gives the same 0, as
    the static rules already convert them, so the range run leaves them alone."""
    import numpy as np

    from mpcompile.policy.attention_mask import mask_softmaxes

    by_name = {value.name: value for node in model.graph for value in node.outputs}
    by_name.update((value.name, value) for value in model.graph.inputs)
    masks: set[str] = set()
    for finding in findings.values():
        value = by_name.get(finding.value)
        if finding.rule != "overflow" or value is None or finding.value in masks:
            continue
        if any(
            np.nanmax(np.asarray(array, dtype=np.float64), initial=-np.inf) > limit
            for array in values[finding.value]
        ):
            continue  # a positive value beyond range: a real overflow
        if mask_softmaxes(value, SimpleNamespace(overflowing_positive=False), lambda node: True):
            masks.add(finding.value)
    return masks


def _reference_values(
    model: ir.Model, seed: int, loaded: LoadedProto | None = None
) -> tuple[dict[str, list], str]:
    """Every main-graph value of one FP32 run on generated inputs (one batch), and the inputs' label."""
    from mpcompile.evaluate import implied_sizes, memory_limit
    from mpcompile.evaluate import inputs as inputs_module
    from mpcompile.evaluate.accepted_inputs import run_accepting_inputs
    from mpcompile.evaluate.faithful import ReferenceSession, reference_from_loaded, serialize_reference
    from mpcompile.evaluate.run_memory import run_bytes

    dims, why = implied_sizes.deployment_image_dims(model, inputs_module.model_inputs(model))
    specs = inputs_module.input_specs(model, None, dims=dims)
    # Serialized once for the estimate and the session: no private copy, no shape inference again.
    proto = loaded.take() if loaded is not None else None  # the session's now: freed with it
    serialized = reference_from_loaded(model, proto) if proto is not None else None
    del proto
    serialized = serialized or serialize_reference(model)
    if memory_limit.memory_limit() is not None:  # every intermediate is kept: checked before generating
        needed = run_bytes(
            model, {spec.name: spec.shape for spec in specs}, proto=serialized.proto if serialized else None
        )
        memory_limit.check_fits(needed, "the FP32 range run (every intermediate kept)")
    feeds = [inputs_module.cast_feeds(model, inputs_module.generate_from_specs(specs, seed=seed))]
    label = inputs_module.generated_label(seed)
    if dims:
        label += f"; {', '.join(f'{name}={size}' for name, size in dims.items())} ({why})"
    # One run: nothing to repack for, and no worker thread should spin waiting for more.
    session = ReferenceSession(model, intermediates=True, prepack=False, serialized=serialized, spin=False)
    del serialized  # the session holds what it needs

    def run(batches: list[dict]) -> list[dict]:
        return [session.run(batch) for batch in batches]

    outputs, feeds, choice = run_accepting_inputs(
        model, run, feeds, specs, seed=seed, time_limit=RETRY_SECONDS, max_tries=MAX_TRIES
    )
    if choice is not None:
        label = f"{label}; {choice.describe()}"
    values: dict[str, list] = {}
    for name, array in [*feeds[0].items(), *outputs[0].items()]:
        values.setdefault(name, []).append(array)
    return values, label


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    return first if isinstance(exc, errors.MpcompileError) else f"{type(exc).__name__}: {first}"
