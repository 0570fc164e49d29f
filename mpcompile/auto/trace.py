"""The search trace: every candidate tried, its error, and whether it was kept or reverted.

Saved as JSON in the converted model's ``metadata_props`` under ``TRACE_KEY`` (schema in
docs/auto.md) so ``mpcompile report`` and any later reader can show how the plan was found.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import onnx
import onnx_ir as ir

from mpcompile.auto import TRACE_KEY

TRACE_VERSION = 1

KEPT = "kept"  # passed: became the accepted candidate
REVERTED = "reverted"  # failed: the previous candidate stays
MEASURED = "measured"  # reference run or the sensitivity run


@dataclasses.dataclass
class SearchStep:
    """One candidate the search looked at."""

    index: int
    phase: str  # "reference" | "initial" | "regions" | "nodes" | "prune" | "plain" | "confirm"
    tried: str  # what the candidate keeps FP32, in words
    blocked: list[str]  # nodes the search keeps FP32 in this candidate (range rules' excluded)
    error: float | None
    limit: float | None
    passed: bool | None
    outcome: str  # KEPT | REVERTED | MEASURED
    fp16_flop_share: float | None
    evaluated: bool  # False: not run (nothing low precision left, or an earlier candidate's model)
    evaluations: int  # evaluations spent so far, this one included

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("error", "limit", "fp16_flop_share"):
            data[key] = jsonable(data[key])
        return data


def jsonable(value: float | None) -> float | str | None:
    """JSON has no inf/NaN: those become the strings "inf", "-inf", "nan"."""
    if value is None or math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def read_trace(model: onnx.ModelProto | ir.Model) -> dict[str, Any] | None:
    """The ``--auto`` record stored in a converted model, or None."""
    if isinstance(model, onnx.ModelProto):
        props = {entry.key: entry.value for entry in model.metadata_props}
    else:
        props = model.metadata_props
    text = props.get(TRACE_KEY)
    return json.loads(text) if text else None


TRACE_COLUMNS = ("#", "phase", "tried", "error", "limit", "FP16 FLOPs", "outcome", "evaluations")


def trace_rows(record: dict[str, Any]) -> list[list[str]]:
    """The saved trace (``read_trace``) as text rows under ``TRACE_COLUMNS``, for any table format."""
    rows = []
    for step in record.get("steps", []):
        share = step.get("fp16_flop_share")
        rows.append(
            [
                str(step["index"]),
                step["phase"],
                step["tried"],
                _number(step.get("error")),
                _number(step.get("limit")),
                "-" if share is None or step["phase"] == "reference" else f"{share:.1%}",
                step["outcome"] + ("" if step.get("evaluated", True) else " (not run)"),
                str(step["evaluations"]),
            ]
        )
    return rows


def trace_summary(record: dict[str, Any]) -> str:
    """One line on a saved record: verdict, criterion, FP16 FLOP share, evaluations, sessions."""
    from mpcompile.auto.criteria import Criterion

    wanted = Criterion.from_dict(record["criterion"]).describe()
    verdict = "meets" if record.get("passed") else "does not meet"
    share = record.get("fp16_flop_share")
    sessions = record.get("sessions")
    return (
        f"{verdict} {wanted} (error {_number(record.get('error'))} of limit {_number(record.get('limit'))}); "
        f"FP16 FLOP share {'-' if share is None else f'{share:.1%}'}; "
        f"{record.get('evaluations')} evaluations (budget {record.get('budget')})"
        + ("" if sessions is None else f" in {sessions} ONNX Runtime session(s)")
        + f"; inputs {record.get('inputs', '-')}"
    )


def _number(value: float | str | None) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else f"{value:.3g}"
