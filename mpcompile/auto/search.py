"""The accuracy search: which low-precision nodes must stay FP32 for the tolerance to hold.

Starting point: the conversion with the range rules' nodes kept FP32. When it fails:

1. **Sensitivity** comes from that candidate's own run (intermediates exposed): every
   low-precision node gets a *blame item* (itself and its low-precision producers) scored by
   the error it introduces (``mpcompile.auto.sensitivity``). Items whose directly computed
   error (``exact``) alone exceeds the tolerance's relative budget are needed: they go FP32
   together in one candidate and stay there (never pruned). With several regions, galloping
   over the other items (1, 2, 4) first looks for a few culprits directly.
2. **Regions**: the connected low-precision regions, ordered by their most sensitive node.
   With several regions, a galloping search (1, 2, 4, ... regions, then bisection) finds the
   fewest leading regions that must go FP32 for the tolerance to hold.
3. **Nodes**: within each of those regions, the same galloping search over its blame items
   (most sensitive first) finds the fewest items to keep FP32; the rest of the region goes
   back to low precision.
4. **Prune** (while budget remains): each kept item in turn, largest FLOPs first, is tried in
   low precision again and stays there if the tolerance still holds; then each producer kept
   FP32 with a sensitive node, alone (where the node's own rounding was what mattered, as in a
   residual Add, its producers need not stay FP32).

Galloping needs few evaluations when few nodes are sensitive (``2·log2(k) + 1`` for k needed
items) and bisection bounds it by ``log2(n)`` otherwise. Every step stays inside the budget:
when it runs out, the best candidate known to pass is the answer (at worst the FP32 model,
which passes by definition).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from mpcompile.auto.evaluator import BudgetExhausted, Evaluator, Probe, low_precision_nodes
from mpcompile.auto.graph import connected_regions, main_nodes
from mpcompile.auto.sensitivity import BlameItem, NodeSensitivity, blame_items, measure
from mpcompile.auto.trace import KEPT, MEASURED, REVERTED, SearchStep
from mpcompile.core.precision import LowPrecisionFormat

GLOBAL_ITEMS = 4  # with several regions, galloping over all items first tries up to this many


@dataclasses.dataclass
class SearchOutcome:
    best: Probe  # the accepted candidate (passes, unless the budget allowed no check at all)
    blocked_why: dict[str, str]  # node -> rule text, for nodes the search keeps FP32
    sensitivities: dict[str, NodeSensitivity]
    steps: list[SearchStep]
    notes: list[str]


class Search:
    def __init__(
        self,
        evaluator: Evaluator,
        nodes: Mapping[str, ir.Node],
        range_blocked: frozenset[str],
        candidates: Sequence[str],
        *,
        fmt: LowPrecisionFormat | None = None,
        relative_budget: float = math.inf,
        relaxable: frozenset[str] = frozenset(),
    ):
        self.evaluator = evaluator
        self.fmt = fmt
        self.relative_budget = relative_budget  # Criterion.relative_budget of the reference outputs
        self.nodes = dict(nodes)
        self.range_blocked = range_blocked
        self.relaxable = relaxable  # range findings the check measures (underflow), see _no_less_than_plain
        self.necessary: frozenset[str] = frozenset()  # nodes whose own error exceeds the budget
        self.candidates = tuple(candidates)  # nodes the policy alone puts in low precision
        self.steps: list[SearchStep] = []
        self.notes: list[str] = []
        self.exhausted = False

    # ---- bookkeeping ----------------------------------------------------------------

    def record_reference(self) -> None:
        self.steps.append(
            SearchStep(
                len(self.steps) + 1, "reference", "FP32 model, every intermediate exposed",
                [], None, None, None, MEASURED, 0.0, True, self.evaluator.evaluations,
            )
        )  # fmt: skip

    def _try(
        self,
        phase: str,
        tried: str,
        blocked: frozenset[str],
        *,
        intermediates: bool = False,
        static: bool = False,
    ) -> Probe | None:
        """Probe a candidate and record the step; None when the budget is spent."""
        before = self.evaluator.evaluations
        known = self.evaluator.is_cached(blocked, static)
        try:
            probe = self.evaluator.probe(blocked, intermediates=intermediates, static=static)
        except BudgetExhausted:
            if not self.exhausted:
                self.notes.append(
                    f"budget of {self.evaluator.budget} evaluations spent during the {phase} phase; "
                    "the best candidate known to pass is returned"
                )
            self.exhausted = True
            return None
        if known and self.evaluator.evaluations == before:
            return probe
        if not probe.evaluated and probe.low:
            tried += " (same model as an earlier candidate)"
        self.steps.append(
            SearchStep(
                index=len(self.steps) + 1,
                phase=phase,
                tried=tried,
                blocked=sorted(blocked - self.range_blocked),
                error=probe.check.error,
                limit=self.evaluator.criterion.limit,
                passed=probe.passed,
                outcome=KEPT if probe.passed else REVERTED,
                fp16_flop_share=probe.fp16_flop_share,
                evaluated=self.evaluator.evaluations > before,
                evaluations=self.evaluator.evaluations,
            )
        )
        return probe

    def _gallop(
        self,
        phase: str,
        count: int,
        candidate: Callable[[int], frozenset[str]],
        describe: Callable[[int], str],
        max_k: int | None = None,
    ) -> int | None:
        """Fewest k in 1..count with candidate(k) passing, trying k = 1, 2, 4, ... then bisecting.

        candidate(0) is assumed to fail. Without ``max_k``, candidate(count) is known to pass and
        is never run. With ``max_k``, galloping stops after k = max_k and returns None when
        nothing passed by then.
        """
        low, high, k = 0, count, 1
        found = max_k is None
        while k < high or (not found and k <= high):
            if max_k is not None and k > max_k:
                return None
            probe = self._try(phase, describe(k), candidate(k))
            if probe is None:
                return high if found else None
            if probe.passed:
                high, found = k, True
                break
            low, k = k, (min(2 * k, high) if found else 2 * k)
        if not found:
            return None
        while high - low > 1:
            middle = (low + high) // 2
            probe = self._try(phase, describe(middle), candidate(middle))
            if probe is None:
                break
            if probe.passed:
                high = middle
            else:
                low = middle
        return high

    # ---- the search -----------------------------------------------------------------

    def run(self, reference: Sequence[Mapping[str, np.ndarray]]) -> SearchOutcome:
        """The search, then the guarantee that the answer has at least plain convert's
        low-precision FLOP share wherever plain convert passes (``_no_less_than_plain``)."""
        return self._no_less_than_plain(self._search(reference))

    def _no_less_than_plain(self, outcome: SearchOutcome) -> SearchOutcome:
        """Phase "plain": when the answer keeps more compute FP32 than plain convert does, try
        (1) the answer with the measured range findings (``relaxable``: underflow, whose effect
        the check measures) on nodes plain convert puts in low precision given back, then
        (2) plain convert itself, unless a guard or prediction (overflow headroom, deep
        reductions, cancellation, ...) holds for one of its low-precision nodes or one of them
        alone introduces more error than the tolerance allows (``necessary``); the first that
        passes with a larger share is the answer. At most two evaluations, only when the answer
        has the smaller share."""
        best = outcome.best
        if best.passed and best.fp16_flop_share >= 1.0:  # no share is larger: plain's is not converted
            return outcome
        if self.exhausted or (best.passed and best.fp16_flop_share >= self.evaluator.static_share()):
            return outcome
        plain_low = low_precision_nodes(self.evaluator.convert(frozenset(), static=True).model)
        relaxed = self.relaxable & plain_low & best.blocked
        tries = []
        if relaxed and best.passed:
            tries.append(
                (
                    f"{len(relaxed)} node(s) kept FP32 for underflow back in low precision",
                    best.blocked - relaxed,
                    False,
                )
            )
        if not (self.range_blocked - self.relaxable) & plain_low and not self.necessary & plain_low:
            tries.append(("plain convert (the static block list, no measured ops)", frozenset(), True))
        for tried, blocked, static in tries:
            probe = self._try("plain", tried, frozenset(blocked), static=static)
            if probe is None:
                break
            if probe.passed and (not best.passed or probe.fp16_flop_share > best.fp16_flop_share):
                confirmed = self._confirmed(probe)
                if confirmed.passed:
                    why = {
                        name: text for name, text in outcome.blocked_why.items() if name in confirmed.blocked
                    }
                    return dataclasses.replace(outcome, best=confirmed, blocked_why=why)
        return outcome

    def _search(self, reference: Sequence[Mapping[str, np.ndarray]]) -> SearchOutcome:
        initial = self._try(
            "initial", "every eligible node in low precision (range rules applied)", self.range_blocked,
            intermediates=True,
        )  # fmt: skip
        if initial is None:  # budget of one: nothing could be checked beyond the reference
            fallback = self.evaluator.probe_exact_fp32(self.candidates)
            return SearchOutcome(fallback, {}, {}, self.steps, self.notes)
        if initial.passed:
            return SearchOutcome(initial, {}, {}, self.steps, self.notes)

        low = [name for name in self.nodes if name in initial.low]
        sensitivities = measure(
            self.nodes, main_nodes(initial.result.model), reference, initial.intermediates or [], self.fmt
        )
        unit = 2.0 ** -(self.fmt.mantissa_bits + 1) if self.fmt is not None else 2.0**-11
        items = blame_items(self.nodes, low, sensitivities, self.evaluator.flops, unit)
        score = {item.node: item.score for item in items}
        regions = connected_regions(self.nodes, low)
        order = {name: index for index, name in enumerate(self.nodes)}
        regions.sort(key=lambda region: (-max(score.get(n, 0.0) for n in region), order[region[0]]))

        # Items that alone introduce more error than the tolerance allows are needed (to first
        # order errors add up, they do not cancel): all of them go FP32 in one step, and stay.
        necessary = [item for item in items if (item.exact or 0.0) > self.relative_budget]
        self.necessary = frozenset(item.node for item in necessary)
        items = [item for item in items if item.node not in self.necessary]  # by name: linear
        base = self.range_blocked | {m for item in necessary for m in item.members}
        if necessary:
            probe = self._try(
                "nodes",
                f"{len(necessary)} node(s) each introducing more error than the tolerance allows "
                f"in FP32: " + ", ".join(item.node for item in necessary[:3]) + (", ..." if len(necessary) > 3 else ""),
                frozenset(base),
            )  # fmt: skip
            if probe is None or probe.passed or not items:
                return self._finish(necessary, [], score, sensitivities, necessary)

        # With several regions, first the few most sensitive items across all of them: one or
        # two culprits are the common case, and finding them directly costs fewer evaluations.
        if len(regions) > 1 and items:
            found = self._gallop(
                "nodes", len(items), lambda k: base | {m for i in items[:k] for m in i.members},
                lambda k: f"{k} most sensitive node(s) in FP32: " + ", ".join(i.node for i in items[:k][-3:]),
                max_k=GLOBAL_ITEMS,
            )  # fmt: skip
            if found is not None:
                return self._finish([*necessary, *items[:found]], [], score, sensitivities, necessary)

        # Phase "regions": the fewest leading regions to keep FP32.
        if len(regions) > 1:

            def regions_candidate(k: int) -> frozenset[str]:
                return frozenset(base.union(*regions[:k]))

            needed = self._gallop(
                "regions", len(regions), regions_candidate,
                lambda k: f"regions 1-{k} of {len(regions)} in FP32 ({sum(len(r) for r in regions[:k])} nodes)",
            )  # fmt: skip
        else:
            needed = len(regions)
        chosen_regions = regions[:needed]

        # Phase "nodes": within each chosen region, the fewest blame items.
        chosen: list[BlameItem] = list(necessary)
        for index, region in enumerate(chosen_regions):
            members = set(region)
            region_items = [item for item in items if item.node in members]
            others = set().union(*chosen_regions[index + 1 :])

            def nodes_candidate(k: int, region_items=region_items, others=others) -> frozenset[str]:
                members = {m for item in [*chosen, *region_items[:k]] for m in item.members}
                return frozenset(self.range_blocked | others | members)

            if self.exhausted:
                chosen.extend(region_items)
                continue
            k = self._gallop(
                "nodes", len(region_items), nodes_candidate,
                lambda k, region_items=region_items, index=index: f"{k} most sensitive node(s) of region {index + 1} in FP32: "
                + ", ".join(item.node for item in region_items[:k][-3:]),
            )  # fmt: skip
            chosen.extend(region_items[:k])

        return self._finish(chosen, chosen_regions, score, sensitivities, necessary)

    def _finish(
        self,
        chosen: list[BlameItem],
        chosen_regions: list[list[str]],
        score: Mapping[str, float],
        sensitivities: dict[str, NodeSensitivity],
        necessary: Sequence[BlameItem] = (),
    ) -> SearchOutcome:
        """Phase "prune" (give low precision back to kept items that do not need FP32, the
        ``necessary`` ones excepted), then the answer."""
        needed = {item.node for item in necessary}  # by name: a list's `in` compares dataclasses
        if not self.exhausted:
            for item in sorted(chosen, key=lambda item: -self._item_flops(item)):
                if self._item_flops(item) == 0 or item.node in needed:
                    continue
                rest = [other for other in chosen if other is not item]
                candidate = self.range_blocked | {m for other in rest for m in other.members}
                probe = self._try(
                    "prune", f"{item.node} and its producers back in low precision", frozenset(candidate)
                )
                if probe is None:
                    break
                if probe.passed:
                    chosen = rest

        blocked = frozenset(self.range_blocked | {m for item in chosen for m in item.members})
        blocked = self._prune_producers(blocked, chosen, necessary)
        best = self._known_passing(blocked)
        why = self._why(best.blocked - self.range_blocked, chosen, chosen_regions, score)
        for name in sorted(best.blocked - self.range_blocked - why.keys()):
            why[name] = (
                f"kept FP32 in the best candidate that passed (error introduced {score.get(name, 0.0):.3g})"
            )
        return SearchOutcome(best, why, sensitivities, self.steps, self.notes)

    def _prune_producers(
        self, blocked: frozenset[str], chosen: list[BlameItem], necessary: Sequence[BlameItem]
    ) -> frozenset[str]:
        """Give low precision back to the producers kept FP32 with a sensitive node, one at a
        time (largest FLOPs first), where the tolerance still holds without them."""
        sensitive = {item.node for item in chosen}
        keep = {m for item in necessary for m in item.members}
        producers = {m for item in chosen for m in item.members[1:]} - sensitive - keep
        for member in sorted(producers, key=lambda m: (-self.evaluator.flops.get(m, 0), m)):
            if self.exhausted or self.evaluator.flops.get(member, 0) == 0:
                continue
            candidate = blocked - {member}
            probe = self._try("prune", f"{member} back in low precision (its consumer stays FP32)", candidate)
            if probe is None:
                break
            if probe.passed:
                blocked = candidate
        return blocked

    def _item_flops(self, item: BlameItem) -> int:
        return sum(self.evaluator.flops.get(member, 0) for member in item.members)

    @staticmethod
    def _why(
        blocked: frozenset[str], chosen: list[BlameItem], regions: list[list[str]], score: Mapping[str, float]
    ) -> dict[str, str]:
        """The rule text for each node the search keeps FP32."""
        why: dict[str, str] = {}
        for item in chosen:
            why[item.node] = f"introduces error {item.score:.3g} (max |err| / max |x| of its outputs)"
        for item in chosen:
            for member in item.members[1:]:
                why.setdefault(member, f"feeds {item.node}, which introduces error {item.score:.3g}")
        for index, region in enumerate(regions):
            worst = max(score.get(name, 0.0) for name in region)
            for name in region:
                why.setdefault(
                    name, f"in low-precision region {index + 1} (worst error introduced {worst:.3g})"
                )
        return {name: text for name, text in why.items() if name in blocked}

    def _known_passing(self, blocked: frozenset[str]) -> Probe:
        """The accepted candidate, checked if it never was; when that fails or the budget is spent,
        the passing candidate with the most FP16 FLOPs seen, else the FP32 model."""
        try:
            probe = self.evaluator.probe(blocked)
            if probe.passed:
                return self._confirmed(probe)
            self.notes.append(
                "the search's final candidate failed its check; the best passing one is returned"
            )
        except BudgetExhausted:
            pass
        passing = [p for p in self.evaluator.probes() if p.passed]
        for probe in sorted(passing, key=lambda p: (-p.fp16_flop_share, len(p.blocked))):
            if self._confirmed(probe).passed:
                return self.evaluator.probe(probe.blocked, static=probe.static)
        return self.evaluator.probe_exact_fp32(self.candidates)

    def _confirmed(self, probe: Probe) -> Probe:
        """``probe`` checked in its own session (a step of phase "confirm") if the switchboard
        ran it; a verdict that does not hold there is noted."""
        if not probe.on_switchboard:
            return probe
        confirmed = self.evaluator.confirm(probe)
        self.steps.append(
            SearchStep(
                index=len(self.steps) + 1, phase="confirm", tried="the answer, in its own session",
                blocked=sorted(probe.blocked - self.range_blocked), error=confirmed.check.error,
                limit=self.evaluator.criterion.limit, passed=confirmed.passed,
                outcome=KEPT if confirmed.passed else REVERTED, fp16_flop_share=confirmed.fp16_flop_share,
                evaluated=True, evaluations=self.evaluator.evaluations,
            )
        )  # fmt: skip
        if not confirmed.passed:
            self.notes.append(
                f"the switchboard's verdict on a candidate (error {probe.check.error:.3g}) did not hold "
                f"in its own session (error {confirmed.check.error:.3g}); the next best is returned"
            )
        return confirmed
