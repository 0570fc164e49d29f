"""Per-node sensitivity from one FP16-faithful run of the converted model, intermediates exposed.

Each node output of the converted model is compared with the same output of the FP32 reference
(``mpcompile.analysis.error_measures.normalized_error``: max |error| / max |reference|, inf for new
NaN/Inf, worst over batches). The error a node **introduces** is its own error minus the
largest error among the values it reads: rounding at that node, or amplification there of
its inputs' rounding (cancellation, as in ``(x + 1000) - 1000``).

For ops whose result numpy computes exactly (``EXACT_OPS``: Add, Sub, Mul, Div, Sum, Relu,
MatMul) the error introduced is also computed directly (``exact``), as the larger of

* its own rounding: ``max |y - f(x)|`` with ``x`` the candidate's own inputs, and
* its inputs' rounding as it amplifies it: ``max |f(fl(x_ref)) - f(x_ref)|``, ``fl`` rounding
  to the low-precision type (a cancelling Sub makes this large, a MatMul or Relu does not),

both over ``max |y_ref|``. "Its own error minus the error it reads" mixes up the error a node
amplifies from upstream (not fixable there) with what it adds: normalized by each value's own
max, a MatMul reading a large upstream error seems to introduce error where it passes it on.
The search uses ``exact`` to tell which items are needed for sure (those introducing more than
the tolerance allows); the ranking keeps the difference, which also reflects how a node's
error grows downstream and so ranks better when many small roundings add up.

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
from mpcompile.core.precision import LowPrecisionFormat
from mpcompile.core.ranges import constant_tensor

EXACT_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Sum", "Relu", "MatMul"})
# Ops whose outputs are some of their inputs' values, moved: they add no rounding of their own.
# What they seem to introduce is their inputs' conversion (an embedding table stored in FP16),
# which a low-precision consumer makes anyway, so keeping one FP32 alone changes nothing and they
# get no blame item (a consumer's item takes them along as its producers).
SELECTION_OPS = frozenset(
    {
        "Reshape", "Transpose", "Concat", "Slice", "Gather", "GatherElements", "GatherND", "Squeeze",
        "Unsqueeze", "Split", "Expand", "Tile", "Identity", "Flatten", "MaxPool", "GlobalMaxPool",
        "DepthToSpace", "SpaceToDepth", "ReduceMax", "ReduceMin", "Compress", "ReverseSequence",
    }
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class NodeSensitivity:
    name: str
    error: float  # normalized error of the node's outputs
    input_error: float  # largest normalized error among the values it reads
    introduced: float  # error - input_error (>= 0)
    exact: float | None = None  # computed directly (EXACT_OPS only)


@dataclasses.dataclass(frozen=True)
class BlameItem:
    """Nodes the search keeps FP32 together, and why."""

    node: str  # the sensitive node
    members: tuple[str, ...]  # node first, then its low-precision producers
    score: float  # error introduced at ``node``
    exact: float | None = None  # the same, computed directly (EXACT_OPS only)


def measure(
    original: Mapping[str, ir.Node],
    converted: Mapping[str, ir.Node],
    reference: Sequence[Mapping[str, np.ndarray]],
    candidate: Sequence[Mapping[str, np.ndarray]],
    fmt: LowPrecisionFormat | None = None,
) -> dict[str, NodeSensitivity]:
    """Sensitivity of every original main-graph node found in both runs (matched by node name).

    ``reference``: the FP32 run's values per batch (graph inputs included); ``candidate``: the
    converted model's. With ``fmt`` (the low-precision type), ``EXACT_OPS`` nodes get their
    introduced error computed directly (module docstring)."""
    from mpcompile.analysis.error_measures import normalized_error

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
        exact = _exact_introduced(original[name], converted.get(name), reference, candidate, fmt)
        sensitivities[name] = NodeSensitivity(name, error, read, introduced, exact)
    return sensitivities


def _exact_introduced(
    node: ir.Node,
    twin: ir.Node | None,
    reference: Sequence[Mapping[str, np.ndarray]],
    candidate: Sequence[Mapping[str, np.ndarray]],
    fmt: LowPrecisionFormat | None,
) -> float | None:
    """The error an ``EXACT_OPS`` node introduces (own rounding or amplified input rounding, the
    larger, worst over batches); None when an input or output is not available."""
    if fmt is None or twin is None or node.domain not in ("", "ai.onnx") or node.op_type not in EXACT_OPS:
        return None
    if len(node.outputs) != 1 or len(twin.inputs) != len(node.inputs) or not node.outputs[0].name:
        return None
    worst = 0.0
    for ref_batch, got_batch in zip(reference, candidate, strict=True):
        ref_inputs = [_lookup(value, ref_batch) for value in node.inputs]
        got_inputs = [
            _candidate_input(value, original, got_batch, ref_batch)
            for value, original in zip(twin.inputs, node.inputs, strict=True)
        ]
        ref_out = ref_batch.get(node.outputs[0].name)
        got_out = got_batch.get(twin.outputs[0].name) if twin.outputs[0].name else None
        if ref_out is None or got_out is None or any(x is None for x in (*ref_inputs, *got_inputs)):
            return None
        ref_out, got_out = _float64(ref_out), _float64(got_out)
        scale = float(np.max(np.abs(ref_out[np.isfinite(ref_out)]), initial=0.0))
        if scale == 0:
            continue
        with np.errstate(all="ignore"):
            own = _max_abs(got_out - _apply(node.op_type, got_inputs))
            rounded = [array.astype(fmt.numpy_dtype).astype(np.float64) for array in ref_inputs]
            amplified = _max_abs(_apply(node.op_type, rounded) - _apply(node.op_type, ref_inputs))
        worst = max(worst, own / scale, amplified / scale)
    return worst


def _lookup(value: ir.Value | None, batch: Mapping[str, np.ndarray]) -> np.ndarray | None:
    if value is None:
        return None
    if value.name in batch:
        return _float64(batch[value.name])
    tensor = constant_tensor(value)
    return _float64(tensor.numpy()) if tensor is not None else None


def _candidate_input(
    value: ir.Value | None,
    original: ir.Value | None,
    batch: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
) -> np.ndarray | None:
    """A converted node's input in the candidate run; graph inputs are fed as in the reference."""
    found = _lookup(value, batch)
    if found is None and original is not None and original.is_graph_input():
        found = _lookup(original, reference)
    return found


def _float64(array) -> np.ndarray:
    return np.asarray(array).astype(np.float64)


def _apply(op_type: str, inputs: Sequence[np.ndarray]) -> np.ndarray:
    if op_type == "Relu":
        return np.maximum(inputs[0], 0.0)
    if op_type == "MatMul":
        return np.matmul(inputs[0], inputs[1])
    if op_type == "Sum":
        total = inputs[0]
        for array in inputs[1:]:
            total = total + array
        return total
    operator = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op_type]
    return operator(inputs[0], inputs[1])


def _max_abs(array: np.ndarray) -> float:
    """Max |x| over finite elements; inf if any element is not finite."""
    if not np.all(np.isfinite(array)):
        return math.inf
    return float(np.max(np.abs(array), initial=0.0))


def blame_items(
    nodes: Mapping[str, ir.Node],
    low: Sequence[str],
    sensitivities: Mapping[str, NodeSensitivity],
    flops: Mapping[str, int],
    unit_roundoff: float = 2.0**-11,
) -> list[BlameItem]:
    """One blame cone per low-precision node (``SELECTION_OPS`` excepted), most sensitive first:
    by band of the error introduced (``sensitivity_band``), then fewer FLOPs, then graph order."""
    low_set = set(low)
    order = {name: index for index, name in enumerate(nodes)}
    items = []
    for name in low:
        if nodes[name].domain == "" and nodes[name].op_type in SELECTION_OPS:
            continue
        sensitivity = sensitivities.get(name)
        score = sensitivity.introduced if sensitivity is not None else 0.0
        exact = sensitivity.exact if sensitivity is not None else None
        members = [name] + [p.name for p in producers(nodes[name]) if p.name in low_set and p.name != name]
        items.append(BlameItem(name, tuple(members), score, exact))
    items.sort(
        key=lambda item: (
            -sensitivity_band(item.score, unit_roundoff),
            sum(flops.get(m, 0) for m in item.members),
            order[item.node],
        )
    )
    return items


def sensitivity_band(score: float, unit_roundoff: float) -> int:
    """Sensitivity to within a factor of four, bands aligned so that ``[u/2, 2u)`` is band 0.

    One rounding to the low-precision type (unit roundoff ``u``) shows in this measure as
    anything from about ``u/4`` to ``u`` (the element with the largest error need not be the
    largest element, and rounding errors are spread over ``[0, u·|x|]``), so nodes that each add
    one rounding cannot be told apart finer than that; items in the same band count as equally
    sensitive and the cheapest (fewest FLOPs) comes first."""
    if math.isinf(score):
        return 10_000
    if score <= 0:
        return -10_000
    return math.floor(math.log2(score / (unit_roundoff / 2)) / 2)
