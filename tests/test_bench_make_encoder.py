"""tools/bench/make_encoder.py: the small presets only (the large ones take minutes and GBs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import models

pytestmark = pytest.mark.slow  # builds benchmark encoders

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "bench" / "make_encoder.py"


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_tiny_preset_equals_the_zoo_encoder(tmp_path: Path) -> None:
    out = tmp_path / "tiny.onnx"
    result = run_script("--preset", "tiny", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "81 nodes" in result.stdout
    assert onnx.load(str(out)).SerializeToString() == models.bert_encoder.build().SerializeToString()


def test_external_data_deep_blocked_preset_is_valid_and_runs(tmp_path: Path) -> None:
    import onnxruntime as ort

    out = tmp_path / "deep.onnx"
    result = run_script("--preset", "deep24-blocked", "--layers", "3", "--external-data", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "deep.onnx.data").stat().st_size > out.stat().st_size
    onnx.checker.check_model(str(out), full_check=True)
    model = onnx.load(str(out))
    ops = [node.op_type for node in model.graph.node]
    assert len(ops) == 13 + 40 * 3 and ops.count("Pow") == 6 * 3
    outputs = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        None, models.make_inputs(model)
    )
    assert all(np.isfinite(o).all() for o in outputs)


def test_custom_sizes_and_errors(tmp_path: Path) -> None:
    out = tmp_path / "custom.onnx"
    assert (
        run_script(
            "--layers", "1", "--hidden", "32", "--heads", "2", "--ffn", "64", "-o", str(out)
        ).returncode
        == 0
    )
    model = onnx.load(str(out))
    assert len(model.graph.node) == 13 + 34
    bad = run_script("--hidden", "30", "--heads", "4", "-o", str(out))
    assert bad.returncode == 2 and "divisible" in bad.stderr
    assert run_script("--preset", "base").returncode == 2  # no -o
    listed = run_script("--list")
    assert "xl" in listed.stdout and "deep1536-blocked" in listed.stdout
