"""Multi-axis Unsqueeze rewritten as the single-axis chain ORT's attention-mask patterns expect."""

from __future__ import annotations

import onnx_ir as ir

from mpcompile.irtools.graphs import model_graphs
from mpcompile.irtools.names import NameAuthority


def split_multi_axis_unsqueeze(model: ir.Model) -> ir.Model:
    """Rewrite each ``Unsqueeze`` with several constant axes as a chain of single-axis Unsqueezes.

    The two forms compute the same thing (axes index the output, so inserting them in ascending
    order one at a time is exact), but ORT's transformer fusions only recognise the chained form
    that ``torch.onnx`` exports for ``mask[:, None, None, :]``; the one-node form (other exporters,
    hand-built graphs) would leave the attention mask path, and so the Attention fusion, unmatched.
    Nodes with negative axes on inputs of unknown rank are left alone. New nodes and initializers
    are named by one ``NameAuthority``. Changes ``model`` in place.
    """
    opset = model.opset_imports.get("", 1)
    names: NameAuthority | None = None
    for graph in model_graphs(model):
        for node in list(graph):
            if node.op_type != "Unsqueeze" or node.domain not in ("", "ai.onnx"):
                continue
            axes = _unsqueeze_axes(node, opset)
            if axes is None or len(axes) < 2:
                continue
            output_rank = None if node.inputs[0].shape is None else len(node.inputs[0].shape) + len(axes)
            if any(axis < 0 for axis in axes):
                if output_rank is None:
                    continue
                axes = [axis % output_rank for axis in axes]
            names = names or NameAuthority(model)
            _replace_with_chain(graph, node, sorted(axes), opset, names)
    return model


def _unsqueeze_axes(node: ir.Node, opset: int) -> list[int] | None:
    if opset < 13:
        attribute = node.attributes.get("axes")
        return list(attribute.as_ints()) if attribute is not None else None
    if len(node.inputs) < 2 or node.inputs[1] is None:
        return None
    axes = ir.convenience.get_const_tensor(node.inputs[1])
    return [int(axis) for axis in axes.numpy().reshape(-1)] if axes is not None else None


def _replace_with_chain(
    graph: ir.Graph, node: ir.Node, axes: list[int], opset: int, names: NameAuthority
) -> None:
    current = node.inputs[0]
    chain = []
    for position, axis in enumerate(axes):
        name = names.unique(f"{node.name or 'Unsqueeze'}_axis{axis}")
        if opset < 13:
            step = ir.node("Unsqueeze", [current], {"axes": [axis]}, name=name)
        else:
            axis_value = ir.Value(
                name=names.unique(f"{name}_axes"), const_value=ir.tensor([axis], dtype=ir.DataType.INT64)
            )
            axis_value.dtype, axis_value.shape = ir.DataType.INT64, ir.Shape([1])
            graph.register_initializer(axis_value)
            step = ir.node("Unsqueeze", [current, axis_value], name=name)
        step.outputs[0].name = names.unique(f"{name}_output")
        if node.outputs[0].dtype is not None:
            step.outputs[0].dtype = node.outputs[0].dtype
        if position == len(axes) - 1:
            step.outputs[0].shape = node.outputs[0].shape
        chain.append(step)
        current = step.outputs[0]
    graph.insert_before(node, chain)
    old_output = node.outputs[0]
    old_output.replace_all_uses_with(current, replace_graph_outputs=True)
    # The last step takes over the original output's name (graph outputs keep theirs).
    current.name, old_output.name = old_output.name, None
    graph.remove(node, safe=True)
