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
import os
import pathlib
import threading
import time
from collections.abc import Callable, Collection, Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING

import onnx
import onnx_ir as ir

from mpcompile import errors
from mpcompile.analysis.range_rules import RangeFinding, RangeRules, find_unsafe_nodes
from mpcompile.core.plan import Decision, Reason
from mpcompile.core.precision import LowPrecisionFormat, Precision
from mpcompile.io import model_io
from mpcompile.io.proto_tensors import graph_protos, tensor_nbytes
from mpcompile.passes.base import ConversionPass
from mpcompile.passes.context import ConversionContext
from mpcompile.policy import range_propagation

if TYPE_CHECKING:
    from mpcompile.core.plan import PrecisionPlan
    from mpcompile.evaluate.faithful import ReferenceSession, SessionRecipe
    from mpcompile.evaluate.loaded_reference import LoadedRecipe

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
    """The protobuf a model was deserialized from (``model_io.load_model_and_proto``), from a
    file in ``base_dir``, held for the range run, which takes it (so it is freed after) and
    evaluates it instead of serializing the IR again when the graph is still the loaded one.
    ``early``: the range run started from it before the IR was deserialized (``start_early``),
    for the range run to take too. ``close`` frees what nobody took."""

    proto: onnx.ModelProto | None
    base_dir: pathlib.Path | None = None
    early: PendingRangeRun | None = None
    dropped: list[PendingRangeRun] = dataclasses.field(default_factory=list)  # stopped, joined at close

    def take(self) -> onnx.ModelProto | None:
        proto, self.proto = self.proto, None
        return proto

    def take_early(self) -> PendingRangeRun | None:
        early, self.early = self.early, None
        return early

    def close(self) -> None:
        self.proto = None
        for pending in [self.take_early(), *self.dropped]:
            if pending is not None:
                pending.close()
        self.dropped.clear()


def start_early(proto: onnx.ModelProto, base_dir: pathlib.Path) -> PendingRangeRun | None:
    """The range run's session, built on a worker thread from ``proto`` (as loaded from a file in
    ``base_dir``, types inferred; not modified) while the IR is deserialized from it
    (``evaluate/loaded_reference.py``). None where only the IR can make the session, or where
    the run will be skipped (no onnxruntime, weights above ``MAX_WEIGHT_BYTES``).
    ``start_range_run`` takes it where it still describes the model (``LoadedProto.early``)."""
    from mpcompile.evaluate.loaded_reference import loaded_recipe

    started = time.perf_counter()
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    try:
        weight_bytes = _proto_weight_bytes(proto.graph)
        if weight_bytes is None or weight_bytes > MAX_WEIGHT_BYTES:
            return None
        source = loaded_recipe(proto, base_dir, threads_beside_the_conversion())
        if source is None:
            return None
        pending = PendingRangeRun()
        pending.source = source
        pending.start(source.take_recipe())
    except Exception:  # never an error here: the range run starts from the IR, and says what fails
        return None
    pending.seconds = time.perf_counter() - started
    return pending


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
    describes the model (``faithful.reference_from_loaded``).

    ``start_range_run`` and ``PendingRangeRun.finish`` do the same in two steps, with the
    conversion going on between them."""
    pending = start_range_run(model, low, seed=seed, loaded=loaded)
    try:
        return pending.finish(model, low_nodes)
    finally:
        pending.close()


def start_range_run(
    model: ir.Model,
    low: LowPrecisionFormat,
    *,
    seed: int = 0,
    loaded: LoadedProto | None = None,
    threads: int | None = None,
) -> PendingRangeRun:
    """``range_run``'s first step: what reads ``model`` is done here; ONNX Runtime builds the
    session and runs it on a worker thread (it releases the GIL meanwhile), and the memory
    estimate is checked here while it builds. ``loaded``'s early session is taken where it
    still describes ``model``. ``threads``: ORT's for a session built here (None: its default;
    ``threads_beside_the_conversion()`` where the conversion goes on meanwhile). ``model`` must
    not change until ``finish``, except by typing its values (``InferTypesPass``). Call
    ``close`` in every case."""
    started = time.perf_counter()
    early = loaded.take_early() if loaded is not None else None
    pending: PendingRangeRun | None = None
    try:
        pending = _start(model, low, seed, loaded, early, threads)
    finally:
        if early is not None and pending is not early:  # not taken: stopped, joined at the end
            early.stop()
            assert loaded is not None
            loaded.dropped.append(early)
    pending.seconds += time.perf_counter() - started
    return pending


def _start(
    model: ir.Model,
    low: LowPrecisionFormat,
    seed: int,
    loaded: LoadedProto | None,
    early: PendingRangeRun | None,
    threads: int | None,
) -> PendingRangeRun:
    if not range_propagation.needed(low):
        return PendingRangeRun(done=RangeRun())
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return PendingRangeRun.skipped("onnxruntime is not installed")
    if model_io.weight_bytes(model) > MAX_WEIGHT_BYTES:
        return PendingRangeRun.skipped(
            f"weights above {MAX_WEIGHT_BYTES >> 20} MiB (memory); --auto measures ranges on any size"
        )
    try:
        pending = _prepare(model, seed, loaded, early, threads)
    except Exception as exc:  # the static rules decide instead: never an error
        return PendingRangeRun.skipped(_first_line(exc))
    pending.low = low
    return pending


class PendingRangeRun:
    """A range run started by ``start_range_run``: its session is built and run on a worker
    thread; ``finish`` waits for it and applies the range rules. ``close`` waits for the worker
    (and stops it before the run when ``finish`` was never called)."""

    def __init__(self, done: RangeRun | None = None):
        self.done = done  # the result, where nothing is left to run (skipped)
        self.source: LoadedRecipe | None = None  # start_early's: what its session evaluates
        self.low: LowPrecisionFormat | None = None
        self.seconds = 0.0  # this run's own work: preparing, the worker's, finishing
        self.worker_seconds = 0.0
        self.seed = 0
        self.label = ""
        self.specs: list = []
        self.feeds: list[dict] = []
        self._recipe: SessionRecipe | None = None
        self._fits = threading.Event()  # the memory estimate passed: the worker may run
        self._cancelled = False
        self._session: ReferenceSession | None = None
        self._outputs: list[dict] | None = None
        self._error: BaseException | None = None  # the build's or the first run's
        self._worker: threading.Thread | None = None

    @classmethod
    def skipped(cls, why: str) -> PendingRangeRun:
        return cls(done=_skipped(why))

    def start(self, recipe: SessionRecipe) -> None:
        self._recipe = recipe
        self._worker = threading.Thread(target=self._work, name="mpcompile-range-run", daemon=True)
        self._worker.start()

    def _work(self) -> None:
        started = time.perf_counter()
        try:
            recipe, self._recipe = self._recipe, None
            assert recipe is not None
            self._session = recipe.build()
            del recipe  # the session holds what it needs
            self._fits.wait()
            if not self._cancelled:
                self._outputs = [self._session.run(batch) for batch in self.feeds]
                self._session = None  # kept only for retries on other inputs: its memory freed now
        except BaseException as exc:  # handed to finish, on the calling thread
            self._error = exc
        finally:
            self.worker_seconds = time.perf_counter() - started

    def allow_run(self) -> None:
        """The memory estimate passed: the worker runs once its session is built."""
        self._fits.set()

    def cancel(self, why: str) -> None:
        """Stop the worker before its run; ``finish`` gives the skip note."""
        self.stop()
        self.done = _skipped(why)

    def finish(self, model: ir.Model, low_nodes: Callable[[], Collection[str]]) -> RangeRun:
        """Wait for the worker, then keep FP32 the nodes of ``low_nodes()`` that the rules find
        unsafe (``range_run``)."""
        self.close()
        if self.done is not None:
            return self.done
        started = time.perf_counter()
        assert self.low is not None
        try:
            values, label = self._values(model)
        except Exception as exc:  # the static rules decide instead: never an error
            return _skipped(_first_line(exc))
        kept = measured_findings(model, values, self.low)
        if kept:  # the low-precision set is asked for only when something was measured
            low_set = set(low_nodes())
            kept = {name: finding for name, finding in kept.items() if name in low_set}
        seconds = self.seconds + self.worker_seconds + time.perf_counter() - started
        decisions = {name: range_decision(finding) for name, finding in kept.items()}
        return RangeRun(decisions, kept_note(kept, label, self.low, seconds), seconds, kept)

    def stop(self) -> None:
        """Let a worker still before its run end without it (``close`` waits for it)."""
        if not self._fits.is_set():
            self._cancelled = True
            self._fits.set()

    def close(self) -> None:
        """Wait for the worker; one still before its run is stopped first."""
        if self._worker is None:
            return
        self.stop()
        self._worker.join()
        self._worker = None

    def _values(self, model: ir.Model) -> tuple[dict[str, list], str]:
        """Every main-graph value of the run (the worker's first, or a retry here on inputs
        the model accepts: ``run_accepting_inputs``), and the inputs' label."""
        from mpcompile.evaluate.accepted_inputs import run_accepting_inputs

        session, first, error, ran = self._session, self.feeds, self._error, self._outputs
        if session is None and ran is None:
            raise error or RuntimeError("the range run's session was not built")

        def run(batches: list[dict]) -> list[dict]:
            if batches is first:  # the worker ran these
                if error is not None:
                    raise error
                assert ran is not None
                return ran
            assert session is not None, "a session is kept where its first run failed"
            return [session.run(batch) for batch in batches]

        outputs, feeds, choice = run_accepting_inputs(
            model, run, first, self.specs, seed=self.seed, time_limit=RETRY_SECONDS, max_tries=MAX_TRIES
        )
        self._session = self._outputs = None
        label = self.label if choice is None else f"{self.label}; {choice.describe()}"
        values: dict[str, list] = {}
        for name, array in [*feeds[0].items(), *outputs[0].items()]:
            values.setdefault(name, []).append(array)
        return values, label


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
    """The range run as the pass after ``OrtLoadablePass`` (the graph as optimised and named).

    It starts the run (``start_range_run``), and ``AssignPrecisionPass`` finishes it through
    ``review``: ONNX Runtime builds and runs the session on a worker thread while the types are
    inferred and the static paint is made (docs/performance.md). The nodes the run keeps FP32
    go into ``overrides`` (which the context's ``node_overrides`` reads after the caller's own),
    and its note into the notes, where this pass ran. ``close`` waits for the worker."""

    def __init__(
        self,
        context: ConversionContext,
        overrides: dict[str, Decision],
        loaded: LoadedProto | None = None,
    ):
        super().__init__(context)
        self.overrides = overrides
        self.loaded = loaded
        self.pending: PendingRangeRun | None = None
        self._note_at = 0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.close()
        self.pending = start_range_run(
            model, self.context.low, loaded=self.loaded, threads=threads_beside_the_conversion()
        )
        if self.loaded is not None:
            self.loaded.take()  # a run skipped left it: freed before the passes that follow
        self._note_at = len(self.context.notes)
        return ir.passes.PassResult(model, modified=False)

    def review(self, model: ir.Model, plan: PrecisionPlan) -> bool:
        """``AssignPrecisionPass``'s review of its static paint ``plan``: the run finished on the
        main-graph nodes painted low. True when it keeps some FP32 (the paint is made again)."""
        pending, self.pending = self.pending, None
        if pending is None:
            return False
        try:
            run = pending.finish(
                model,
                lambda: {
                    node.name
                    for node, decision in plan.items()
                    if decision.is_low and node.graph is model.graph
                },
            )
        finally:
            pending.close()
        if run.note:
            self.context.notes.insert(self._note_at, run.note)
        self.overrides.update(run.decisions)
        return bool(run.decisions)

    def close(self) -> None:
        """Wait for a run started and not reviewed (the conversion failed in between)."""
        if self.pending is not None:
            self.pending.close()
            self.pending = None


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


def _prepare(
    model: ir.Model,
    seed: int,
    loaded: LoadedProto | None = None,
    early: PendingRangeRun | None = None,
    threads: int | None = None,
) -> PendingRangeRun:
    """The range run's inputs and session, read from ``model``: ``early`` where it still
    describes it, else a new worker started on the loaded protobuf (where it describes it) or
    on the IR serialized; then the memory estimate, checked while the worker builds."""
    from mpcompile.evaluate import implied_sizes, memory_limit
    from mpcompile.evaluate import inputs as inputs_module

    dims, why = implied_sizes.deployment_image_dims(model, inputs_module.model_inputs(model))
    specs = inputs_module.input_specs(model, None, dims=dims)
    feeds = [inputs_module.cast_feeds(model, inputs_module.generate_from_specs(specs, seed=seed))]
    proto = loaded.take() if loaded is not None else None  # freed once the estimate is made
    base_dir = loaded.base_dir if loaded is not None else None
    if early is not None and early.source is not None and early.source.describes(model):
        pending, estimate = early, proto
    else:  # an early session was made from ``proto``: a recipe made from it again would not fit either
        pending, estimate = _start_worker(model, proto if early is None else None, base_dir, threads)
    del proto
    pending.seed, pending.specs, pending.feeds = seed, specs, feeds
    pending.label = inputs_module.generated_label(seed)
    if dims:
        pending.label += f"; {', '.join(f'{name}={size}' for name, size in dims.items())} ({why})"
    if memory_limit.memory_limit() is not None:  # every intermediate is kept: checked before the run
        from mpcompile.evaluate.run_memory import run_bytes

        try:
            needed = run_bytes(model, {spec.name: spec.shape for spec in specs}, proto=estimate)
            memory_limit.check_fits(needed, "the FP32 range run (every intermediate kept)")
        except Exception as exc:
            pending.cancel(_first_line(exc))
            return pending
        except BaseException:  # interrupted: a worker started here is joined (``early``: by the caller)
            if pending is not early:
                pending.close()
            raise
    pending.allow_run()
    return pending


def _start_worker(
    model: ir.Model, proto: onnx.ModelProto | None, base_dir: pathlib.Path | None, threads: int | None
) -> tuple[PendingRangeRun, onnx.ModelProto | None]:
    """A worker building the session from ``proto`` (the loaded protobuf, where it describes
    ``model``) or from ``model`` serialized; and the proto the memory estimate reads (the
    model as serialized, before its intermediates are exposed)."""
    from mpcompile.evaluate.faithful import reference_recipe, serialize_reference
    from mpcompile.evaluate.loaded_reference import loaded_recipe

    source = loaded_recipe(proto, base_dir, threads) if proto is not None and base_dir is not None else None
    pending = PendingRangeRun()
    if source is not None and source.describes(model):
        pending.start(source.take_recipe())
        return pending, proto
    serialized = serialize_reference(model)
    estimate = None
    if serialized is not None:
        estimate = onnx.ModelProto()  # the recipe exposes the intermediates in place
        estimate.CopyFrom(serialized.proto)
    # One run: nothing to repack for, and no worker thread should spin waiting for more.
    pending.start(
        reference_recipe(model, intermediates=True, prepack=False, serialized=serialized, spin=False)
    )
    return pending, estimate


def threads_beside_the_conversion() -> int:
    """ORT's intra-op threads for a range run that goes on while the conversion does: one core
    fewer than the process may use, the conversion's own thread keeping one (on 2 cores, one
    thread each: docs/performance.md measures both ways)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on every platform
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def _proto_weight_bytes(graph: onnx.GraphProto) -> int | None:
    """``model_io.weight_bytes`` read from a graph proto and its subgraphs, without the bytes;
    None where a weight's size is not fixed by its dtype and dims (strings, unknown types)."""
    total = 0
    for subgraph in graph_protos(graph):
        for tensor in subgraph.initializer:
            size = tensor_nbytes(tensor)
            if size is None:
                return None
            total += size
    return total


def _reference_values(
    model: ir.Model, seed: int, loaded: LoadedProto | None = None
) -> tuple[dict[str, list], str]:
    """Every main-graph value of the range run's FP32 run on generated inputs, and the inputs'
    label, in one step; raises where the run would be skipped."""
    pending = _prepare(model, seed, loaded)
    pending.close()
    if pending.done is not None:
        raise errors.MpcompileError(pending.done.note)
    return pending._values(model)


def _skipped(why: str) -> RangeRun:
    return RangeRun(note=f"range run skipped (static rules only): {why}")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    return first if isinstance(exc, errors.MpcompileError) else f"{type(exc).__name__}: {first}"
