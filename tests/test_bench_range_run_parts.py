"""tools/bench/range_run_parts.py on a small model: every part timed, ORT's phases read."""

from __future__ import annotations

import json

import onnx
import pytest
from test_range_run import linear_attention

from tests.helpers import load_script

pytest.importorskip("onnxruntime", reason="the range run needs onnxruntime")

PARTS = ("serialize_reference", "loaded_recipe", "describes", "run_bytes", "session", "run", "findings")


@pytest.fixture(scope="module")
def parts_script():
    return load_script("tools/bench/range_run_parts.py")


def test_every_part_is_timed_and_the_findings_counted(parts_script, tmp_path, capsys):
    import gc

    assert gc.isenabled()
    path = tmp_path / "linear_attention.onnx"
    onnx.save(linear_attention(), path)
    assert parts_script.main([str(path), "--ort-log"]) == 0
    parts, phases = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert all(parts[name] >= 0 for name in PARTS)
    assert parts["findings_count"] >= 2  # q_kv and q_ksum overflow FP16 (test_range_run)
    ort_phases = phases["ort_session_phases"]
    assert ort_phases["total"] > 0 and "initializers" in ort_phases
    assert gc.isenabled()  # the script paused the cyclic collector for its timings only


def test_session_variants_are_timed(parts_script, tmp_path, capsys):
    path = tmp_path / "linear_attention.onnx"
    onnx.save(linear_attention(), path)
    assert parts_script.main([str(path), "--session-variants"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    variants = lines[-1]["session_cpu_seconds"]
    assert set(variants) == set(parts_script.SESSION_VARIANTS)
    assert all(seconds >= 0 for seconds in variants.values())
