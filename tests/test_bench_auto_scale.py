"""tools/bench/auto_scale.py on a small size: plain and --auto timed in children, the table
printed, and ``--metric`` reaching --auto (a tolerance the MatMul chain's FP16 misses)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="--auto needs onnxruntime")

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "bench" / "auto_scale.py"


def _rows(*args: str) -> list[list[str]]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--runs", "1", *args], capture_output=True, text=True, check=True
    )
    assert "error" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in done.stdout.splitlines()
        if line.startswith("| matmul")
    ]


def test_the_matmul_case_with_and_without_a_metric():
    (passing,) = _rows("--cases", "matmul", "--size", "30")
    (searching,) = _rows("--cases", "matmul", "--size", "30", "--metric", "rel-l2:1e-4")
    for row in (passing, searching):
        assert row[1] == "30" and all(float(cell) > 0 for cell in row[2:8])
        assert row[8] == "2"  # reference and first candidate: no switchboard wired
    assert float(passing[9]) == 1.0  # the first candidate passes: all of it FP16
    assert float(searching[9]) == 0.0  # every node alone misses rel-l2 1e-4: all kept FP32
