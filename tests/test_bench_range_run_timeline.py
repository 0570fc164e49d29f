"""tools/bench/range_run_timeline.py on a small model: the worker's parts and where they start."""

from __future__ import annotations

import json

import onnx
import onnx_ir as ir
import pytest
from test_range_run import linear_attention

from mpcompile.evaluate import faithful
from mpcompile.passes import range_run
from tests.helpers import load_script

pytest.importorskip("onnxruntime", reason="the range run needs onnxruntime")


def _events(script, capsys, *argv: str) -> list[dict]:
    assert script.main(list(argv)) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def _first(events: list[dict], part: str) -> dict:
    return next(event for event in events if event["part"] == part)


def test_the_session_builds_on_the_worker_while_the_ir_is_deserialized(tmp_path, capsys, monkeypatch):
    script = load_script("tools/bench/range_run_timeline.py")
    path = tmp_path / "linear_attention.onnx"
    onnx.save(linear_attention(), path)
    deserialize = ir.serde.deserialize_model

    events = _events(script, capsys, str(path))
    build, run = _first(events, "SessionRecipe.build"), _first(events, "ReferenceSession.run")
    assert build["thread"] == run["thread"] == "worker"
    assert build["start"] <= _first(events, "deserialize_model")["start"]
    assert (
        _first(events, "PendingRangeRun.finish")["start"]
        >= _first(events, "pass AssignPrecisionPass")["start"]
    )

    late = _events(script, capsys, str(path), "--no-early")
    assert _first(late, "SessionRecipe.build")["start"] >= _first(late, "pass RangeRunPass")["start"]

    threads: list[object] = []
    recipe_session = faithful.SessionRecipe.session
    monkeypatch.setattr(
        faithful.SessionRecipe, "session", lambda self: threads.append(self.threads) or recipe_session(self)
    )
    _events(script, capsys, str(path), "--threads", "0")
    _events(script, capsys, str(path), "--threads", "3")
    assert threads == [None, 3]
    assert range_run.threads_beside_the_conversion() >= 1  # put back

    static = _events(script, capsys, str(path), "--static")
    assert all(event["thread"] == "main" for event in static)
    assert not any(event["part"] == "SessionRecipe.build" for event in static)
    assert ir.serde.deserialize_model is deserialize  # every part put back
