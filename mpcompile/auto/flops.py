"""FLOPs per node, subgraphs included, at the shapes of the search's inputs (``mpcompile.report``'s estimates).

The search's FP16 FLOP share and the report's come from the same audit (``mpcompile.analysis.audit``),
so they count the same nodes: every node of every graph once, both branches of an If included.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir


def node_flops(
    model: ir.Model, feeds: Mapping[str, np.ndarray], values: Mapping[str, np.ndarray] | None = None
) -> dict[str, int]:
    """FLOPs of each named node of every graph the audit covers (0 where the estimate is unknown).

    ``values``: arrays of the model's values from a run on ``feeds`` (the reference run); their
    shapes are used where shape inference cannot tell (ops it does not know, such as the
    com.microsoft fusions of ``--optimize transformer``, and everything after them).
    """
    from mpcompile.analysis.audit import audit_model
    from mpcompile.evaluate.shapes import ShapeSpec

    spec = ShapeSpec(feed_shapes={name: tuple(np.shape(array)) for name, array in feeds.items()})
    if values:
        model = model.clone()  # tensors shared; only value shapes are annotated
        for node in model.graph:
            for value in node.outputs:
                array = values.get(value.name) if value.name else None
                if isinstance(array, np.ndarray):
                    value.shape = ir.Shape(array.shape)
                    if value.type is None:
                        value.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
    audit = audit_model(model, shapes=spec)
    return {node.name: int(node.flops or 0) for node in audit.nodes if node.name}
