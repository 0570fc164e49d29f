"""FLOPs per main-graph node at the shapes of the search's inputs (``mpcompile.report`` estimates)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir


def node_flops(
    model: ir.Model, feeds: Mapping[str, np.ndarray], values: Mapping[str, np.ndarray] | None = None
) -> dict[str, int]:
    """FLOPs of each named main-graph node (0 where the estimate is unknown).

    ``values``: arrays of the model's values from a run on ``feeds`` (the reference run); their
    shapes are used where shape inference cannot tell (ops it does not know, such as the
    com.microsoft fusions of ``--optimize transformer``, and everything after them).
    """
    from mpcompile.analysis.audit import MAIN_GRAPH, audit_model
    from mpcompile.analysis.shapes import ShapeSpec

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
    return {node.name: int(node.flops or 0) for node in audit.nodes if node.graph == MAIN_GRAPH and node.name}


def fp16_flop_share(model, feeds: Mapping[str, np.ndarray]) -> float:
    """Share of estimated FLOPs in low-precision nodes of any converted model (ours or another tool's).

    Precision comes from mpcompile's stamped decisions, else from the node's dtypes
    (``mpcompile.analysis.audit``); inserted Casts count 0 FLOPs.
    """
    from mpcompile.analysis.audit import audit_model
    from mpcompile.analysis.shapes import ShapeSpec

    spec = ShapeSpec(feed_shapes={name: tuple(np.shape(array)) for name, array in feeds.items()})
    audit = audit_model(model, shapes=spec)
    total = sum(node.flops or 0 for node in audit.nodes)
    low = sum(node.flops or 0 for node in audit.nodes if node.precision in ("fp16", "bf16"))
    return low / total if total else 0.0
