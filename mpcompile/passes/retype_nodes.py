"""Retype low-precision nodes: their converted outputs and dtype-carrying attributes.

Which attributes carry a dtype is policy (``mpcompile.policy.dtype_attributes``). Reads the plan
only: the low-precision nodes and the typing the assignment saw for them (which outputs carry
the float data), and the main-graph inputs that go low precision (``keep_io_types``). The
dtype every input must have afterwards is in the plan too (AssignPrecisionPass recorded it
before anything changed type); InsertCastsPass reconciles the graph against it. Step 1 of ApplyPrecisionPass.
"""

from __future__ import annotations

import onnx_ir as ir

from mpcompile.irtools.graphs import node_opset
from mpcompile.irtools.values import set_dtype
from mpcompile.passes.base import PlanPass
from mpcompile.policy import dtype_attributes, op_types


class RetypeNodesPass(PlanPass):
    """Apply the plan's node decisions to value types and attributes."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        low = self.context.low.dtype
        plan = self.plan
        graphs = self.graphs(model)
        typings: dict[ir.Node, op_types.NodeTyping] = {}
        for graph, opset in graphs:  # every typing first, before any value changes type
            for node in graph:
                if plan.is_low(node):
                    typings[node] = plan.typing(node) or op_types.node_typing(
                        node, node_opset(node, opset, model.opset_imports), low
                    )
        for value, dtype in plan.input_dtypes.items():  # keep_io_types: the inputs that go low
            set_dtype(value, dtype)
        modified = bool(plan.input_dtypes)
        for graph, _ in graphs:
            for node in graph:
                _freeze_like_dtype(node)
                typing = typings.get(node)
                if typing is None:
                    continue
                for index in typing.float_outputs:
                    set_dtype(node.outputs[index], low)
                _retype_attributes(node, typing, low)
                modified = True
        return ir.passes.PassResult(model, modified=modified)


def _freeze_like_dtype(node: ir.Node) -> None:
    """*Like ops without `dtype` copy their input's type; pin it so input changes can't leak."""
    if node.domain != "" or node.op_type not in dtype_attributes.LIKE_OPS or "dtype" in node.attributes:
        return
    output_dtype = node.outputs[0].dtype
    if output_dtype is not None:
        node.attributes["dtype"] = ir.AttrInt64("dtype", output_dtype.value)


def _retype_attributes(node: ir.Node, typing: op_types.NodeTyping, low: ir.DataType) -> None:
    """The dtype-carrying attribute of a low-precision node's float output 0 (``dtype_attributes``)."""
    name = dtype_attributes.dtype_attribute(node)
    if name is not None and 0 in typing.float_outputs:
        node.attributes[name] = ir.AttrInt64(name, low.value)
