"""FP32 master weights in a mixed-precision training (or eval) graph, checked after the rewrite.

Mixed-precision training keeps the parameters, the gradient accumulation buffers and the
optimizer on FP32 values; only the compute in between is low precision. After the precision
passes, this pass checks the graph keeps that contract:

- every graph input that was FLOAT before the conversion (user inputs, parameters, accumulation
  buffers) is still FLOAT, under the same name;
- each graph input is read through at most one Cast per target type (a parameter is cast once
  and the Cast is shared by all its low-precision uses);
- every ``InPlaceAccumulatorV2`` accumulates FLOAT gradients into a FLOAT buffer, so the
  optimizer model (copied unchanged) sees FP32 gradients.

A broken contract is a bug in the training rules or passes: ``ir.passes.InvariantError``.
"""

from __future__ import annotations

from collections import Counter

import onnx_ir as ir

ACCUMULATOR_OP = ("com.microsoft", "InPlaceAccumulatorV2")


class MasterWeightsPass(ir.passes.InPlacePass):
    """Check the FP32 master-weight contract (module docstring) against the graph's FP32 inputs
    recorded before the conversion (``MasterWeightsPass.of(model)``)."""

    def __init__(self, fp32_inputs: list[str]):
        super().__init__()
        self.fp32_inputs = fp32_inputs

    def __repr__(self) -> str:
        return "MasterWeightsPass()"

    @classmethod
    def of(cls, model: ir.Model) -> MasterWeightsPass:
        """The pass for ``model`` as it is now (before its conversion)."""
        return cls([value.name or "" for value in model.graph.inputs if value.dtype == ir.DataType.FLOAT])

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        inputs = {value.name: value for value in model.graph.inputs}
        for name in self.fp32_inputs:
            value = inputs.get(name)
            if value is None or value.dtype != ir.DataType.FLOAT:
                found = "missing" if value is None else str(value.dtype)
                raise ir.passes.InvariantError(f"master weight / FP32 input {name!r} is {found}")
            casts = Counter(
                use.node.attributes["to"].as_int()
                for use in value.uses()
                if use.node.op_type == "Cast" and use.node.domain in ("", "ai.onnx")
            )
            shared = [ir.DataType(to).name for to, count in casts.items() if count > 1]
            if shared:
                raise ir.passes.InvariantError(f"input {name!r} is cast to {shared} more than once")
        for node in model.graph:
            if (node.domain, node.op_type) != ACCUMULATOR_OP:
                continue
            for value in node.inputs[:2]:
                if value is not None and value.dtype not in (None, ir.DataType.FLOAT):
                    raise ir.passes.InvariantError(
                        f"accumulator {node.name!r} reads {value.name!r} as {value.dtype}, not FLOAT"
                    )
        return ir.passes.PassResult(model, modified=False)
