"""Where does the accuracy go: per-node FP32 ranges, FP16 overflow/underflow, per-node error.

The FP32 reference (the original model, or the audited model itself when no original is
given) runs with every main-graph intermediate exposed (``mpcompile.evaluate.faithful.
run_reference``). For each node this gives the FP32 max |x| and the share of values that
would overflow, become subnormal, or flush to zero when stored in the low-precision type
(numpy/ml_dtypes rounding, round to nearest even).

The converted model runs in the FP16-faithful CPU evaluation (``mpcompile.evaluate.faithful.
run``): all arithmetic in FP32 and every FP16/BF16 node output rounded to its declared type,
as a GPU kernel that accumulates in FP32 stores it (ORT's CPU EP alone would hide overflow
by computing kernel-less FP16 nodes in FP32 and dropping Casts). All numbers are measured on
CPU (CPUExecutionProvider).

Error attribution: a node's error is the max abs difference to the FP32 reference over its
outputs, divided by the reference's max |x|. The error a node *introduces* is its error minus
the largest error among the values it reads (inserted Casts are looked through), so the node
where the error first appears gets it, not everything downstream.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx_ir as ir

from mpcompile.analysis.audit import ModelAudit, NodeAudit
from mpcompile.analysis.error_measures import is_float_array, normalized_error
from mpcompile.core.precision import LowPrecisionFormat, low_precision_format
from mpcompile.errors import ExitCode, MpcompileError
from mpcompile.evaluate import memory_limit
from mpcompile.evaluate.run_memory import values_bytes
from mpcompile.report.compare import match_key

INPUT_SEED = 0
# A node "introduces" error when its normalized error grows by more than this.
ERROR_SOURCE_THRESHOLD = 1e-2
TOP_SOURCES = 5
EVALUATION = (
    "FP16-faithful CPU evaluation (mpcompile.evaluate.faithful): FP32 arithmetic, every FP16/BF16 "
    "node output rounded to its declared type; measured on CPU"
)


class NumericsError(MpcompileError):
    """onnxruntime's CPU EP could not run the reference or converted model (the model's fault: no
    execution provider was asked for)."""

    exit_code = ExitCode.INVALID_MODEL


def load_feeds(path: str | os.PathLike, model: ir.Model | None = None) -> dict[str, np.ndarray]:
    """The first batch of feeds in an .npz file (or folder of them), by input name; with
    ``model``, their headers are checked against its inputs before any array is read."""
    from mpcompile.evaluate import inputs

    return inputs.load_inputs(inputs.input_files(path)[0], model)[0]


def feeds_for(model: ir.Model, feeds: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Checked feeds for ``model``, generated (seeded) when none are given."""
    from mpcompile.evaluate import inputs

    if feeds is None:
        return inputs.generate_inputs(model, seed=INPUT_SEED)[0]
    inputs.check_feeds(model, feeds, source="--inputs")
    return inputs.cast_feeds(model, feeds)


def _evaluate(kind: str, model: ir.Model, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    from mpcompile.evaluate import faithful
    from mpcompile.evaluate.ort_session import is_onnxruntime_error

    run = faithful.run if kind == "converted" else faithful.run_reference
    try:
        return run(model, feeds, intermediates=True)
    except MpcompileError:
        raise
    except Exception as exc:
        if not is_onnxruntime_error(exc):
            raise
        what = "FP32 reference" if kind == "reference" else "converted"
        raise NumericsError(f"onnxruntime cannot run the {what} model: {_first_line(exc)}") from None


# ---------------------------------------------------------------- measurements


def range_stats(array: np.ndarray, fmt: LowPrecisionFormat) -> dict[str, float] | None:
    """FP32 max |x| and shares that overflow / become subnormal / flush to zero in ``fmt``."""
    if not is_float_array(array) or array.size == 0:
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
    feeds: Mapping[str, np.ndarray] | None = None,
    inputs: str | os.PathLike | None = None,
    inputs_label: str | None = None,
) -> None:
    """Fill ``node.numerics`` and ``audit.numerics`` (in place).

    ``model`` and ``original`` are the shape-resolved models the audits were built from
    (``ModelAudit.model``). Without an original, the audited model is its own reference
    and only ranges are reported. ``feeds``: None to read ``inputs`` (an .npz path) or, without
    it, to generate seeded inputs.
    """
    fmt = low_precision_format(_low_precision_name(audit))
    reference_model = original if original is not None else model
    reference_audit = original_audit if original_audit is not None else audit
    memory_limit.check_fits(values_bytes(reference_model), "the FP32 reference run (every intermediate kept)")
    if feeds is None and inputs is not None:
        feeds = load_feeds(inputs, reference_model)
    feeds = feeds_for(reference_model, feeds)
    reference = _evaluate("reference", reference_model, feeds)

    ranges_by_key: dict[tuple[str, str], dict[str, float] | None] = {}
    for node in reference_audit.nodes:
        stats = [range_stats(reference[name], fmt) for name in node.output_names if name in reference]
        ranges_by_key[match_key(node)] = _merge_ranges([s for s in stats if s is not None])
    originals = {match_key(n): n for n in reference_audit.nodes}

    candidate: dict[str, np.ndarray] = {}
    if original is not None:
        candidate = _evaluate("converted", model, feeds_for(model, feeds))

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
        audit, fmt, inputs_label, original is not None, model, candidate, reference
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
        if any(n.precision in ("fp16", "bf16") for n in audit.nodes):
            notes.append(
                "The audited model already computes in low precision: its ranges are not FP32 ranges "
                "(a value that overflowed is inf, not counted). Give the FP32 original with --compare."
            )
    from mpcompile.evaluate.inputs import generated_label

    return {
        "low_precision": fmt.precision.value,
        "inputs": str(inputs) if inputs else generated_label(INPUT_SEED),
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
