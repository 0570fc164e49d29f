"""ORT's graph optimisation as the pipeline's first pass (``convert --optimize``)."""

from __future__ import annotations

import onnx_ir as ir

from mpcompile.passes.base import ConversionPass
from mpcompile.targets.base import Target
from mpcompile.targets.optimize import OPTIMIZE_METADATA_KEY, optimize_model


class OptimizePass(ConversionPass):
    """Replace the model by ORT's optimisation of it at ``context.optimize`` (``optimized``).

    Not in place: ORT works on a serialized copy, so the result is a new model and the input is
    left as it was. Its ``mpcompile.optimize`` note goes into the conversion's notes.
    """

    @property
    def in_place(self) -> bool:
        return False

    @property
    def changes_input(self) -> bool:
        return False

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        assert self.context.optimize, "OptimizePass runs only with an optimisation level"
        optimized, note = optimize(
            model, self.context.optimize, self.context.target, self.context.low.precision.value
        )
        if note:
            self.context.notes.append(f"--optimize {note}")
        return ir.passes.PassResult(optimized, modified=True)


def optimize(model: ir.Model, level: str, target: Target, precision: str) -> tuple[ir.Model, str | None]:
    """ORT's optimisation of ``model`` (left untouched) at ``level`` for ``target`` and the low
    ``precision`` that follows, and its ``mpcompile.optimize`` note (``optimize_model``)."""
    optimized = ir.from_proto(optimize_model(model, level, target, precision=precision))
    return optimized, optimized.metadata_props.get(OPTIMIZE_METADATA_KEY)
