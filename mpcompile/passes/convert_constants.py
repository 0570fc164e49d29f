"""Convert float constants (initializers and Constant/ConstantOfShape values) read in low precision.

A constant read only by low-precision inputs is converted in place. One read by both
low-precision and FP32 inputs keeps its FP32 original and gets one low-precision copy.
Initializers that are also graph inputs are left alone (a Cast covers them, since the
caller may feed them). Conversion is lazy: values are converted while the model is
serialized, so external weights stream through memory one tensor at a time. Which reads
are low precision, and which attention masks to clamp, the plan says. Step 2 of
ApplyPrecisionPass.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mpcompile.core.casts import SUFFIX
from mpcompile.core.plan import Decision, PrecisionPlan, Reason, stamp_decision
from mpcompile.core.precision import LowPrecisionFormat
from mpcompile.core.ranges import SharedMaps
from mpcompile.irtools.names import NameAuthority
from mpcompile.irtools.values import set_dtype
from mpcompile.passes.base import PlanPass
from mpcompile.passes.context import ConversionContext

FLOAT = ir.DataType.FLOAT
# Tensors up to this size keep their converted copy in memory once made (serializing
# twice does not convert twice); larger ones convert again on every write, so converted
# weights never pile up in memory.
CACHE_LIMIT_BYTES = 2**20


class ConvertConstantsPass(PlanPass):
    """Give every low-precision read of a float constant a low-precision constant."""

    def __init__(self, context: ConversionContext, plan: PrecisionPlan, names: NameAuthority):
        super().__init__(context, plan)
        self.names = names
        # External FP32 weights are read through one map per file when they are converted
        # (while the model is saved): the converted tensors hold it, it is unmapped with them.
        self.maps = SharedMaps()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.names.bind(model)
        modified = False
        for graph, _ in self.graphs(model):
            for value in list(graph.initializers.values()):
                modified |= self._convert_initializer(graph, value)
            for node in list(graph):
                if node.domain == "" and node.op_type in ("Constant", "ConstantOfShape"):
                    modified |= self._convert_constant_node(graph, node)
        return ir.passes.PassResult(model, modified=modified)

    def _low_uses(self, value: ir.Value) -> tuple[list[ir.Usage], list[ir.Usage]]:
        low = self.context.low.dtype
        low_uses, other_uses = [], []
        for use in value.uses():
            (low_uses if self.plan.required_input_dtype(use.node, use.idx) == low else other_uses).append(use)
        return low_uses, other_uses

    def _clamps(self, value: ir.Value) -> bool:
        """Clamp an attention mask whose Softmax runs in low precision: its values will be."""
        return value in self.plan.clamped_masks

    def _convert_initializer(self, graph: ir.Graph, value: ir.Value) -> bool:
        if value.dtype != FLOAT or value.const_value is None or value.is_graph_input():
            return False
        low_uses, other_uses = self._low_uses(value)
        clamp = self._clamps(value)
        if not low_uses and not clamp:
            return False
        source = value.const_value
        self._count_range(value, clamp)
        if clamp:
            # Also in FP32: the product still reaches the low-precision Softmax through a Cast.
            value.const_value = _lazy(source, _clamped(self.context.low), FLOAT, cache=True, maps=self.maps)
            source = value.const_value
            if not low_uses:
                return True
        if other_uses or value.is_graph_output():
            copy = ir.Value(
                name=self.names.unique(f"{value.name}_{SUFFIX[self.context.low.dtype]}"),
                shape=value.shape,
                type=ir.TensorType(self.context.low.dtype),
                const_value=_lazy(source, self.context.low, self.context.low.dtype, maps=self.maps),
            )
            graph.register_initializer(copy)
            for use in low_uses:
                use.node.replace_input_with(use.idx, copy)
            self.context.stats.initializers_duplicated += 1
        else:
            value.const_value = _lazy(
                source,
                self.context.low,
                self.context.low.dtype,
                consume=self.context.serialized_once,
                maps=self.maps,
            )
            set_dtype(value, self.context.low.dtype)  # primer P4: keep Value and tensor in sync
            self.context.stats.initializers_converted += 1
        return True

    def _convert_constant_node(self, graph: ir.Graph, node: ir.Node) -> bool:
        output = node.outputs[0]
        low_uses, _ = self._low_uses(output)
        if node.op_type == "ConstantOfShape":
            if output.dtype != self.context.low.dtype:
                return False  # stayed FP32: readers that want low precision get a Cast
            node.attributes["value"] = ir.AttrTensor(
                "value", _constant_of_shape_value(node, self.context.low)
            )
            return True
        clamp = self._clamps(output)
        if output.dtype != self.context.low.dtype and not low_uses and not clamp:
            return False
        _float_attribute_as_tensor(node)
        attr = node.attributes.get("value")
        if attr is None or attr.type != ir.AttributeType.TENSOR or attr.as_tensor().dtype != FLOAT:
            return False
        tensor = attr.as_tensor()
        self._count_range(output, clamp)
        if clamp:
            tensor = ir.tensor(_clamped(self.context.low)(tensor.numpy()), name=tensor.name)
            node.attributes["value"] = ir.AttrTensor("value", tensor)
            if output.dtype != self.context.low.dtype and not low_uses:
                return True
        converted = ir.tensor(tensor.numpy().astype(self.context.low.numpy_dtype), name=tensor.name)
        if output.dtype == self.context.low.dtype:  # the node itself went low precision
            node.attributes["value"] = ir.AttrTensor("value", converted)
            return True
        copy = ir.node(
            "Constant",
            inputs=[],
            attributes={"value": converted},
            name=self.names.unique(f"{node.name or output.name}_{SUFFIX[self.context.low.dtype]}"),
        )
        copy.outputs[0].name = self.names.unique(f"{output.name}_{SUFFIX[self.context.low.dtype]}")
        set_dtype(copy.outputs[0], self.context.low.dtype)
        copy.outputs[0].shape = output.shape
        graph.insert_after(node, copy)
        self.plan[copy] = Decision(
            self.context.low.precision, Reason.CONSTANT, "low-precision copy of a shared constant"
        )
        stamp_decision(copy, self.plan[copy])
        for use in low_uses:
            use.node.replace_input_with(use.idx, copy.outputs[0])
        return True

    def _count_range(self, value: ir.Value, clamp: bool) -> None:
        measured = self.plan.constant_range(value, self.context.low)
        if measured is None:
            return
        stats = self.context.stats
        stats.values_flushed_to_zero += measured.flushed_to_zero
        stats.values_subnormal += measured.subnormal
        if clamp:
            stats.values_clamped += measured.overflowing


def _clamped(low: LowPrecisionFormat):
    def clamp(array: np.ndarray) -> np.ndarray:
        return np.clip(array, -low.max, low.max).astype(np.float32)

    return clamp


def _lazy(
    source: ir.TensorProtocol,
    convert,
    dtype: ir.DataType,
    cache: bool | None = None,
    consume: bool = False,
    maps: SharedMaps | None = None,
) -> ir.LazyTensor:
    """A tensor that converts ``source`` when serialized, releasing external sources.

    ``consume``: the model is serialized once and nothing else reads ``source``, so the FP32
    bytes of an embedded source are dropped once converted: the parsed input then shrinks as
    the output grows, instead of both being held whole. ``maps``: FP32 external sources are read
    through it (one map per file, ``ranges.SharedMaps``) instead of one onnx-ir load each.
    """
    to_array = convert if callable(convert) else (lambda array, fmt=convert: array.astype(fmt.numpy_dtype))

    def materialize(source=source, to_array=to_array) -> ir.Tensor:
        if maps is not None and isinstance(source, ir.ExternalTensor) and source.dtype == FLOAT:
            array = maps.read(source, to_array)  # a new array: to_array copies
        else:
            array = to_array(source.numpy())
            if isinstance(source, ir.ExternalTensor):
                source.release()
            elif consume and isinstance(source, ir.TensorProtoTensor):
                for field in ("raw_data", "float_data"):
                    source.raw.ClearField(field)
        return ir.Tensor(array, dtype=dtype, name=source.name)

    if cache is None:
        cache = source.nbytes <= CACHE_LIMIT_BYTES
    return ir.LazyTensor(materialize, dtype=dtype, shape=source.shape, name=source.name, cache=cache)


def _float_attribute_as_tensor(node: ir.Node) -> None:
    """Constant(value_float=...) / Constant(value_floats=...) -> Constant(value=tensor).

    Those attributes can only hold float32; a Constant that goes low precision needs a tensor.
    """
    for name in ("value_float", "value_floats"):
        attr = node.attributes.get(name)
        if attr is None:
            continue
        array = np.array(attr.as_float() if name == "value_float" else list(attr.as_floats()), np.float32)
        del node.attributes[name]
        node.attributes["value"] = ir.AttrTensor("value", ir.tensor(array, name=node.outputs[0].name))


def _constant_of_shape_value(node: ir.Node, low: LowPrecisionFormat) -> ir.Tensor:
    attr = node.attributes.get("value")
    array = attr.as_tensor().numpy() if attr is not None else np.zeros(1, dtype=np.float32)
    return ir.tensor(array.astype(low.numpy_dtype), name="value")
