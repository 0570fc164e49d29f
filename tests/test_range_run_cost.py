"""The range run's cost (docs/performance.md, "Range run cost"): a second paint only when the
rules find something, one serialization shared by the memory estimate and the session, no
private copy of the model and no second shape inference; and the same results as before."""

from __future__ import annotations

import math
import pathlib

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common
import pytest
from onnx import helper, numpy_helper
from test_range_run import linear_attention

import models
import mpcompile
from models.builder import value_info
from mpcompile.analysis.range_rules import find_unsafe_nodes
from mpcompile.core.precision import low_precision_format
from mpcompile.evaluate import faithful, run_memory
from mpcompile.evaluate import inputs as inputs_module
from mpcompile.evaluate.loaded_reference import loaded_recipe
from mpcompile.io import model_io
from mpcompile.passes import range_run
from mpcompile.passes.assign_precision import AssignPrecisionPass

pytest.importorskip("onnxruntime", reason="the range run needs onnxruntime")

ZOO_MODELS = ("bert_encoder", "gpt_block", "control_flow", "resnet", "regression_mask_finfo_min")


def _count_paints(monkeypatch) -> list[int]:
    calls: list[int] = []
    paint = AssignPrecisionPass._paint

    def counted(self, model):
        calls.append(1)
        return paint(self, model)

    monkeypatch.setattr(AssignPrecisionPass, "_paint", counted)
    return calls


def _in_range(model: onnx.ModelProto) -> onnx.ModelProto:
    for weight in model.graph.initializer:
        if weight.name.startswith("w"):
            array = numpy_helper.to_array(weight) / 8
            weight.CopyFrom(numpy_helper.from_array(array.astype(np.float32), weight.name))
    return model


def test_one_paint_when_the_rules_find_nothing(monkeypatch):
    calls = _count_paints(monkeypatch)
    model = _in_range(linear_attention())
    plain = mpcompile.convert(model)
    assert calls == [1]
    static = mpcompile.convert(model, static=True)
    assert plain.model.SerializeToString() == static.model.SerializeToString()


def test_a_second_paint_when_they_find_something(monkeypatch):
    """The static paint is the one the run's findings are restricted to; the overrides they
    give paint the plan again."""
    calls = _count_paints(monkeypatch)
    result = mpcompile.convert(linear_attention())
    assert calls == [1, 1]
    assert {"q_kv", "q_ksum"} <= set(result.summary()["range_measured"])


def _loaded(proto: onnx.ModelProto) -> ir.Model:
    return model_io.model_from_proto(proto, pathlib.Path.cwd(), infer_types=True)


@pytest.mark.parametrize("build", [linear_attention, lambda: _in_range(linear_attention())])
def test_measured_findings_on_the_low_nodes_are_find_unsafe_nodes_on_them(build):
    """Findings over every node, restricted afterwards, are those of the candidates alone (as
    range_run computed them before), whichever nodes are low."""
    model = _loaded(build())
    low = low_precision_format("fp16")
    values, _ = range_run._reference_values(model, seed=0)
    nodes = {node.name: node for node in model.graph if node.name}
    everything = range_run.measured_findings(model, values, low)
    for candidates in (list(nodes), list(nodes)[::2], list(nodes)[1::2], []):
        before = find_unsafe_nodes(
            nodes, candidates, values, low, range_run.RULES, model.opset_imports[""], relative_budget=math.inf
        )
        masks = range_run._additive_masks(model, before, values, range_run.RULES.overflow_fraction * low.max)
        want = {
            name: finding
            for name, finding in before.items()
            if finding.rule not in range_run.LEFT_TO_AUTO and finding.value not in masks
        }
        got = {name: finding for name, finding in everything.items() if name in set(candidates)}
        assert got == want and list(got) == list(want)


def _run_bytes_as_before(model: ir.Model, input_shapes) -> int:
    """run_memory.run_bytes as it was: a clone, shapes forgotten, onnx-ir's ShapeInferencePass."""
    probe = model.clone()
    for value in probe.graph.inputs:
        if value.name in input_shapes:
            value.shape = ir.Shape(list(input_shapes[value.name]))
    for node in probe.graph:
        for value in node.outputs:
            if value not in probe.graph.outputs:
                value.shape = None
    onnx_ir.passes.common.ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(probe)
    return run_memory.values_bytes(probe)


def _external_data_model(tmp_path) -> ir.Model:
    """bert_encoder saved with every initializer of 100 bytes or more in a data file (mapped)."""
    return model_io.load_model(_save_external(tmp_path), infer_types=True)


def _save_external(tmp_path) -> pathlib.Path:
    path = tmp_path / "external.onnx"
    onnx.save(
        models.ZOO["bert_encoder"](), path, save_as_external_data=True, size_threshold=100, location="w.data"
    )
    return path


def _models(tmp_path) -> list[tuple[str, ir.Model]]:
    zoo = [(name, _loaded(models.ZOO[name]())) for name in ZOO_MODELS]
    return [
        *zoo,
        ("linear_attention", _loaded(linear_attention())),
        ("external", _external_data_model(tmp_path)),
    ]


def test_the_memory_estimate_is_as_before_and_shares_the_serialization(tmp_path):
    for name, model in _models(tmp_path):
        before = ir.to_proto(model).SerializeToString()
        shapes = {spec.name: spec.shape for spec in inputs_module.input_specs(model, None)}
        want = _run_bytes_as_before(model, shapes)
        assert want > 0, name
        assert run_memory.run_bytes(model, shapes) == want, name
        serialized = faithful.serialize_reference(model)
        assert serialized is not None, name
        assert run_memory.run_bytes(model, shapes, proto=serialized.proto) == want, name
        bigger = {input_name: [2 * dim for dim in shape] for input_name, shape in shapes.items()}
        assert run_memory.run_bytes(model, bigger, proto=serialized.proto) == _run_bytes_as_before(
            model, bigger
        ), name
        assert ir.to_proto(model).SerializeToString() == before, f"{name}: the model was modified"


def _assert_same_values(got: dict, want: dict, name: str) -> None:
    assert list(got) == list(want), name
    for key, array in want.items():
        assert got[key].dtype == array.dtype, (name, key)
        np.testing.assert_array_equal(got[key], array, err_msg=f"{name}: {key}")


def test_a_session_from_the_shared_serialization_gives_what_a_private_copy_gives(tmp_path):
    for name, model in _models(tmp_path):
        before = ir.to_proto(model).SerializeToString()
        feeds = inputs_module.cast_feeds(model, inputs_module.generate_inputs(model, seed=1)[0])
        want = faithful.ReferenceSession(model, intermediates=True, prepack=False).run(feeds)
        serialized = faithful.serialize_reference(model)
        got = faithful.ReferenceSession(model, intermediates=True, prepack=False, serialized=serialized).run(
            feeds
        )
        _assert_same_values(got, want, name)
        assert ir.to_proto(model).SerializeToString() == before, f"{name}: the model was modified"


def test_models_only_a_private_copy_evaluates_are_not_serialized_apart():
    """Local functions (inlined in the copy) and untyped values (typed by inference there)."""
    nodes = [helper.make_node("Twice", ["x"], ["y"], domain="local", name="call")]
    function = helper.make_function(
        "local",
        "Twice",
        ["a"],
        ["b"],
        [helper.make_node("Add", ["a", "a"], ["b"])],
        [helper.make_opsetid("", 17)],
    )
    graph = helper.make_graph(nodes, "g", [value_info("x", [2])], [value_info("y", [2])])
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        functions=[function],
    )
    assert faithful.serialize_reference(ir.from_proto(proto)) is None
    untyped = ir.from_proto(linear_attention())  # no inference: intermediates carry no types
    assert faithful.serialize_reference(untyped) is None
    assert faithful.serialize_reference(_loaded(linear_attention())) is not None


def _saved_models(tmp_path) -> list[tuple[str, pathlib.Path]]:
    """The models of ``_models`` as files: embedded weights and one with a data file."""
    paths = []
    for name in (*ZOO_MODELS, "linear_attention"):
        proto = models.ZOO[name]() if name in models.ZOO else linear_attention()
        path = tmp_path / f"{name}.onnx"
        onnx.save(proto, path)
        paths.append((name, path))
    return [*paths, ("external", _save_external(tmp_path))]


@pytest.mark.parametrize("mapped", [False, True], ids=["parsed", "mapped"])
def test_a_session_from_the_loaded_proto_gives_what_the_serialized_ir_gives(tmp_path, monkeypatch, mapped):
    """The range run evaluates the protobuf the model was loaded from (weights embedded, mapped
    from the file, or in a data file): the same values and memory estimate as the IR serialized
    again, the model unchanged."""
    if mapped:
        monkeypatch.setattr(model_io, "MAPPED_LOAD_MIN_BYTES", 0)  # weights mapped from the file
    weighed: list[bool] = []
    for name, path in _saved_models(tmp_path):
        model, proto = model_io.load_model_and_proto(path, infer_types=True)
        before = ir.to_proto(model).SerializeToString()
        feeds = inputs_module.cast_feeds(model, inputs_module.generate_inputs(model, seed=1)[0])
        shapes = {spec.name: spec.shape for spec in inputs_module.input_specs(model, None)}
        serialized = faithful.serialize_reference(model)
        want_bytes = run_memory.run_bytes(model, shapes, proto=serialized.proto)
        want = faithful.ReferenceSession(model, intermediates=True, prepack=False, serialized=serialized).run(
            feeds
        )
        proto_before = proto.SerializeToString()
        loaded = loaded_recipe(proto, path.parent)
        assert loaded is not None and loaded.describes(model), name
        assert proto.SerializeToString() == proto_before, f"{name}: the loaded proto was modified"
        weighed.append(bool(loaded.apart))  # weights read from the file, not the proto
        assert run_memory.run_bytes(model, shapes, proto=proto) == want_bytes, name
        got = loaded.take_recipe().build().run(feeds)
        _assert_same_values(got, want, name)
        assert ir.to_proto(model).SerializeToString() == before, f"{name}: the model was modified"
    assert weighed[-1] and any(weighed[:-1]) == mapped  # the data file's weights; embedded ones when mapped


def test_a_loaded_proto_that_no_longer_describes_the_model_is_not_evaluated(tmp_path):
    """Nodes renamed (OrtLoadablePass's duplicates) or the graph rewritten: the IR is serialized."""
    path = tmp_path / "linear_attention.onnx"
    onnx.save(linear_attention(), path)
    model, proto = model_io.load_model_and_proto(path, infer_types=True)
    assert loaded_recipe(proto, tmp_path).describes(model)
    next(iter(model.graph)).name = "renamed"
    assert not loaded_recipe(proto, tmp_path).describes(model)
    model, proto = model_io.load_model_and_proto(path, infer_types=True)
    model.graph.remove(list(model.graph)[-1], safe=False)
    assert not loaded_recipe(proto, tmp_path).describes(model)
    model, proto = model_io.load_model_and_proto(path, infer_types=True)
    next(iter(model.graph)).outputs[0].dtype = ir.DataType.DOUBLE  # a value's type changed
    assert not loaded_recipe(proto, tmp_path).describes(model)


def test_convert_file_evaluates_the_loaded_proto(tmp_path, monkeypatch):
    """A file conversion's range run serializes nothing again, finds what ``convert`` finds and
    writes the same model; with ``optimize`` (a rewritten graph) the IR is serialized."""
    serializations: list[int] = []
    serialize = faithful.serialize_reference

    def counted(model):
        serializations.append(1)
        return serialize(model)

    monkeypatch.setattr(faithful, "serialize_reference", counted)
    path = tmp_path / "linear_attention.onnx"
    onnx.save(linear_attention(), path)
    result = mpcompile.convert_file(path, tmp_path / "out.onnx")
    assert serializations == []
    assert {"q_kv", "q_ksum"} <= set(result.summary()["range_measured"])
    in_memory = mpcompile.convert(linear_attention())
    assert serializations == [1]
    assert onnx.load(tmp_path / "out.onnx").SerializeToString() == in_memory.model.SerializeToString()
    mpcompile.convert_file(path, tmp_path / "optimized.onnx", optimize="basic")
    assert len(serializations) >= 2


def test_the_range_run_session_does_not_spin(monkeypatch):
    """Run once: ORT's worker threads sleep between kernels rather than spin (CPU time burnt)."""
    sessions = []
    make = faithful.make_session

    def recorded(*args, **kwargs):
        sessions.append(make(*args, **kwargs))
        return sessions[-1]

    monkeypatch.setattr(faithful, "make_session", recorded)
    range_run.range_run(_loaded(linear_attention()), low_precision_format("fp16"), lambda: ())
    (session,) = sessions
    options = session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_make_session_applies_further_options_last():
    """``options``: ``session.*`` keys become config entries, others ``SessionOptions``
    attributes, after (and over) the flags' own settings (``range_run_parts.py`` varies them)."""
    session = faithful.make_session(
        linear_attention().SerializeToString(),
        ["CPUExecutionProvider"],
        spin=False,
        options={"intra_op_num_threads": 1, "session.intra_op.allow_spinning": "1"},
    )
    options = session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_converting_a_file_in_place_evaluates_its_weights_read_before_the_overwrite(tmp_path, monkeypatch):
    """``--overwrite`` of the input itself: the weights are read into memory before the file is
    replaced, and the loaded proto's session reads those (not the mapped file)."""
    monkeypatch.setattr(model_io, "MAPPED_LOAD_MIN_BYTES", 0)  # weights mapped from the input
    monkeypatch.setattr(faithful, "serialize_reference", None)  # the IR is not serialized again
    path = tmp_path / "linear_attention.onnx"
    onnx.save(linear_attention(), path)
    result = mpcompile.convert_file(path, path, overwrite=True)
    monkeypatch.undo()
    assert {"q_kv", "q_ksum"} <= set(result.summary()["range_measured"])
    assert (
        onnx.load(path).SerializeToString() == mpcompile.convert(linear_attention()).model.SerializeToString()
    )


def _branch_with_a_weight() -> onnx.ModelProto:
    """An If whose then-branch holds its own weight (saved in the data file with the rest)."""
    then = helper.make_graph(
        [helper.make_node("Add", ["h", "w_then"], ["y_then"], name="then_add")],
        "then",
        [],
        [value_info("y_then", [2, 16])],
        [numpy_helper.from_array(np.full((16,), 0.5, np.float32), "w_then")],
    )
    otherwise = helper.make_graph(
        [helper.make_node("Identity", ["h"], ["y_else"], name="else_identity")],
        "else",
        [],
        [value_info("y_else", [2, 16])],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="project"),
        helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then, else_branch=otherwise),
    ]
    graph = helper.make_graph(
        nodes,
        "branch_with_a_weight",
        [value_info("x", [2, 16]), value_info("cond", [], onnx.TensorProto.BOOL)],
        [value_info("y", [2, 16])],
        [numpy_helper.from_array(np.eye(16, dtype=np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_weights_of_subgraphs_in_a_data_file_are_read_from_the_ir(tmp_path):
    """A subgraph's weight in a data file: the loaded proto is not evaluated (the IR is
    serialized with its weights read, as before), and the range run still runs."""
    path = tmp_path / "branch.onnx"
    onnx.save(_branch_with_a_weight(), path, save_as_external_data=True, size_threshold=0, location="w.data")
    model, proto = model_io.load_model_and_proto(path, infer_types=True)
    then_branch = (
        next(node for node in model.graph if node.op_type == "If").attributes["then_branch"].as_graph()
    )
    assert isinstance(then_branch.initializers["w_then"].const_value, ir.ExternalTensor)
    assert loaded_recipe(proto, tmp_path) is None
    run = range_run.range_run(
        model, low_precision_format("fp16"), lambda: (), loaded=range_run.LoadedProto(proto, tmp_path)
    )
    assert run.note == "" and run.seconds > 0
