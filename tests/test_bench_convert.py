"""tools/bench/convert_bench.py on the tiny preset (the floors only, so it stays fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import load_script

pytestmark = pytest.mark.slow  # runs the benchmark scripts end to end


@pytest.fixture(scope="module")
def bench():
    return load_script("tools/bench/convert_bench.py")


def test_growth_exponent_recovers_the_power(bench) -> None:
    assert bench.growth_exponent([(1000, 1.0), (2000, 2.0), (4000, 4.0)]) == pytest.approx(1.0)
    assert bench.growth_exponent([(1000, 1.0), (2000, 4.0), (4000, 16.0)]) == pytest.approx(2.0)
    assert bench.growth_exponent([(1000, 1.0)]) is None


def test_floor_run_on_tiny_writes_a_table(bench, tmp_path: Path) -> None:
    table = tmp_path / "table.md"
    rc = bench.main(
        ["--models", "tiny", "--tools", "onnx-floor", "onnx-ir-floor", "--runs", "2",
         "--workdir", str(tmp_path), "--markdown", str(table)]
    )  # fmt: skip
    assert rc == 0
    text = table.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| tiny ")]
    assert len(rows) == 2
    cells = [cell.strip() for cell in rows[0].split("|")]
    assert cells[1:6] == ["tiny", "81", "1", "onnx-floor", "2"]
    assert float(cells[6]) >= 0 and float(cells[7]) > 10  # seconds (0.00 happens), peak RSS MiB
    assert (tmp_path / "tiny.onnx").exists() and not (tmp_path / "out").exists()


def test_child_reports_errors_as_data(bench, tmp_path: Path) -> None:
    missing = tmp_path / "missing.onnx"
    run = bench.run_child(["convert", "onnx-floor", str(missing), str(tmp_path / "o.onnx"), "0"], timeout=60)
    assert "error" in run.payload and run.peak_rss_bytes > 0
    assert (
        "missing.onnx" in run.payload["error"]
    )  # the tool failed on the file, not the child on its arguments


def test_ort_session_time_reports_one_json_line(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    import onnx

    import models

    path = tmp_path / "mlp.onnx"
    onnx.save(models.ZOO["mlp"](), path)
    script = Path(__file__).resolve().parents[1] / "tools" / "bench" / "ort_session_time.py"
    done = subprocess.run(
        [sys.executable, str(script), str(path), "none"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["level"] == "none" and report["finite"] is True
    assert report["session_s"] >= 0 and report["run_s"] >= 0
