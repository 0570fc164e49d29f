"""The base of the conversion passes: in-place onnx-ir passes holding the frozen options.

``ConversionPass`` reads the options of one conversion (``ConversionContext``) and reports
into its stats and notes. ``PlanPass`` also holds the ``PrecisionPlan`` it fills
(AssignPrecisionPass) or applies (ApplyPrecisionPass's steps, StampDecisionsPass): the plan
is the only thing passes hand each other.
"""

from __future__ import annotations

import onnx_ir as ir

from mpcompile.core.plan import PrecisionPlan
from mpcompile.irtools.graphs import all_graphs
from mpcompile.passes.context import ConversionContext


class ConversionPass(ir.passes.InPlacePass):
    """An in-place pass that reads options from, and reports into, one ``ConversionContext``."""

    def __init__(self, context: ConversionContext):
        super().__init__()
        self.context = context

    def __repr__(self) -> str:  # PassError messages name passes by repr()
        return f"{type(self).__name__}()"


class PlanPass(ConversionPass):
    """A conversion pass that fills or applies one ``PrecisionPlan``."""

    def __init__(self, context: ConversionContext, plan: PrecisionPlan):
        super().__init__(context)
        self.plan = plan

    def graphs(self, model: ir.Model) -> list[tuple[ir.Graph, int]]:
        """The graphs the plan covers (listed once by AssignPrecisionPass: the passes never add
        or remove a subgraph), or ``all_graphs(model)`` for a plan made by hand."""
        return self.plan.graphs or list(all_graphs(model))
