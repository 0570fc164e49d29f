"""Write each node's decision into its metadata_props, and the model's provenance."""

from __future__ import annotations

import onnx_ir as ir

from mpcompile.core.plan import MODEL_PRECISION_KEY, MODEL_TARGET_KEY, MODEL_VERSION_KEY, stamp_decision
from mpcompile.passes.base import PlanPass
from mpcompile.version import __version__


class StampDecisionsPass(PlanPass):
    """Make the plan auditable from the saved model alone (``mpcompile report`` reads it)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for node, decision in self.plan.items():
            if node.graph is not None:  # folded or removed nodes are gone
                stamp_decision(node, decision)
        model.metadata_props[MODEL_VERSION_KEY] = __version__
        model.metadata_props[MODEL_PRECISION_KEY] = self.context.low.precision.value
        model.metadata_props[MODEL_TARGET_KEY] = self.context.target.name
        return ir.passes.PassResult(model, modified=True)
