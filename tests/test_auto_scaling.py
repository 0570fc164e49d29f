"""``--auto`` shares its work across the search (issue 23): FLOPs from the reference run's
arrays, conversions cached, and no whole-model copy or serialisation per candidate."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import pytest

import models
from models.sensitive import SENSITIVE
from mpcompile.auto import RangeRules
from mpcompile.auto.flops import audited_flops, flops_from_values
from mpcompile.auto.graph import name_nodes
from mpcompile.evaluate.faithful import ReferenceSession
from mpcompile.evaluate.inputs import generate_inputs
from tests.helpers import load_script

pytest.importorskip("onnxruntime", reason="onnxruntime is needed to evaluate models")

FLOPS_MODELS = {**{name: build for name, build in models.ZOO.items()}, **SENSITIVE}


@pytest.mark.parametrize("name", list(FLOPS_MODELS))
def test_flops_from_the_reference_arrays_equal_the_audits(name):
    """Where the reference run covers the model, the FLOPs read from its arrays' shapes are the
    audit's (copy, annotation, onnx shape inference), and the model's own shapes are kept."""
    work = ir.from_proto(FLOPS_MODELS[name]())
    name_nodes(work)
    feeds = generate_inputs(work, seed=0)[0]
    values = ReferenceSession(work, intermediates=True, prepack=False).run(feeds)
    shapes_before = [value.shape for node in work.graph for value in node.outputs]
    measured = flops_from_values(work, feeds, values)
    if measured is None:  # subgraphs, functions or unfed inputs: the audit decides
        assert name in ("control_flow", "regression_blocked_in_if", "regression_initializers_as_inputs")
        return
    assert measured == audited_flops(work, feeds, values)
    assert [value.shape for node in work.graph for value in node.outputs] == shapes_before
    assert sum(measured.values()) > 0 or not any(np.size(array) for array in values.values())


def _counting(monkeypatch) -> dict[str, int]:
    """Counts whole-model copies (``ir.Model.clone``) and serialisations (``serialize_model``)."""
    counts = {"clone": 0, "serialize": 0}
    clone, serialize = ir.Model.clone, ir.serde.serialize_model

    def counted_clone(self, *args, **kwargs):
        counts["clone"] += 1
        return clone(self, *args, **kwargs)

    def counted_serialize(*args, **kwargs):
        counts["serialize"] += 1
        return serialize(*args, **kwargs)

    monkeypatch.setattr(ir.Model, "clone", counted_clone)
    monkeypatch.setattr(ir.serde, "serialize_model", counted_serialize)
    return counts


def test_a_switchboard_candidate_copies_the_model_once_and_serialises_nothing(monkeypatch):
    """After the reference run, a candidate on the switchboard costs its conversion's one copy
    and no serialisation (no session, no onnx shape inference: the working model is typed once,
    as ``auto_convert`` types it); asking again costs nothing, and the baseline conversion is
    the initial candidate's."""
    from mpcompile.auto.criteria import make_criterion
    from mpcompile.auto.evaluator import Evaluator
    from mpcompile.compiler.converter import ConvertOptions
    from mpcompile.passes.infer_types import infer_once

    work = ir.from_proto(SENSITIVE["sensitive_two_culprits"]())  # untyped intermediates
    name_nodes(work)
    assert infer_once(work)
    feeds = generate_inputs(work, seed=0)
    evaluator = Evaluator(work, feeds, make_criterion(rtol=1e-3, atol=1e-3), ConvertOptions(), 16)
    baseline = evaluator.baseline()
    evaluator.run_reference()
    counts = _counting(monkeypatch)
    assert evaluator.convert(frozenset()) is baseline  # cached: the initial candidate's conversion
    assert counts["clone"] == 0
    low = sorted(evaluator.probe(frozenset()).low)  # the first candidate on the board wires it
    before = dict(counts)
    probe = evaluator.probe(frozenset(low[:1]))
    assert probe.evaluated and probe.on_switchboard
    assert counts["clone"] - before["clone"] == 1  # the conversion's working copy
    assert counts["serialize"] == before["serialize"]
    sessions = evaluator.sessions
    assert evaluator.probe(frozenset(low[:1])) is probe
    assert counts["clone"] - before["clone"] == 1 and evaluator.sessions == sessions


def _counting_conversions(monkeypatch) -> list[bool]:
    """Records each conversion ``--auto`` makes (whether it was checked)."""
    from mpcompile.auto import evaluator as evaluator_module

    made: list[bool] = []
    convert = evaluator_module.convert_checked_ir

    def counted(model, options):
        made.append(options.verify)
        return convert(model, options)

    monkeypatch.setattr(evaluator_module, "convert_checked_ir", counted)
    return made


@pytest.mark.parametrize("name", ["mlp", "resnet"])
def test_an_answer_converted_as_a_candidate_is_not_converted_again(name, tmp_path, monkeypatch):
    """When the first candidate passes, ``--auto`` converts once: the baseline is that candidate,
    plain convert's conversion is the same model (no measured op or Cast), and the answer is
    that conversion, checked as saved. The saved file is the one of a fresh conversion."""
    from mpcompile.auto.api import auto_convert, auto_convert_file

    source = tmp_path / "model.onnx"
    models.save(name, source)
    made = _counting_conversions(monkeypatch)
    result = auto_convert_file(source, tmp_path / "out.onnx")
    assert result.passed and result.evaluations == 2 and not result.range_blocked
    assert made == [False]
    monkeypatch.undo()
    fresh = auto_convert(str(source))  # the model in memory: checked there
    assert ir.to_proto(fresh.model).SerializeToString() == (tmp_path / "out.onnx").read_bytes()


@pytest.fixture
def auto_scale_build():
    """``tools/bench/auto_scale.py``'s ``build(case, size)``."""
    return load_script("tools/bench/auto_scale.py").build


@pytest.mark.parametrize(
    "case, sessions, share",
    [("chain", 1, 0.0), ("matmul", 2, 1.0)],
    ids=["stays-fp32", "first-candidate-passes"],
)
def test_no_switchboard_without_a_second_candidate(case, sessions, share, auto_scale_build, monkeypatch):
    """No switchboard is wired unless a second candidate needs it. ``auto_scale.py``'s chain
    (elementwise ops between FP32 inputs and outputs) stays FP32: no candidate can run, and the
    reference runs in its own session. Its MatMul chain's first candidate passes: two sessions
    (reference and candidate) and no board, which is about five times the graph."""
    from mpcompile.auto import switchboard
    from mpcompile.auto.api import auto_convert

    def refused(*args, **kwargs):
        raise AssertionError("no switchboard without a second candidate")

    monkeypatch.setattr(switchboard.Switchboard, "build", classmethod(refused))
    result = auto_convert(auto_scale_build(case, 40 if case == "chain" else 60))
    assert result.passed and result.sessions == sessions and result.evaluations == sessions
    assert result.fp16_flop_share == share


@pytest.mark.parametrize("case", ["chain", "outputs", "sum", "matmul"])
def test_the_reference_session_gives_the_boards_values(case, auto_scale_build):
    """The reference runs in a ``ReferenceSession`` built from one serialisation
    (``serialize_reference``), the candidates on the switchboard: its values are those the
    board's reference run gives, bit for bit, so a candidate's error is the same on either."""
    from mpcompile.auto.switchboard import Switchboard
    from mpcompile.evaluate.faithful import serialize_reference
    from mpcompile.passes.infer_types import infer_once

    work = ir.from_proto(auto_scale_build(case, 30))
    name_nodes(work)
    infer_once(work)
    feeds = generate_inputs(work, seed=0)[0]
    board = Switchboard.build(work, ir.DataType.FLOAT16)
    (want,) = board.run([feeds], board.reference_settings(), intermediates=True)
    serialized = serialize_reference(work)
    assert serialized is not None
    got = ReferenceSession(work, intermediates=True, prepack=False, serialized=serialized).run(feeds)
    assert set(got) == set(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype and np.array_equal(got[name], array, equal_nan=True), name


def test_the_search_never_compares_blame_items(monkeypatch):
    """The search sets its blame items apart by node name: a list's ``in`` compares dataclasses
    field by field, quadratic in the nodes (73 s of a 10,000-node search before)."""
    from mpcompile.auto import sensitivity
    from mpcompile.auto.api import auto_convert

    def refused(self, other):
        raise AssertionError("BlameItem compared")

    monkeypatch.setattr(sensitivity.BlameItem, "__eq__", refused)
    search_only = RangeRules(cancellation_share=math.inf)  # the planted cancellations: searched
    for name in ("sensitive_many_culprits", "sensitive_deep_mixed"):  # necessary items; prune
        result = auto_convert(SENSITIVE[name](), rules=search_only, rtol=1e-3, atol=1e-3)
        assert result.passed and result.sensitivity_blocked


def test_connected_regions_read_the_low_nodes_once():
    """``connected_regions`` takes any iterable of low-precision names (a set built once, not
    per node)."""
    from mpcompile.auto.graph import connected_regions, main_nodes

    work = ir.from_proto(SENSITIVE["sensitive_deep_mixed"]())
    name_nodes(work)
    nodes = main_nodes(work)
    names = list(nodes)
    assert [name for region in connected_regions(nodes, names) for name in region] == names
    assert connected_regions(nodes, iter(names[1:2])) == [names[1:2]]  # any iterable, read once
