"""The range run's session is built on a worker thread while the conversion goes on
(``passes/range_run.py``, docs/performance.md): ``convert_file`` starts it from the loaded
protobuf before the IR is deserialized, the range run takes it where it still describes the
model, and no worker outlives a conversion, whether it succeeds, is refused or fails."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper
from test_range_run import linear_attention

import mpcompile
from models.builder import make_model, value_info
from mpcompile import errors
from mpcompile.core.precision import low_precision_format
from mpcompile.evaluate import faithful, loaded_reference
from mpcompile.io import model_io
from mpcompile.passes import range_run

pytest.importorskip("onnxruntime", reason="the range run needs onnxruntime")

WORKER = "mpcompile-range-run"


def _workers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == WORKER]


@pytest.fixture
def deserialized_with_a_worker(monkeypatch) -> list[bool]:
    """Whether a range-run worker was alive each time ``convert_file`` deserialized the IR."""
    seen: list[bool] = []
    deserialize = ir.serde.deserialize_model

    def recorded(proto, *args, **kwargs):
        seen.append(bool(_workers()))
        return deserialize(proto, *args, **kwargs)

    monkeypatch.setattr(ir.serde, "deserialize_model", recorded)
    return seen


def test_the_session_is_started_before_the_ir_is_deserialized(
    tmp_path, deserialized_with_a_worker, monkeypatch
):
    serializations: list[int] = []
    serialize = faithful.serialize_reference
    monkeypatch.setattr(
        faithful, "serialize_reference", lambda model: serializations.append(1) or serialize(model)
    )
    path = tmp_path / "linear_attention.onnx"
    onnx.save(linear_attention(), path)
    result = mpcompile.convert_file(path, tmp_path / "out.onnx")
    assert deserialized_with_a_worker == [True]
    assert serializations == []  # the early session was taken: the IR was not serialized
    assert {"q_kv", "q_ksum"} <= set(result.summary()["range_measured"])
    assert not _workers()
    in_memory = mpcompile.convert(linear_attention())
    assert onnx.load(tmp_path / "out.onnx").SerializeToString() == in_memory.model.SerializeToString()


@pytest.mark.parametrize("flags", [{"static": True}, {"precision": "bf16"}, {"optimize": "basic"}])
def test_no_early_session_where_no_range_run_takes_it(tmp_path, deserialized_with_a_worker, flags):
    """``--static``, BF16 (no range run), ``--optimize`` (the graph is rewritten first)."""
    path = tmp_path / "linear_attention.onnx"
    onnx.save(linear_attention(), path)
    mpcompile.convert_file(path, tmp_path / "out.onnx", **flags)
    assert deserialized_with_a_worker and not any(deserialized_with_a_worker)
    assert not _workers()


def _duplicate_names() -> onnx.ModelProto:
    """``linear_attention`` with two nodes of one name: OrtLoadablePass renames one."""
    model = linear_attention()
    model.graph.node[1].name = model.graph.node[0].name
    return model


def test_an_early_session_that_no_longer_describes_the_model_is_dropped(tmp_path, monkeypatch):
    """A pass before the range run renamed a node: the early session is stopped (the range run
    does not wait for its build) and joined when the conversion ends; the IR is serialized and
    evaluated, and the conversion writes what ``convert`` writes."""
    events: list[str] = []
    stop, close = range_run.PendingRangeRun.stop, range_run.PendingRangeRun.close

    def recorded(name, method):
        def call(self):
            if self.source is not None:  # the early session's
                events.append(name)
            return method(self)

        return call

    monkeypatch.setattr(range_run.PendingRangeRun, "stop", recorded("stop", stop))
    monkeypatch.setattr(range_run.PendingRangeRun, "close", recorded("close", close))
    recipes: list[int] = []
    make_recipe = loaded_reference.loaded_recipe
    monkeypatch.setattr(
        loaded_reference,
        "loaded_recipe",
        lambda *args, **kwargs: recipes.append(1) or make_recipe(*args, **kwargs),
    )
    passes: list[str] = []
    path = tmp_path / "duplicates.onnx"
    onnx.save(_duplicate_names(), path)
    result = mpcompile.convert_file(
        path, tmp_path / "out.onnx", on_pass_start=lambda name: passes.append(f"{name}:{len(events)}")
    )
    assert events[:2] == ["stop", "close"]  # stopped by the range run, joined at the end
    assert recipes == [1]  # not made again from the same protobuf: the IR is serialized instead
    assert "VerifyPass:1" in passes, passes  # not joined while the passes ran
    assert not _workers()
    in_memory = mpcompile.convert(_duplicate_names())
    assert result.summary()["range_measured"] == in_memory.summary()["range_measured"]
    assert onnx.load(tmp_path / "out.onnx").SerializeToString() == in_memory.model.SerializeToString()


def test_a_refused_conversion_leaves_no_worker(tmp_path, deserialized_with_a_worker):
    """Refused after the load (the output is the input, without --overwrite), and refused by a
    pass before the range run (a custom op): the error as before, and the worker joined."""
    path = tmp_path / "linear_attention.onnx"
    onnx.save(linear_attention(), path)
    with pytest.raises(errors.OutputIsInputError):
        mpcompile.convert_file(path, path)
    assert deserialized_with_a_worker == [True]
    assert not _workers()
    custom = linear_attention()
    custom.graph.node[-1].domain = "custom.domain"
    custom.opset_import.add(domain="custom.domain", version=1)
    onnx.save(custom, tmp_path / "custom.onnx")
    with pytest.raises(errors.MpcompileError):
        mpcompile.convert_file(tmp_path / "custom.onnx", tmp_path / "out.onnx")
    assert not _workers()


def test_an_already_converted_model_leaves_no_worker(tmp_path):
    path = tmp_path / "linear_attention.onnx"
    onnx.save(linear_attention(), path)
    mpcompile.convert_file(path, tmp_path / "half.onnx", keep_io_types=False)
    with pytest.raises(errors.AlreadyLowPrecisionError):
        mpcompile.convert_file(tmp_path / "half.onnx", tmp_path / "again.onnx")
    assert not _workers()


def test_a_failing_session_build_is_a_note(tmp_path, monkeypatch):
    """ONNX Runtime refusing the session on the worker: the static rules decide, with the
    range run's usual note, as when it refused it on the calling thread."""

    def refused(self):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : refused on the worker")

    monkeypatch.setattr(faithful.SessionRecipe, "session", refused)
    path = tmp_path / "linear_attention.onnx"
    onnx.save(linear_attention(), path)
    result = mpcompile.convert_file(path, tmp_path / "out.onnx")
    assert any(
        note.startswith("range run skipped (static rules only): RuntimeError: [ONNXRuntimeError]")
        for note in result.notes
    ), result.notes
    assert not _workers()
    static = mpcompile.convert_file(path, tmp_path / "static.onnx", static=True)
    assert result.summary()["stats"]["nodes_by_precision"] == static.summary()["stats"]["nodes_by_precision"]


def test_the_memory_estimate_stops_the_run_but_not_the_build(tmp_path, monkeypatch):
    """The estimate is checked while the worker builds the session: above the limit, the run
    never starts and the note says why."""
    runs: list[int] = []
    run = faithful.ReferenceSession.run
    monkeypatch.setattr(
        faithful.ReferenceSession, "run", lambda self, feeds: runs.append(1) or run(self, feeds)
    )
    monkeypatch.setattr("mpcompile.evaluate.memory_limit.memory_limit", lambda: 1)
    path = tmp_path / "linear_attention.onnx"
    onnx.save(linear_attention(), path)
    result = mpcompile.convert_file(path, tmp_path / "out.onnx")
    assert runs == []
    assert any("range run skipped (static rules only)" in note for note in result.notes), result.notes
    assert not result.summary()["range_measured"]
    assert not _workers()


def _weights_large_and_small() -> onnx.ModelProto:
    """A weight above ``APART_MIN_BYTES`` (handed to ORT as an array), and small constants
    ORT's own inference reads (the ReduceSum axes), all in files once saved."""
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array(rng.standard_normal((160, 160)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((160,)).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([2], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="project"),
        helper.make_node("Add", ["h", "b"], ["hb"], name="bias"),
        helper.make_node("ReduceSum", ["hb", "axes"], ["y"], name="sum", keepdims=1),
    ]
    model = make_model(nodes, [value_info("x", [1, 4, 160])], [value_info("y", [1, 4, 1])], initializers)
    return onnx.shape_inference.infer_shapes(model)


@pytest.mark.parametrize("saved", ["data-file", "mapped"])
def test_the_weights_the_early_session_reads_are_the_files(tmp_path, monkeypatch, saved):
    """Weights in a data file, or mapped from the model file, reach the early session as the
    file's bytes (large ones as arrays, small ones in the proto): the run's values equal those
    of the IR's own session."""
    path = tmp_path / "model.onnx"
    if saved == "mapped":
        monkeypatch.setattr(model_io, "MAPPED_LOAD_MIN_BYTES", 0)
        onnx.save(_weights_large_and_small(), path)
    else:
        onnx.save(
            _weights_large_and_small(), path, save_as_external_data=True, size_threshold=0, location="w.data"
        )
    protos: list[onnx.ModelProto] = []
    model = model_io.load_model_and_proto(path, infer_types=True, before_ir=protos.append)[0]
    pending = range_run.start_early(protos[0], tmp_path)
    assert pending is not None and pending.source is not None
    assert pending.source.apart == ("w",) and pending.source.describes(model)
    feeds = {"x": np.random.default_rng(3).standard_normal((1, 4, 160)).astype(np.float32)}
    pending.feeds = [feeds]
    pending.allow_run()
    pending.close()
    assert pending._error is None, pending._error
    want = faithful.ReferenceSession(model, intermediates=True, prepack=False).run(feeds)
    (got,) = pending._outputs
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_the_overlapped_session_leaves_the_conversion_a_core(tmp_path, monkeypatch):
    """Built while the conversion goes on, the session runs on one core fewer than the process
    has (``threads_beside_the_conversion``); ``range_run`` alone (``--auto``'s) keeps ORT's default."""
    threads: list[object] = []
    make = faithful.make_session

    def recorded(*args, **kwargs):
        threads.append((kwargs.get("options") or {}).get("intra_op_num_threads"))
        return make(*args, **kwargs)

    monkeypatch.setattr(faithful, "make_session", recorded)
    monkeypatch.setattr(range_run.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    path = tmp_path / "linear_attention.onnx"
    onnx.save(linear_attention(), path)
    mpcompile.convert_file(path, tmp_path / "out.onnx")
    assert threads == [3]
    monkeypatch.setattr(range_run.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert range_run.threads_beside_the_conversion() == 1
    threads.clear()
    range_run.range_run(model_io.load_model(path, infer_types=True), low_precision_format("fp16"), lambda: ())
    assert threads == [None]


def test_what_the_early_start_cannot_read_is_left_to_the_range_run(tmp_path, monkeypatch):
    """A tensor type it cannot size, or a failure making the recipe: no early session and no
    error; the range run starts from the IR and reports as it always did."""
    proto = linear_attention()
    proto.graph.initializer[0].data_type = 1000  # no such type
    assert range_run.start_early(proto, tmp_path) is None

    def broken(*args, **kwargs):
        raise RuntimeError("the recipe failed")

    monkeypatch.setattr("mpcompile.evaluate.loaded_reference.loaded_recipe", broken)
    assert range_run.start_early(linear_attention(), tmp_path) is None
    path = tmp_path / "linear_attention.onnx"
    onnx.save(linear_attention(), path)
    monkeypatch.undo()
    monkeypatch.setattr(range_run, "start_early", lambda proto, base_dir: None)
    result = mpcompile.convert_file(path, tmp_path / "out.onnx")
    assert {"q_kv", "q_ksum"} <= set(result.summary()["range_measured"])


@pytest.mark.parametrize("early", [True, False], ids=["early-session", "started-by-the-pass"])
def test_an_interrupted_conversion_leaves_no_worker(tmp_path, monkeypatch, early):
    """Ctrl-C while the memory estimate is made (the worker building or waiting): the interrupt
    goes on up, and the worker is joined on the way."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("mpcompile.evaluate.memory_limit.memory_limit", lambda: 1 << 40)
    monkeypatch.setattr("mpcompile.evaluate.run_memory.run_bytes", interrupted)
    if not early:
        monkeypatch.setattr(range_run, "start_early", lambda proto, base_dir: None)
    path = tmp_path / "linear_attention.onnx"
    onnx.save(linear_attention(), path)
    with pytest.raises(KeyboardInterrupt):
        mpcompile.convert_file(path, tmp_path / "out.onnx")
    assert not _workers()
