"""Per-node sensitivity from one FP16-faithful run of the converted model, intermediates exposed.

Each node output of the converted model is compared with the same output of the FP32 reference
(``mpcompile.report.numerics.normalized_error``: max |error| / max |reference|, inf for new
NaN/Inf, worst over batches). The error a node **introduces** is its own error minus the
largest error among the values it reads: rounding at that node, or amplification there of
its inputs' rounding (cancellation, as in ``(x + 1000) - 1000``).

The remedy the search tries for a sensitive node is a **blame cone**: the node and the
low-precision nodes producing its inputs. Amplified error comes from the inputs being stored
in low precision, so keeping only the node itself FP32 would not help.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from mpcompile.auto.graph import producers


@dataclasses.dataclass(frozen=True)
class NodeSensitivity:
    name: str
    error: float  # normalized error of the node's outputs
    input_error: float  # largest normalized error among the values it reads
    introduced: float  # error - input_error (>= 0)


@dataclasses.dataclass(frozen=True)
class BlameItem:
    """Nodes the search keeps FP32 together, and why."""

    node: str  # the sensitive node
    members: tuple[str, ...]  # node first, then its low-precision producers
    score: float  # error introduced at ``node``


def measure(
    original: Mapping[str, ir.Node],
    converted: Mapping[str, ir.Node],
    reference: Sequence[Mapping[str, np.ndarray]],
    candidate: Sequence[Mapping[str, np.ndarray]],
) -> dict[str, NodeSensitivity]:
    """Sensitivity of every original main-graph node found in both runs (matched by node name)."""
    from mpcompile.report.numerics import normalized_error

    value_error: dict[str, float] = {}
    node_error: dict[str, float] = {}
    for name, node in original.items():
        twin = converted.get(name)
        if twin is None or len(twin.outputs) != len(node.outputs):
            continue
        errors = []
        for before, after in zip(node.outputs, twin.outputs, strict=True):
            if not before.name or not after.name:
                continue
            worst = None
            for ref_batch, got_batch in zip(reference, candidate, strict=True):
                if before.name not in ref_batch or after.name not in got_batch:
                    continue
                result = normalized_error(
                    np.asarray(got_batch[after.name]), np.asarray(ref_batch[before.name])
                )
                if result is not None:
                    worst = result[1] if worst is None else max(worst, result[1])
            if worst is not None:
                value_error[before.name] = worst
                errors.append(worst)
        if errors:
            node_error[name] = max(errors)
    sensitivities = {}
    for name, error in node_error.items():
        read = max(
            (value_error.get(v.name, 0.0) for v in original[name].inputs if v is not None and v.name),
            default=0.0,
        )
        if math.isinf(error):
            introduced = 0.0 if math.isinf(read) else math.inf
        else:
            introduced = 0.0 if math.isinf(read) else max(0.0, error - read)
        sensitivities[name] = NodeSensitivity(name, error, read, introduced)
    return sensitivities


def blame_items(
    nodes: Mapping[str, ir.Node],
    low: Sequence[str],
    sensitivities: Mapping[str, NodeSensitivity],
    flops: Mapping[str, int],
) -> list[BlameItem]:
    """One blame cone per low-precision node, most sensitive first: by octave of the error
    introduced, then fewer FLOPs, then graph order."""
    low_set = set(low)
    order = {name: index for index, name in enumerate(nodes)}
    items = []
    for name in low:
        sensitivity = sensitivities.get(name)
        score = sensitivity.introduced if sensitivity is not None else 0.0
        members = [name] + [p.name for p in producers(nodes[name]) if p.name in low_set and p.name != name]
        items.append(BlameItem(name, tuple(members), score))
    items.sort(
        key=lambda item: (-_octave(item.score), sum(flops.get(m, 0) for m in item.members), order[item.node])
    )
    return items


def _octave(score: float) -> int:
    """Sensitivity to within a factor of two: one run on one input set measures no finer, so
    items in the same octave count as equally sensitive and the cheapest (fewest FLOPs) comes first."""
    if math.isinf(score):
        return 10_000
    if score <= 0:
        return -10_000
    return math.floor(math.log2(score))
