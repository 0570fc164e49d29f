"""An ``--auto`` a user can watch: progress events and the terminal bar (mpcompile/auto/progress.py),
one summary table with the detail in --json, the warning when most heavy FLOPs stay FP32
(mpcompile/auto/fp32_warning.py), and the ONNX Runtime sessions a search builds."""

from __future__ import annotations

import io
import json
import math

import onnx
import onnx_ir as ir
import pytest
from rich.console import Console

from models.sensitive import SENSITIVE
from mpcompile.auto import RangeRules, auto_convert
from mpcompile.auto.progress import CANDIDATE, INPUTS, REFERENCE, Evaluation, ProgressBar
from mpcompile.cli import main
from mpcompile.evaluate import faithful, ort_session
from tests.test_auto_inputs import vit_224

SEARCH_ONLY = RangeRules(cancellation_share=math.inf)  # the planted cancellations need the search
STRICT = {"rtol": 1e-6, "atol": 1e-6}  # no low-precision candidate meets it


@pytest.fixture
def session_count(monkeypatch):
    """Counts every ONNX Runtime session mpcompile builds (``make_session``, wherever imported)."""
    built = []
    real = ort_session.make_session

    def counting(*args, **kwargs):
        built.append(args[1] if len(args) > 1 else kwargs.get("providers"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ort_session, "make_session", counting)
    monkeypatch.setattr(faithful, "make_session", counting)
    return built


def test_progress_events_follow_the_evaluations():
    events: list[Evaluation] = []
    result = auto_convert(ir.to_proto(vit_224()), budget=6, progress=events.append, **STRICT)
    phases = [event.phase for event in events]
    assert phases[0] == INPUTS and phases[1] == REFERENCE  # 16x16 rejected, 224x224 from the embedding
    assert CANDIDATE in phases
    counts = [event.evaluations for event in events]
    assert counts == sorted(counts) and counts[-1] == result.evaluations
    assert all(event.budget == 6 for event in events)
    candidates = [event for event in events if event.phase == CANDIDATE]
    assert all(0.0 <= event.low_share <= 1.0 for event in candidates)
    assert all(event.limit == result.criterion.limit for event in events)
    assert candidates[-1].best_error is not None


def test_progress_bar_draws_on_a_terminal_only():
    terminal = Console(file=io.StringIO(), force_terminal=True, width=120)
    with ProgressBar(console=terminal) as update:
        update(Evaluation(CANDIDATE, 3, 16, low_share=0.875, best_error=0.004, limit=0.01))
        terminal.file.flush()
    drawn = terminal.file.getvalue()
    assert "candidate 3 of 16" in drawn and "87.5%" in drawn and "best error 0.004 (limit 0.01)" in drawn
    pipe = Console(file=io.StringIO(), force_terminal=False)
    with ProgressBar(console=pipe) as update:
        assert update is None
    assert pipe.file.getvalue() == ""


def test_one_summary_table_and_the_detail_in_json(tmp_path, capsys):
    source = tmp_path / "mixed.onnx"
    onnx.save(SENSITIVE["sensitive_deep_mixed"](), source)
    out = tmp_path / "mixed.auto.onnx"
    assert main(["convert", str(source), "-o", str(out), "--auto"]) == 0
    printed = capsys.readouterr()
    tables = [line for line in printed.out.splitlines() if line.lstrip().startswith(("┌", "╭", "+-"))]
    assert len(tables) == 1, printed.out
    assert "auto:range 4" in printed.out and "(and 1 more)" in printed.out
    assert "--auto" not in printed.err  # not a terminal: no progress bar
    assert main(["convert", str(source), "-o", str(out), "--auto", "--json", "--overwrite"]) == 0
    auto = json.loads(capsys.readouterr().out)["auto"]
    assert len(auto["range_blocked"]) == 4 and len(auto["steps"]) == 2 and auto["warnings"] == []


def test_no_fp32_heavy_node_no_flop_count(monkeypatch):
    """An answer whose heavy nodes all run in low precision has no FP32 heavy FLOPs: the warning
    neither copies nor shape-infers the model to count them; one FP32 heavy node makes it count."""
    from mpcompile import convert
    from mpcompile.auto import fp32_warning
    from mpcompile.auto.criteria import make_criterion

    counted = []
    monkeypatch.setattr(fp32_warning, "heavy_flops", lambda model: counted.append(model) or None)
    criterion = make_criterion(rtol=1e-2, atol=1e-2)
    low = convert(vit_224()).model
    assert fp32_warning.fp32_heavy_warning(low, criterion, budget_spent=False) is None
    assert counted == []
    heavy = next(node.name for node in vit_224().graph if node.op_type in ("MatMul", "Gemm", "Conv"))
    kept = convert(vit_224(), block_nodes=[f"^{heavy}$"]).model
    with pytest.raises(AttributeError):  # counted: the stand-in's None has no FLOPs
        fp32_warning.fp32_heavy_warning(kept, criterion, budget_spent=False)
    assert len(counted) == 1


def test_warning_when_most_heavy_flops_stay_fp32(tmp_path, capsys):
    source = tmp_path / "vit.onnx"
    onnx.save(ir.to_proto(vit_224()), source)
    out = tmp_path / "vit.auto.onnx"
    args = [
        "convert",
        str(source),
        "-o",
        str(out),
        "--auto",
        "--budget",
        "6",
        "--rtol",
        "1e-6",
        "--atol",
        "1e-6",
    ]
    assert main(args) == 0
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps lines at the console width
    assert printed.count("warning:") == 1
    warning = printed[printed.index("warning:") :]
    assert "heavy FLOPs (MatMul/Gemm/Conv/attention) in FP32 (auto:sensitivity 100.0%)" in warning
    assert "--metric cosine:0.999" in warning  # the reason and what to try
    assert main([*args, "--json", "--overwrite"]) == 0
    (warning,) = json.loads(capsys.readouterr().out)["auto"]["warnings"]
    assert warning.startswith("--auto keeps 100.0% of the heavy FLOPs")


def test_a_search_builds_at_most_four_sessions(session_count):
    """The FP32 reference and the first candidate (its intermediates feed the sensitivity) get
    their own sessions, the later candidates share the switchboard, and the answer found there
    is confirmed in its own session."""
    result = auto_convert(SENSITIVE["sensitive_deep_mixed"](), rules=SEARCH_ONLY, rtol=1e-3, atol=1e-3)
    assert result.evaluations > 4  # enough candidates that a session each would exceed four
    assert len(session_count) == result.sessions == 4


def test_input_retries_reuse_the_reference_session(session_count):
    result = auto_convert(ir.to_proto(vit_224()), budget=4, switchboard=False, **STRICT)
    assert "height=224" in result.inputs
    # one reference session for both input tries, then one per candidate (no switchboard)
    assert len(session_count) == result.sessions == result.evaluations
