"""Where does the accuracy go: per-node FP32 ranges, FP16 overflow/underflow, per-node error.

The FP32 reference (the original model, or the audited model itself when no original is
given) runs in onnxruntime with every main-graph intermediate exposed as an output. For
each node this gives the FP32 max |x| and the share of values that would overflow, become
subnormal, or flush to zero when stored in the low-precision type (numpy/ml_dtypes
rounding, round-to-nearest-even).

The converted model is evaluated node by node (``evaluate_node_by_node``): every node runs
in its own onnxruntime session on the stored outputs of its producers, so each
low-precision tensor is materialized, rounded and range-limited exactly at node boundaries
(a whole-graph CPU run may compute FP16 nodes without a kernel in FP32 and drop the Casts
between them, which hides overflow). Inside one node the arithmetic is whatever the CPU
kernel does (FP16 nodes without an FP16 CPU kernel compute in FP32 and round the result).
All numbers are measured on CPU (CPUExecutionProvider).

Error attribution: a node's error is the max abs difference to the FP32 reference over
its outputs, divided by the reference's max |x|. The error a node *introduces* is its error
minus the largest error among the values it reads (inserted Casts are looked through), so
the node where the error first appears gets it, not everything downstream.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.analysis

from mpcompile.errors import MpcompileError, RuntimeMissingError
from mpcompile.precision import LowPrecisionFormat, low_precision_format
from mpcompile.report.audit import ModelAudit, NodeAudit
from mpcompile.report.compare import match_key
from mpcompile.report.shapes import ReportOptionError

INPUT_SEED = 0
# A node "introduces" error when its normalized error grows by more than this.
ERROR_SOURCE_THRESHOLD = 1e-2
TOP_SOURCES = 5
EVALUATION = (
    "node-by-node onnxruntime CPU evaluation: every tensor stored in its converted dtype at node "
    "boundaries (mpcompile.report.numerics); measured on CPU"
)


class NumericsError(MpcompileError):
    """The numerics run could not be done (bad inputs file, a model ORT cannot run)."""


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeMissingError("--numerics needs onnxruntime: pip install 'mpcompile[cpu]'") from None
    return onnxruntime


# ---------------------------------------------------------------- inputs


def load_inputs(path: str | pathlib.Path, model: ir.Model) -> dict[str, np.ndarray]:
    """Read feeds from an .npz file keyed by input name; cast to the inputs' dtypes."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise ReportOptionError(f"--inputs {path}: cannot read as .npz ({exc})") from None
    missing = [v.name for v in model.graph.inputs if v.name not in arrays]
    if missing:
        raise ReportOptionError(f"--inputs {path}: no array for model input(s) {missing}")
    return cast_feeds(arrays, model)


def generate_inputs(model: ir.Model, seed: int = INPUT_SEED) -> dict[str, np.ndarray]:
    """Deterministic feeds for inputs with static shapes: floats ~ N(0, 1), integers and bools 1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.inputs:
        if value.shape is None or value.dtype is None or not value.shape.is_static():
            raise NumericsError(f"input {value.name!r} has no static shape; give it with --shape")
        shape = tuple(int(d) for d in value.shape)
        numpy_dtype = value.dtype.numpy()
        if value.dtype.is_floating_point():
            feeds[value.name] = rng.standard_normal(shape).astype(numpy_dtype)
        else:
            feeds[value.name] = np.ones(shape, dtype=numpy_dtype)
    return feeds


def cast_feeds(feeds: dict[str, np.ndarray], model: ir.Model) -> dict[str, np.ndarray]:
    """Feeds for ``model``: each array cast to the dtype its input declares."""
    out = {}
    for value in model.graph.inputs:
        array = np.asarray(feeds[value.name])
        if value.dtype is not None:
            array = array.astype(value.dtype.numpy(), copy=False)
        out[value.name] = array
    return out


# ---------------------------------------------------------------- runs


def _session(proto: onnx.ModelProto):
    ort = _ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_with_intermediates(model: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the whole model once with every typed main-graph node output exposed; name -> array."""
    work = model.clone()
    ir.external_data.load_to_model(work)
    exposed = {v.name for v in work.graph.outputs}
    for node in work.graph:
        for value in node.outputs:
            if value.name and value.name not in exposed and isinstance(value.type, ir.TensorType):
                work.graph.outputs.append(value)
                exposed.add(value.name)
    proto = ir.to_proto(work)
    try:
        session = _session(proto)
        names = [o.name for o in session.get_outputs()]
        results = session.run(names, cast_feeds(feeds, work))
    except Exception as exc:
        raise NumericsError(f"onnxruntime could not run the FP32 reference: {_first_line(exc)}") from None
    return {
        name: np.asarray(array)
        for name, array in zip(names, results, strict=True)
        if isinstance(array, np.ndarray)
    }


def evaluate_node_by_node(
    model: ir.Model, feeds: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Run each main-graph node in its own session; returns (value name -> array, failed node names)."""
    work = model.clone()
    ir.external_data.load_to_model(work)
    env: dict[str, np.ndarray] = dict(cast_feeds(feeds, work))
    for value in work.graph.initializers.values():
        if value.const_value is not None and value.name:
            env.setdefault(value.name, value.const_value.numpy())
    captured = onnx_ir.analysis.analyze_implicit_usage(work.graph)
    opsets = [onnx.helper.make_opsetid(domain, version) for domain, version in work.opset_imports.items()]
    failed: list[str] = []
    for node in work.graph:
        needed = [v for v in node.inputs if v is not None and v.name]
        for attr in node.attributes.values():
            graphs = []
            if attr.type == ir.AttributeType.GRAPH:
                graphs = [attr.as_graph()]
            elif attr.type == ir.AttributeType.GRAPHS:
                graphs = list(attr.as_graphs())
            for graph in graphs:
                needed.extend(v for v in captured.get(graph, ()) if v.graph is work.graph)
        names = list(dict.fromkeys(v.name for v in needed))
        if any(name not in env for name in names):
            failed.append(node.name or node.op_type)
            continue
        try:
            results = _run_single_node(node, {name: env[name] for name in names}, opsets, work.ir_version)
        except Exception:
            failed.append(node.name or node.op_type)
            continue
        for value, array in zip(node.outputs, results, strict=True):
            if value.name and isinstance(array, np.ndarray):
                env[value.name] = array
    return env, failed


def _run_single_node(node: ir.Node, inputs: dict[str, np.ndarray], opsets, ir_version: int) -> list[Any]:
    helper = onnx.helper
    graph_inputs = [
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype), None)
        for name, array in inputs.items()
    ]
    graph_outputs = [
        helper.make_tensor_value_info(v.name, v.dtype.value, None)
        if v.dtype is not None
        else helper.make_value_info(v.name, onnx.TypeProto())
        for v in node.outputs
        if v.name
    ]
    graph = helper.make_graph([ir.serde.serialize_node(node)], "node", graph_inputs, graph_outputs)
    proto = helper.make_model(graph, opset_imports=opsets, ir_version=min(ir_version or 10, 10))
    session = _session(proto)
    by_name = dict(zip([o.name for o in graph_outputs], session.run(None, inputs), strict=True))
    return [by_name.get(v.name) for v in node.outputs]


# ---------------------------------------------------------------- measurements


def range_stats(array: np.ndarray, fmt: LowPrecisionFormat) -> dict[str, float] | None:
    """FP32 max |x| and shares that overflow / become subnormal / flush to zero in ``fmt``."""
    if array.dtype.kind != "f" or array.size == 0:
        return None
    x = array.astype(np.float32, copy=False)
    finite = np.isfinite(x)
    with np.errstate(over="ignore"):  # overflow to inf is what we are counting
        low = x.astype(fmt.numpy_dtype).astype(np.float32)
    overflow = finite & ~np.isfinite(low)
    to_zero = finite & (x != 0) & (low == 0)
    subnormal = np.isfinite(low) & (low != 0) & (np.abs(low) < fmt.tiny)
    size = float(x.size)
    return {
        "max_abs": float(np.max(np.abs(x[finite]))) if finite.any() else math.nan,
        "overflow_share": float(overflow.sum()) / size,
        "subnormal_share": float(subnormal.sum()) / size,
        "zero_share": float(to_zero.sum()) / size,
    }


def _merge_ranges(stats: list[dict[str, float]]) -> dict[str, float] | None:
    if not stats:
        return None
    if len(stats) == 1:
        return stats[0]
    return {
        "max_abs": max(s["max_abs"] for s in stats),
        "overflow_share": max(s["overflow_share"] for s in stats),
        "subnormal_share": max(s["subnormal_share"] for s in stats),
        "zero_share": max(s["zero_share"] for s in stats),
    }


def normalized_error(got: np.ndarray, ref: np.ndarray) -> tuple[float, float] | None:
    """(max abs error, max abs error / max |ref|); inf where got is not finite but ref is."""
    if got.shape != ref.shape or ref.dtype.kind != "f" or got.dtype.kind != "f":
        return None
    g, r = got.astype(np.float64), ref.astype(np.float64)
    if (np.isfinite(r) & ~np.isfinite(g)).any():
        return math.inf, math.inf
    finite = np.isfinite(r)
    if not finite.any():
        return 0.0, 0.0
    err = float(np.max(np.abs(g[finite] - r[finite])))
    scale = float(np.max(np.abs(r[finite])))
    return err, (err / scale if scale > 0 else (0.0 if err == 0 else math.inf))


def _low_precision_name(audit: ModelAudit) -> str:
    name = audit.mpcompile.get("mpcompile.low_precision")
    if name in ("fp16", "bf16"):
        return name
    precisions = {n.precision for n in audit.nodes}
    return "bf16" if "bf16" in precisions and "fp16" not in precisions else "fp16"


def attach_numerics(
    audit: ModelAudit,
    model: ir.Model,
    *,
    original: ir.Model | None = None,
    original_audit: ModelAudit | None = None,
    inputs: str | pathlib.Path | None = None,
) -> None:
    """Fill ``node.numerics`` and ``audit.numerics`` (in place).

    ``model`` and ``original`` are the shape-resolved models the audits were built from
    (``ModelAudit.model``). Without an original, the audited model is its own reference
    and only ranges are reported.
    """
    fmt = low_precision_format(_low_precision_name(audit))
    reference_model = original if original is not None else model
    reference_audit = original_audit if original_audit is not None else audit
    feeds = load_inputs(inputs, reference_model) if inputs else generate_inputs(reference_model)
    reference = run_with_intermediates(reference_model, feeds)

    ranges_by_key: dict[tuple[str, str], dict[str, float] | None] = {}
    for node in reference_audit.nodes:
        stats = [range_stats(reference[name], fmt) for name in node.output_names if name in reference]
        ranges_by_key[match_key(node)] = _merge_ranges([s for s in stats if s is not None])
    originals = {match_key(n): n for n in reference_audit.nodes}

    candidate: dict[str, np.ndarray] = {}
    failed: list[str] = []
    if original is not None:
        candidate, failed = evaluate_node_by_node(model, feeds)

    value_error: dict[str, float] = {}  # converted value name -> normalized error
    for node in audit.nodes:
        key = match_key(node)
        ranges = ranges_by_key.get(key)
        entry: dict[str, Any] = {
            **(ranges or {}),
            "error_abs": None,
            "error_rel": None,
            "error_introduced": None,
        }
        before = originals.get(key) if original is not None else None
        if before is not None and node.graph == "main":
            errors = []
            for got_name, ref_name in zip(node.output_names, before.output_names, strict=False):
                if got_name in candidate and ref_name in reference:
                    result = normalized_error(candidate[got_name], reference[ref_name])
                    if result is not None:
                        errors.append(result)
                        value_error[got_name] = result[1]
            if errors:
                entry["error_abs"] = max(e[0] for e in errors)
                entry["error_rel"] = max(e[1] for e in errors)
        node.numerics = entry if ranges or entry["error_rel"] is not None else None

    if original is not None:
        _attribute_errors(audit, model, value_error)
    audit.numerics = _numerics_summary(
        audit, fmt, inputs, original is not None, failed, model, candidate, reference
    )


def _attribute_errors(audit: ModelAudit, model: ir.Model, value_error: dict[str, float]) -> None:
    """Set ``error_introduced`` = node error - largest error of what it reads (Casts looked through)."""
    producers = {v.name: node for node in model.graph for v in node.outputs if v.name}
    memo: dict[str, float] = {}

    def upstream(name: str, depth: int = 0) -> float:
        if name in value_error:
            return value_error[name]
        if name in memo:
            return memo[name]
        producer = producers.get(name)
        if producer is None or depth > 50:
            return 0.0
        memo[name] = max(
            (upstream(v.name, depth + 1) for v in producer.inputs if v is not None and v.name), default=0.0
        )
        return memo[name]

    by_outputs = {tuple(n.output_names): n for n in audit.nodes if n.graph == "main"}
    for node in model.graph:
        audit_node = by_outputs.get(tuple(v.name or "" for v in node.outputs))
        if audit_node is None or audit_node.numerics is None or audit_node.numerics.get("error_rel") is None:
            continue
        own = audit_node.numerics["error_rel"]
        read = max((upstream(v.name) for v in node.inputs if v is not None and v.name), default=0.0)
        if math.isinf(own):
            introduced = 0.0 if math.isinf(read) else math.inf
        else:
            introduced = max(0.0, own - read) if not math.isinf(read) else 0.0
        audit_node.numerics["error_introduced"] = introduced


def _numerics_summary(
    audit: ModelAudit,
    fmt: LowPrecisionFormat,
    inputs,
    has_original: bool,
    failed: list[str],
    model: ir.Model,
    candidate: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
) -> dict[str, Any]:
    with_numerics = [n for n in audit.nodes if n.numerics]
    overflow = [n for n in with_numerics if (n.numerics or {}).get("overflow_share")]
    sources = [
        n
        for n in with_numerics
        if (n.numerics or {}).get("error_introduced") is not None
        and n.numerics["error_introduced"] > ERROR_SOURCE_THRESHOLD  # type: ignore[index]
    ]
    sources.sort(key=lambda n: (-n.numerics["error_introduced"], n.index))  # type: ignore[index]
    outputs = {}
    if has_original:
        for value in model.graph.outputs:
            if value.name in candidate and value.name in reference:
                result = normalized_error(candidate[value.name], reference[value.name])
                if result is not None:
                    outputs[value.name] = {"error_abs": result[0], "error_rel": result[1]}
    notes = []
    if any(n.graph != "main" for n in audit.nodes):
        notes.append(
            "Subgraph (If/Loop/Scan body) intermediates are not exposed; their rows have no numerics."
        )
    if not has_original:
        notes.append(
            "No original given (--compare): the audited model is its own reference; no error columns."
        )
    if failed:
        notes.append(f"{len(failed)} node(s) could not be evaluated node by node: {failed[:5]}")
    return {
        "low_precision": fmt.precision.value,
        "inputs": str(inputs)
        if inputs
        else f"generated (seed {INPUT_SEED}: floats N(0,1), integers and bools 1)",
        "reference": "original" if has_original else "audited model",
        "evaluation": EVALUATION if has_original else None,
        "overflow_nodes": [_ref(n) for n in overflow],
        "error_sources": [
            {
                **_ref(n),
                "error_introduced": n.numerics["error_introduced"],
                "error_rel": n.numerics["error_rel"],
            }  # type: ignore[index]
            for n in sources[:TOP_SOURCES]
        ],
        "output_errors": outputs,
        "notes": notes,
    }


def _ref(node: NodeAudit) -> dict[str, str]:
    return {"name": node.name, "graph": node.graph, "op_type": node.op_type}


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
