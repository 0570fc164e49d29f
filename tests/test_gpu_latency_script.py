"""The GPU latency benchmark runs end to end (on the CPU EP here: a smoke test of the script,
not a latency claim; the GPU numbers come from running it on a CUDA machine)."""

from __future__ import annotations

import json

from tools.bench import gpu_latency


def test_gpu_latency_script_runs_on_cpu(tmp_path, capsys):
    out = tmp_path / "results"
    code = gpu_latency.main(
        ["--preset", "tiny", "--eps", "cpu", "--batches", "1", "--runs", "2", "--warmup", "1",
         "--work", str(tmp_path / "models"), "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    (row,) = json.loads(out.with_suffix(".json").read_text())
    assert row["provider"] == "CPUExecutionProvider"
    for variant in gpu_latency.VARIANTS:
        assert row[variant]["p50_ms"] > 0
    assert "mpcompile vs fp32" in out.with_suffix(".md").read_text()
