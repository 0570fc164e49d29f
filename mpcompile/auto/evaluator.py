"""Evaluations of candidate conversions: cached, counted and held to a budget.

One *evaluation* is one run of a model over every batch of inputs: the FP32 reference run, or
the FP16-faithful run of one converted candidate. The reference runs in its own FP32 session,
and so does the first candidate, whose intermediates the sensitivity needs: when it passes, as
it mostly does, the search ends there. Every later candidate runs on the switchboard
(``mpcompile.auto.switchboard``), wired when the first of them needs it: one ONNX Runtime session
for all of them, with the results of their own sessions bit for bit. A candidate the switchboard
cannot express gets its own session, and an answer found on the switchboard is confirmed in its
own session at the end.
Conversions and their outcomes are cached by the set of nodes kept FP32, so asking again costs
nothing. A candidate with no low-precision tensor left computes the FP32 graph exactly, and one
that paints the same nodes low as an earlier candidate is that candidate's model: neither is run.

Every session is built with weight prepacking off, so that a weight computes the same as an
initializer (candidates) and as a fed input (the switchboard).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from mpcompile.auto import progress as progress_events
from mpcompile.auto.criteria import CheckResult, Criterion
from mpcompile.auto.reasons import AUTO_SENSITIVITY
from mpcompile.auto.switchboard import Switchboard
from mpcompile.compiler.converter import (
    ConvertOptions,
    ConvertResult,
    convert_checked_ir,
    verify_ir_conversion,
)
from mpcompile.core.plan import Decision
from mpcompile.core.precision import Precision
from mpcompile.irtools.graphs import all_graphs, model_graphs

LOW_DTYPES = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
Feeds = dict[str, np.ndarray]
ProbeKey = tuple[frozenset[str], bool]  # (nodes kept FP32, static block list)
# The decision of a node the search keeps FP32 for which no finding or sensitivity says why
# (candidates, and the answer when no candidate could be checked).
KEPT_BY_SEARCH = Decision(Precision.FP32, AUTO_SENSITIVITY, "kept FP32 by the search")


class BudgetExhausted(Exception):
    """No evaluation left in the budget."""


@dataclasses.dataclass
class Probe:
    """One candidate: the nodes kept FP32 by the search, what it gave, and whether it passed."""

    blocked: frozenset[str]
    result: ConvertResult
    low: frozenset[str]  # main-graph nodes in low precision
    fp16_flop_share: float
    check: CheckResult
    evaluated: bool  # False: not run (exact FP32, or the model of an earlier candidate)
    intermediates: list[dict[str, np.ndarray]] | None = None
    on_switchboard: bool = False  # run on the shared switchboard session, not its own yet
    static: bool = False  # converted with the static block list (plain convert's), not measured ops

    @property
    def key(self) -> ProbeKey:
        return (self.blocked, self.static)

    @property
    def passed(self) -> bool:
        return self.check.passed


class Evaluator:
    """Converts with extra FP32 nodes and runs candidates FP16-faithfully against the reference."""

    def __init__(
        self,
        model: ir.Model,
        feeds: Sequence[Feeds],
        criterion: Criterion,
        options: ConvertOptions,
        budget: int,
        *,
        switchboard: bool = True,
    ):
        self.model = model
        self.feeds = list(feeds)
        self.criterion = criterion
        self.dump_dir = options.dump_dir  # only the final conversion is dumped
        # Resolved once: the policy file is read here, not once per candidate.
        # static: the search measures ranges itself (no plain-convert range run per candidate).
        self.options = dataclasses.replace(options.resolved(), verify=False, dump_dir=None, static=True)
        self.budget = budget
        self.flops: dict[str, int] = {}  # set_flops, once the reference run has given the shapes
        self.total_flops = 0
        self.evaluations = 0
        self.sessions = 0  # ONNX Runtime session builds
        self.low_dtype = ir.DataType.FLOAT16  # set by baseline() from the conversion's precision
        self._switchboard: Switchboard | None = None
        self._use_switchboard = switchboard
        self.reference_outputs: list[dict[str, np.ndarray]] = []
        self._output_names = [value.name for value in model.graph.outputs]
        self._probes: dict[ProbeKey, Probe] = {}
        self._conversions: dict[ProbeKey, ConvertResult] = {}  # convert()'s, see there
        self._static_matters: bool | None = None  # _static_differs, computed once
        self._static_share: float | None = None
        self._reference_session = None  # kept across input retries, dropped once the search starts
        self._reported: set[ProbeKey] = set()
        self.on_evaluation: progress_events.ProgressCallback | None = None
        # acceptance(candidate) -> "" or why it fails beyond the outputs (a folder's generation)
        self.acceptance: Callable[[ir.Model], str] | None = None
        # called once before the first ONNX Runtime session is built (api: the load probe's wait)
        self.before_session: Callable[[], None] | None = None

    @property
    def remaining(self) -> int:
        return self.budget - self.evaluations

    def _spend(self) -> None:
        if self.evaluations >= self.budget:
            raise BudgetExhausted()
        self.evaluations += 1

    def run_reference(self) -> list[dict[str, np.ndarray]]:
        """The FP32 model with every main-graph intermediate exposed, per batch (one evaluation)."""
        from mpcompile.evaluate.faithful import ReferenceSession, serialize_reference

        self._spend()
        if self._reference_session is None:
            serialized = serialize_reference(self.model)  # while the load probe may still run
            self._session_ready()
            self.sessions += 1
            self._reference_session = ReferenceSession(  # from one serialization, no private copy
                self.model, intermediates=True, prepack=False, serialized=serialized
            )
        values = [self._reference_session.run(batch) for batch in self.feeds]
        self.reference_outputs = [{name: batch[name] for name in self._output_names} for batch in values]
        self.report(progress_events.REFERENCE)
        return values

    def use_feeds(self, feeds: Sequence[Feeds]) -> None:
        """Replace the inputs after a reference run the model rejected (that run is not counted;
        no candidate has run yet)."""
        assert not self.reference_outputs and not self._probes, "inputs change only before the search"
        self.feeds = list(feeds)
        self.evaluations -= 1

    def baseline(self) -> ConvertResult:
        """The conversion with nothing extra kept FP32 (no evaluation): which nodes go low at all."""
        from mpcompile.core.precision import low_precision_format

        result = self.convert(frozenset())
        self.low_dtype = low_precision_format(result.precision).dtype
        return result

    def convert(
        self,
        blocked: frozenset[str],
        *,
        verify: bool = False,
        static: bool = False,
        decisions: Mapping[str, Decision] | None = None,
        check: bool = True,
    ) -> ConvertResult:
        """Convert with ``blocked`` kept FP32 (``node_overrides``: exact names, with
        ``decisions``' reason and rule where given, else ``KEPT_BY_SEARCH``); ``verify``: the final
        conversion (dumped, and checked unless ``check`` is False: the caller checks the saved
        file); ``static``: with the core's static block list, as plain convert (no measured ops or
        Casts). The user's ``block_nodes`` still win.

        Conversions are cached by (``blocked``, ``static``) where ``decisions`` change no reason
        and nothing is dumped: the baseline is the initial candidate when no range rule fires,
        plain convert's conversion is asked for more than once, and the answer is often a
        candidate converted already (then only checked here). A model with no op that
        ``static`` changes (a measured op, a Cast) converts the same either way: one conversion."""
        decisions = decisions or {}
        if static and not self._static_differs():
            static = False
        if (verify and self.dump_dir is not None) or any(
            decisions.get(name, KEPT_BY_SEARCH) != KEPT_BY_SEARCH for name in blocked
        ):
            return self._convert(blocked, verify, static, decisions, check)
        result = self._conversions.get((blocked, static))
        if result is None:
            result = self._conversions[(blocked, static)] = self._convert(blocked, False, static, {}, False)
        if verify and check:
            verify_ir_conversion(self.model, result)
        return result

    def _static_differs(self) -> bool:
        """Whether a node is one the static block list converts otherwise: a measured op, or a
        Cast (``measured_casts`` starts low-precision paths at Casts from integers)."""
        if self._static_matters is None:
            measured = self.options.op_policy().measured_ops
            self._static_matters = any(
                (node.op_type == "Cast" and node.domain in ("", "ai.onnx"))
                or ("" if node.domain == "ai.onnx" else node.domain, node.op_type) in measured
                for graph, _ in all_graphs(self.model, every_function=True)
                for node in graph
            )
        return self._static_matters

    def _convert(
        self,
        blocked: frozenset[str],
        verify: bool,
        static: bool,
        decisions: Mapping[str, Decision],
        check: bool,
    ) -> ConvertResult:
        overrides = dict(self.options.node_overrides)  # decisions given beforehand (a folder's)
        overrides.update((name, decisions.get(name, KEPT_BY_SEARCH)) for name in sorted(blocked))
        dump_dir = self.dump_dir if verify else None
        options = (
            dataclasses.replace(self.options, measured_ops=(), measured_casts=False)
            if static
            else self.options
        )
        return convert_checked_ir(
            self.model,
            dataclasses.replace(
                options, node_overrides=overrides, verify=verify and check, dump_dir=dump_dir
            ),
        )

    def static_share(self) -> float:
        """The low-precision FLOP share of plain convert (the static block list; no evaluation)."""
        if self._static_share is None:
            self._static_share = self.flop_share(
                low_precision_nodes(self.convert(frozenset(), static=True).model)
            )
        return self._static_share

    def set_flops(self, flops: Mapping[str, int]) -> None:
        """FLOPs per node (known once the reference run has given every value's shape)."""
        self.flops = dict(flops)
        self.total_flops = sum(self.flops.values())

    def flop_share(self, low: frozenset[str]) -> float:
        if not self.total_flops:
            return 0.0
        return sum(self.flops.get(name, 0) for name in low) / self.total_flops

    def probe(self, blocked: frozenset[str], *, intermediates: bool = False, static: bool = False) -> Probe:
        """Convert with ``blocked`` kept FP32 (``static``: see ``convert``) and check it (cached;
        may raise BudgetExhausted)."""
        cached = self._probes.get((blocked, static))
        if cached is not None and (cached.intermediates is not None or not intermediates):
            return cached
        self._reference_session = None  # inputs change only before the search: never run again
        result = self.convert(blocked, static=static)
        low = low_precision_nodes(result.model)
        share = self.flop_share(low)
        twin = None if intermediates else self._same_conversion(low)
        if not low and not _has_low_tensors(result.model):
            probe = Probe(
                blocked, result, low, share, CheckResult(True, 0.0, "", ""), evaluated=False, static=static
            )
        elif twin is not None:  # the core painted the same nodes low: the same model, not run again
            probe = dataclasses.replace(
                twin, blocked=blocked, result=result, evaluated=False, intermediates=None, static=static
            )
        else:
            settings = None if intermediates else self._settings(result.model)
            if settings is not None:
                self._spend()
                outputs = self._switchboard.run(self.feeds, settings)
            else:
                outputs = self._run_faithful(result.model, intermediates)
            probe = Probe(
                blocked, result, low, share, self._accepted(result.model, self._check(outputs)), True,
                outputs if intermediates else None, on_switchboard=settings is not None, static=static,
            )  # fmt: skip
        self._probes[(blocked, static)] = probe
        if probe.evaluated and probe.key not in self._reported:
            self._reported.add(probe.key)
            self.report(progress_events.CANDIDATE, share)
        return probe

    def report(self, phase: str, low_share: float | None = None) -> None:
        """Tell ``on_evaluation`` (the progress bar) where the search stands."""
        if self.on_evaluation is None:
            return
        evaluated = [probe for probe in self._probes.values() if probe.evaluated]
        passing = [probe for probe in evaluated if probe.passed]
        best = max(passing, key=lambda probe: probe.fp16_flop_share, default=None)
        best_error = best.check.error if best is not None else min(
            (probe.check.error for probe in evaluated), default=None
        )  # fmt: skip
        self.on_evaluation(
            progress_events.Evaluation(
                phase, self.evaluations, self.budget, low_share, best_error, self.criterion.limit
            )
        )

    def _same_conversion(self, low: frozenset[str]) -> Probe | None:
        """An evaluated probe whose conversion put exactly ``low`` in low precision.

        The search's extra FP32 nodes reach the core only as node decisions, so two candidates
        with the same low-precision nodes convert to the same model (keeping a node FP32 that
        the painting rules keep FP32 anyway changes nothing)."""
        for probe in self._probes.values():
            if probe.evaluated and probe.low == low:
                return probe
        return None

    def confirm(self, probe: Probe) -> Probe:
        """``probe`` run in its own session when the switchboard ran it (one more evaluation,
        outside the budget): the answer is always checked as the model it is."""
        if not probe.on_switchboard:
            return probe
        outputs = self._run_faithful(probe.result.model, False, budgeted=False)
        confirmed = dataclasses.replace(probe, check=self._check(outputs), on_switchboard=False)
        self._probes[probe.key] = confirmed
        self.report(progress_events.CONFIRM, confirmed.fp16_flop_share)
        return confirmed

    def _accepted(self, model: ir.Model, check: CheckResult) -> CheckResult:
        """``check``, failed when it passed but ``acceptance`` refuses the candidate."""
        if not check.passed or self.acceptance is None:
            return check
        failure = self.acceptance(model)
        return dataclasses.replace(check, passed=False, failure=failure) if failure else check

    def _check(self, outputs: Sequence[Mapping[str, np.ndarray]]) -> CheckResult:
        return self.criterion.check(
            self.reference_outputs, [{n: batch[n] for n in self._output_names} for batch in outputs]
        )

    def _board(self) -> Switchboard | None:
        """The switchboard, built for the first candidate after the first (which runs in its own
        session, as the reference does: a board is about five times the graph, and most searches
        end with the first candidate); None when off, the model has none, or its conversion keeps
        everything FP32 (no candidate will run)."""
        if self._use_switchboard and self._switchboard is None and not self._anything_low():
            self._use_switchboard = False
        if self._use_switchboard and self._switchboard is None:
            self._switchboard = Switchboard.build(
                self.model, self.low_dtype, before_session=self._session_ready
            )
            self._use_switchboard = self._switchboard is not None
            self.sessions += self._use_switchboard
        return self._switchboard

    def _anything_low(self) -> bool:
        """Whether the conversion with nothing extra kept FP32 (``baseline``) has a low-precision
        node or tensor: every candidate keeps more FP32 than it, so without one none has."""
        baseline = self.convert(frozenset()).model
        return bool(low_precision_nodes(baseline)) or _has_low_tensors(baseline)

    def _settings(self, converted: ir.Model):
        """The candidate's switchboard settings; None when there is no switchboard or it cannot
        express the candidate."""
        board = self._board()
        return None if board is None else board.settings(converted)

    def _session_ready(self) -> None:
        """Call ``before_session`` before the first session (once)."""
        ready, self.before_session = self.before_session, None
        if ready is not None:
            ready()

    def is_cached(self, blocked: frozenset[str], static: bool = False) -> bool:
        return (blocked, static) in self._probes

    def probes(self) -> list[Probe]:
        return list(self._probes.values())

    def probe_exact_fp32(self, nodes: Sequence[str]) -> Probe:
        """``nodes`` (every node the policy puts in low precision) FP32: the FP32 model, which
        equals the reference, so it passes without an evaluation. The low-precision nodes of
        subgraphs (If branches, which the search does not address) go FP32 with them."""
        blocked = frozenset(nodes) | low_precision_nodes(self.convert(frozenset()).model)
        try:
            return self.probe(blocked)
        except BudgetExhausted:  # low-precision tensors left outside the main graph
            result = self.convert(blocked)
            low = low_precision_nodes(result.model)
            failed = CheckResult(
                False, float("inf"), "", "budget spent before any candidate could be checked"
            )
            return Probe(blocked, result, low, self.flop_share(low), failed, evaluated=False)

    def _run_faithful(
        self, model: ir.Model, intermediates: bool, *, budgeted: bool = True
    ) -> list[dict[str, np.ndarray]]:
        from mpcompile.evaluate.faithful import FaithfulSession
        from mpcompile.evaluate.inputs import cast_feeds

        if budgeted:
            self._spend()
        else:
            self.evaluations += 1
        self.sessions += 1
        self._session_ready()
        session = FaithfulSession(model, intermediates=intermediates, prepack=False)
        return [session.run(cast_feeds(model, batch)) for batch in self.feeds]


def low_precision_nodes(model: ir.Model) -> frozenset[str]:
    """Names of the nodes of every graph (If branches, Loop bodies: as the report counts them)
    whose stamped decision is FP16/BF16, inserted Casts excluded. The search's candidates are
    main-graph nodes; subgraph nodes count towards the FLOP share and tell conversions apart."""
    from mpcompile.core.plan import Reason, read_decision

    low = set()
    for graph in model_graphs(model):
        for node in graph:
            decision = read_decision(node)
            if node.name and decision is not None and decision.is_low and decision.reason != Reason.CAST:
                low.add(node.name)
    return frozenset(low)


def _has_low_tensors(model: ir.Model) -> bool:
    for graph in model_graphs(model):
        for value in (*graph.inputs, *graph.outputs, *graph.initializers.values()):
            if value.dtype in LOW_DTYPES:
                return True
        for node in graph:
            if any(value.dtype in LOW_DTYPES for value in node.outputs):
                return True
    return False
