"""Loss scaling for ORT training graphs (``training_model.onnx`` from ``generate_artifacts``).

The pass makes three changes:

1. A FP32 scalar graph input ``loss_scale`` replaces the backward seed: the ``<loss>_grad``
   initializer (1.0) that feeds the loss's gradient op. Every gradient is then computed scaled,
   so small low-precision gradients do not flush to zero.
2. Each parameter gradient is unscaled in FP32 (times 1/loss_scale) before its
   ``InPlaceAccumulatorV2``, so the accumulation buffers and the optimizer see true gradients.
3. A BOOL scalar graph output ``all_finite`` is true when no unscaled gradient holds inf or NaN
   (IsInf/IsNaN per gradient, reduced with ReduceMax and Sum): the driver skips the optimizer step
   and lowers the scale when it is false.

New names never end in ``_grad``: ORT treats such names as gradients. Every node added here
carries reason ``loss-scaling`` in its metadata.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mpcompile.core.casts import CastFactory
from mpcompile.core.plan import Decision, Reason, stamp_decision
from mpcompile.core.precision import Precision
from mpcompile.errors import TrainingError
from mpcompile.irtools.names import NameAuthority

LOSS_SCALE_INPUT = "loss_scale"
ALL_FINITE_OUTPUT = "all_finite"
ACCUMULATOR_OP = ("com.microsoft", "InPlaceAccumulatorV2")
ACCUMULATION_BUFFER_SUFFIX = "_grad.accumulation.buffer"
RULE = "loss-scaling"


class LossScalingPass(ir.passes.InPlacePass):
    """Add dynamic loss scaling (input ``loss_scale``, output ``all_finite``) to a training graph."""

    def __repr__(self) -> str:
        return "LossScalingPass()"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        if any(value.name == LOSS_SCALE_INPUT for value in graph.inputs):
            raise TrainingError(
                f"the training graph already has a {LOSS_SCALE_INPUT!r} input (loss scaling applied)"
            )
        seed = find_backward_seed(graph)
        accumulators = [node for node in graph if (node.domain, node.op_type) == ACCUMULATOR_OP]
        if not accumulators:
            raise TrainingError("no InPlaceAccumulatorV2 node: not an ORT training graph")
        builder = _Builder(model)

        loss_scale = ir.Value(
            name=LOSS_SCALE_INPUT, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([])
        )
        graph.inputs.insert(_loss_scale_position(graph), loss_scale)
        first = next(iter(graph))
        scaled_seed = loss_scale
        if seed.dtype not in (None, ir.DataType.FLOAT):
            scaled_seed = builder.before(
                first, "Cast", [loss_scale], {"to": seed.dtype}, "loss_scale.seed", seed.dtype
            )
        seed.replace_all_uses_with(scaled_seed)
        graph.initializers.pop(seed.name)
        reciprocal = builder.before(
            first, "Reciprocal", [loss_scale], {}, "loss_scale.reciprocal", ir.DataType.FLOAT
        )

        unscaled: list[ir.Value] = []
        for accumulator in accumulators:
            gradient = accumulator.inputs[1]
            buffer = accumulator.inputs[0]
            if gradient is None or buffer is None:
                raise TrainingError(f"accumulator {accumulator.name!r} has no gradient or buffer input")
            base = _gradient_name(buffer, gradient)
            gradient_fp32 = gradient
            if buffer.dtype not in (None, ir.DataType.FLOAT):
                raise TrainingError(f"accumulation buffer {buffer.name!r} is {buffer.dtype}, expected FLOAT")
            if gradient.dtype not in (None, ir.DataType.FLOAT):
                gradient_fp32 = builder.before(
                    accumulator,
                    "Cast",
                    [gradient],
                    {"to": ir.DataType.FLOAT},
                    f"{base}.fp32",
                    ir.DataType.FLOAT,
                )
            value = builder.before(
                accumulator, "Mul", [gradient_fp32, reciprocal], {}, f"{base}.unscaled", ir.DataType.FLOAT
            )
            value.shape = gradient.shape
            accumulator.replace_input_with(1, value)
            unscaled.append(value)

        flags = [self._any_not_finite(builder, value) for value in unscaled]
        total = builder.append("Sum", flags, {}, "loss_scaling.nonfinite_count", ir.DataType.FLOAT)
        as_bool = builder.append(
            "Cast", [total], {"to": ir.DataType.BOOL}, "loss_scaling.any_nonfinite", ir.DataType.BOOL
        )
        all_finite = builder.append("Not", [as_bool], {}, ALL_FINITE_OUTPUT, ir.DataType.BOOL)
        all_finite.shape = ir.Shape([])
        graph.outputs.append(all_finite)
        return ir.passes.PassResult(model, modified=True)

    @staticmethod
    def _any_not_finite(builder: _Builder, value: ir.Value) -> ir.Value:
        """1.0 if ``value`` holds an inf or NaN, else 0.0 (a FP32 scalar)."""
        name = value.name
        is_inf = builder.append("IsInf", [value], {}, f"{name}.is_inf", ir.DataType.BOOL)
        is_nan = builder.append("IsNaN", [value], {}, f"{name}.is_nan", ir.DataType.BOOL)
        bad = builder.append("Or", [is_inf, is_nan], {}, f"{name}.nonfinite", ir.DataType.BOOL)
        bad_float = builder.append(
            "Cast", [bad], {"to": ir.DataType.FLOAT}, f"{name}.nonfinite_float", ir.DataType.FLOAT
        )
        return builder.append(
            "ReduceMax", [bad_float], {"keepdims": 0}, f"{name}.any_nonfinite", ir.DataType.FLOAT
        )


def find_backward_seed(graph: ir.Graph) -> ir.Value:
    """The ``<loss>_grad`` initializer (1.0) that seeds the backward pass of the first graph output."""
    if not graph.outputs:
        raise TrainingError("the training graph has no outputs (no loss)")
    loss = graph.outputs[0]
    seed = graph.initializers.get(f"{loss.name}_grad")
    if seed is None or seed.const_value is None:
        raise TrainingError(
            f"no backward seed {loss.name + '_grad'!r} initializer for loss output {loss.name!r}"
        )
    values = seed.const_value.numpy()
    if values.size != 1 or float(np.asarray(values, dtype=np.float64).reshape(())) != 1.0:
        raise TrainingError(f"backward seed {seed.name!r} is not the scalar 1.0 (already scaled?)")
    return seed


def _loss_scale_position(graph: ir.Graph) -> int:
    """Right after the user inputs: before the first trainable parameter or accumulation buffer."""
    trainable = {
        value.name[: -len(ACCUMULATION_BUFFER_SUFFIX)]
        for value in graph.inputs
        if value.name and value.name.endswith(ACCUMULATION_BUFFER_SUFFIX)
    }
    for position, value in enumerate(graph.inputs):
        if value.name in trainable or (value.name or "").endswith(ACCUMULATION_BUFFER_SUFFIX):
            return position
    return len(graph.inputs)


def _gradient_name(buffer: ir.Value, gradient: ir.Value) -> str:
    """``<p>_grad`` for parameter ``p``, from its accumulation buffer's name."""
    suffix = ".accumulation.buffer"
    if buffer.name and buffer.name.endswith(suffix):
        return buffer.name[: -len(suffix)]
    return gradient.name or "gradient"


class _Builder:
    """Creates the pass's nodes with unique names, types and the ``loss-scaling`` stamp.

    Names come from the core's ``NameAuthority`` and Casts from its ``CastFactory``."""

    def __init__(self, model: ir.Model) -> None:
        self.graph = model.graph
        self.names = NameAuthority(model)
        self.casts = CastFactory(self.names)

    def _make(self, op_type: str, inputs, attributes, name: str, dtype: ir.DataType) -> ir.Node:
        if name.endswith("_grad"):
            name += "_"  # ORT treats names ending in _grad as gradients
        if op_type == "Cast":
            node = self.casts.make_cast_node(inputs[0], attributes["to"])
            node.outputs[0].name = self.names.unique(name)
        else:
            node = ir.node(
                op_type,
                inputs=inputs,
                attributes=attributes,
                outputs=[ir.Value(name=self.names.unique(name), type=ir.TensorType(dtype))],
            )
        node.name = self.names.unique(f"mpcompile/loss_scaling/{name}")
        computes_float = any(v is not None and v.dtype in (ir.DataType.FLOAT, None) for v in inputs)
        precision = Precision.FP32 if computes_float or dtype == ir.DataType.FLOAT else Precision.NONE
        stamp_decision(node, Decision(precision, Reason.LOSS_SCALING, RULE))
        return node

    def before(
        self, anchor: ir.Node, op_type: str, inputs, attributes, name: str, dtype: ir.DataType
    ) -> ir.Value:
        node = self._make(op_type, inputs, attributes, name, dtype)
        self.graph.insert_before(anchor, node)
        return node.outputs[0]

    def append(self, op_type: str, inputs, attributes, name: str, dtype: ir.DataType) -> ir.Value:
        node = self._make(op_type, inputs, attributes, name, dtype)
        self.graph.append(node)
        return node.outputs[0]
