"""The switchboard (``mpcompile.auto.switchboard``) gives every candidate exactly its own
FP16-faithful run, and the search on it finds exactly what it finds with a session per candidate.

Equality here is bit for bit (``np.array_equal``), not a tolerance: the switchboard replaces the
candidate's session, so any difference would be a different evaluation.
"""

from __future__ import annotations

import math
import pathlib
import random

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper
from test_fuzz import EXAMPLES, examples, fuzz_settings, options

import models
from models.builder import constant, make_model, value_info, weight
from models.sensitive import SENSITIVE
from mpcompile.auto import RangeRules, auto_convert
from mpcompile.auto.api import measured_op_names
from mpcompile.auto.evaluator import low_precision_nodes
from mpcompile.auto.graph import name_nodes
from mpcompile.auto.switchboard import Switchboard
from mpcompile.compiler.converter import convert
from mpcompile.evaluate.faithful import FaithfulSession, ReferenceSession
from mpcompile.evaluate.inputs import cast_feeds, generate_inputs

pytest.importorskip("onnxruntime", reason="onnxruntime is needed to evaluate models")

MODELS = {
    **{
        name: SENSITIVE[name]
        for name in ("sensitive_cancellation", "sensitive_deep_mixed", "sensitive_long_reduction")
    },
    "mlp": lambda: models.build("mlp"),
    "resnet": lambda: models.build("resnet"),
    "bert_encoder": lambda: models.build("bert_encoder"),
}


def _working(proto: onnx.ModelProto) -> ir.Model:
    model = ir.from_proto(proto)
    name_nodes(model)
    return model


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, expected in want.items():
        assert got[name].dtype == expected.dtype, name
        assert np.array_equal(got[name], expected, equal_nan=True), (
            f"{name}: max |difference| {np.nanmax(np.abs(got[name].astype(np.float64) - expected)):.3g}"
        )


def _own_session(converted: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return FaithfulSession(converted, prepack=False).run(cast_feeds(converted, feeds))


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("keep_io_types", [True, False])
def test_every_candidate_runs_as_in_its_own_session(name, keep_io_types):
    """Random sets of nodes kept FP32 (from none to all), converted by the core as the search
    does, each run on the switchboard and in its own faithful session."""
    work = _working(MODELS[name]())
    feeds = generate_inputs(work, seed=0)[0]
    options = {"measured_ops": measured_op_names(), "keep_io_types": keep_io_types}
    candidates = sorted(low_precision_nodes(convert(work, **options).model))
    board = Switchboard.build(work, ir.DataType.FLOAT16)
    assert board is not None
    rng = random.Random(0)
    for trial in range(6):
        blocked = [node for node in candidates if rng.random() < trial / 6]
        converted = convert(work, block_nodes=[f"^{node}$" for node in blocked], **options).model
        chosen = board.settings(converted)
        assert chosen is not None, "a plain conversion must map onto the switchboard"
        (got,) = board.run([feeds], chosen)
        _assert_same(got, _own_session(converted, feeds))


@pytest.mark.parametrize("name", list(MODELS))
def test_reference_run_is_the_fp32_model(name):
    work = _working(MODELS[name]())
    feeds = generate_inputs(work, seed=0)[0]
    board = Switchboard.build(work, ir.DataType.FLOAT16)
    (got,) = board.run([feeds], board.reference_settings(), intermediates=True)
    _assert_same(got, ReferenceSession(work, intermediates=True, prepack=False).run(feeds))


def test_bf16_candidates_match():
    work = _working(models.build("mlp"))
    feeds = generate_inputs(work, seed=0)[0]
    board = Switchboard.build(work, ir.DataType.BFLOAT16)
    converted = convert(work, precision="bf16", target="cpu").model
    (got,) = board.run([feeds], board.settings(converted))
    _assert_same(got, _own_session(converted, feeds))


def _masked_softmax() -> onnx.ModelProto:
    """x @ w + mask → Softmax, the mask a constant of -1e9 (clamped to -65504 by the core when
    the Softmax runs in FP16, also where it is read in FP32) and shared with an FP32 reader."""
    rng = np.random.default_rng(0)
    mask = np.where(rng.random((4, 8)) < 0.3, -1e9, 0.0).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
        helper.make_node("Add", ["h", "mask"], ["scores"], name="mask_add"),
        helper.make_node("Softmax", ["scores"], ["y"], name="softmax", axis=-1),
        helper.make_node("ReduceMin", ["mask"], ["mask_min"], name="mask_min", keepdims=0),
    ]
    return make_model(
        nodes,
        [value_info("x", [4, 8])],
        [value_info("y", [4, 8]), value_info("mask_min", [])],
        [weight("w", [8, 8]), constant("mask", mask)],
    )


def test_constants_are_fed_as_the_candidate_made_them():
    work = _working(_masked_softmax())
    feeds = {"x": np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)}
    board = Switchboard.build(work, ir.DataType.FLOAT16)
    for blocked in ([], ["^softmax$"], ["^proj$", "^mask_add$"]):
        converted = convert(work, block_nodes=blocked).model
        (got,) = board.run([feeds], board.settings(converted))
        _assert_same(got, _own_session(converted, feeds))


def test_unexpressible_candidates_and_models_are_refused():
    work = _working(models.build("mlp"))
    board = Switchboard.build(work, ir.DataType.FLOAT16)
    converted = convert(work).model
    extra = ir.node("Identity", [converted.graph.outputs[0]], name="added")
    converted.graph.append(extra)
    assert board.settings(converted) is None  # a node neither original nor an inserted Cast
    converted = convert(work).model
    relu = next(node for node in converted.graph if node.op_type == "Relu")
    converted.graph.remove(relu, safe=False)
    assert board.settings(converted) is None  # an original node missing

    then_branch = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"])], "then", [], [value_info("r", [2])]
    )
    else_branch = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["n"])], "else", [], [value_info("n", [2])]
    )
    branchy = make_model(
        [helper.make_node("If", ["flag"], ["y"], then_branch=then_branch, else_branch=else_branch)],
        [value_info("x", [2]), value_info("flag", [], TensorProto.BOOL)],
        [value_info("y", [2])],
    )
    assert Switchboard.build(_working(branchy), ir.DataType.FLOAT16) is None


@fuzz_settings(max(1, EXAMPLES * 2 // 5))  # 60 in CI; MPCOMPILE_FUZZ_EXAMPLES scales it
@given(data=st.data())
def test_random_graphs_and_policies_match(data: st.DataObject) -> None:
    """The fuzzer's random graphs and policies (tests/test_fuzz.py): wherever the switchboard
    takes a model and a candidate, it computes what the candidate's own session computes."""
    from mpcompile.errors import MpcompileError

    example = data.draw(examples(), label="example")
    chosen = data.draw(options(example), label="options")
    work = _working(example.model)
    low = ir.DataType.BFLOAT16 if chosen["precision"] == "bf16" else ir.DataType.FLOAT16
    board = Switchboard.build(work, low)
    if board is None:
        assert any(node.op_type == "If" for node in work.graph)
        return
    try:
        converted = convert(work, **chosen).model
    except MpcompileError:
        return
    rng = np.random.default_rng(example.feeds_seed)
    feeds = {"x": rng.uniform(-1, 1, (2, 8)).astype(np.float32)}
    feeds.update({i.name: np.array(True) for i in work.graph.inputs if i.name == "flag"})
    (reference,) = board.run([feeds], board.reference_settings(), intermediates=True)
    _assert_same(reference, ReferenceSession(work, intermediates=True, prepack=False).run(feeds))
    candidate = board.settings(converted)
    if candidate is None:  # e.g. an original Cast to FLOAT16, which the switches do not model
        return
    (got,) = board.run([feeds], candidate)
    _assert_same(got, _own_session(converted, feeds))


@pytest.mark.parametrize(
    "name, tolerance",
    [("sensitive_deep_mixed", 1e-3), ("bert_encoder", 1e-3), ("sensitive_cancellation", 1e-2)],
)
def test_search_on_the_switchboard_finds_the_same_answer(name, tolerance):
    """With and without the switchboard: the same steps, errors and answer. The board costs a
    session and its answer's confirmation another, so it saves sessions from the second candidate
    after the first on (one candidate there: one session more than without it)."""
    proto = MODELS[name]()
    rules = RangeRules(cancellation_share=math.inf)  # no prediction: the search has to run
    shared = auto_convert(proto, rtol=tolerance, atol=tolerance, rules=rules)
    own = auto_convert(proto, rtol=tolerance, atol=tolerance, rules=rules, switchboard=False)
    steps = [(s.phase, s.tried, s.error, s.passed) for s in shared.trace if s.phase != "confirm"]
    assert steps == [(s.phase, s.tried, s.error, s.passed) for s in own.trace]
    assert shared.sensitivity_blocked == own.sensitivity_blocked
    assert shared.error == own.error and shared.fp16_flop_share == own.fp16_flop_share
    print(f"{name}: sessions {shared.sessions} vs {own.sessions}, evaluations {shared.evaluations}")
    assert own.sessions == own.evaluations
    assert shared.sessions <= 4  # reference, first candidate, board, confirmation
    assert shared.sessions <= own.sessions + 1


def _zoo(name: str) -> onnx.ModelProto:
    path = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"{name}.onnx"
    return onnx.load(str(path))


def test_a_zoo_graph_runs_as_in_its_own_sessions():
    """light_squeezenet (onnx's model zoo, 66 nodes): reference and three candidates."""
    work = _working(_zoo("light_squeezenet"))
    feeds = generate_inputs(work, seed=0)[0]
    board = Switchboard.build(work, ir.DataType.FLOAT16)
    (got,) = board.run([feeds], board.reference_settings(), intermediates=True)
    _assert_same(got, ReferenceSession(work, intermediates=True, prepack=False).run(feeds))
    candidates = sorted(low_precision_nodes(convert(work).model))
    for blocked in ([], candidates[::3], candidates[1::2]):
        converted = convert(work, block_nodes=[f"^{node}$" for node in blocked]).model
        (got,) = board.run([feeds], board.settings(converted))
        _assert_same(got, _own_session(converted, feeds))


def test_initializers_that_are_inputs_keep_their_default():
    """Graph inputs with an initializer may go unfed, even one no node reads (light_resnet50 has
    one): the switchboard keeps the initializer as its default, as the model's own session does."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
        helper.make_node("Add", ["h", "bias"], ["y"], name="bias_add"),
    ]
    model = make_model(
        nodes,
        [value_info("x", [2, 4]), value_info("bias", [4]), value_info("unused", [3])],
        [value_info("y", [2, 4])],
        [constant("w", np.ones((4, 4), np.float32)), constant("bias", np.full(4, 0.1, np.float32)),
         constant("unused", np.zeros(3, np.float32))],
    )  # fmt: skip
    work = _working(model)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)}
    board = Switchboard.build(work, ir.DataType.FLOAT16)
    converted = convert(work).model
    (got,) = board.run([feeds], board.settings(converted))
    _assert_same(got, _own_session(converted, feeds))
    result = auto_convert(model, inputs=feeds, rtol=1e-3, atol=1e-3)
    assert result.passed


def _wide_sum(width: int) -> onnx.ModelProto:
    """A Sum of ``width`` graph inputs and a constant (more inputs than ``REBUILD_INPUTS``, so
    the switchboard rebuilds it), read by a MatMul and also a graph output; a Tanh reads one input."""
    names = [f"x{index}" for index in range(width)]
    nodes = [
        helper.make_node("Sum", [*names, "c"], ["s"], name="sum"),
        helper.make_node("MatMul", ["s", "w"], ["y"], name="proj"),
        helper.make_node("Tanh", ["x0"], ["t"], name="tanh"),
    ]
    return make_model(
        nodes,
        [value_info(name, [2, 3]) for name in names],
        [value_info("s", [2, 3]), value_info("y", [2, 3]), value_info("t", [2, 3])],
        [constant("c", np.full((2, 3), 1000.5, np.float32)), weight("w", [3, 3])],
    )


@pytest.mark.parametrize("width", [3, 40, 600])
def test_wide_nodes_and_many_inputs_run_as_in_their_own_sessions(width, monkeypatch):
    """A node reading more values than ``REBUILD_INPUTS`` is rebuilt once instead of rewired per
    input, and a board with more inputs than ``LINEAR_RUN_INPUTS`` runs without the Python wrapper's
    quadratic input check (600: 1,800 switches); both give every candidate its own faithful run,
    intermediates included."""
    from mpcompile.evaluate import ort_session

    monkeypatch.setattr(ort_session, "LINEAR_RUN_INPUTS", 1000)
    work = _working(_wide_sum(width))
    rng = np.random.default_rng(0)
    feeds = {f"x{index}": rng.standard_normal((2, 3)).astype(np.float32) for index in range(width)}
    board = Switchboard.build(work, ir.DataType.FLOAT16)
    assert board is not None and [node.name for node in board.model.graph if node.op_type == "Sum"] == ["sum"]
    switched = set()
    for blocked in ([], ["^proj$"], ["^sum$"], ["^tanh$", "^sum$"]):
        converted = convert(work, block_nodes=blocked, keep_io_types=False).model
        chosen = board.settings(converted)
        switched.add(sum(bool(flag) for flag in chosen.switches.values()))
        (got,) = board.run([feeds], chosen)
        _assert_same(got, _own_session(converted, feeds))
    assert len(switched) > 1, "the candidates differ on the switchboard"
    (reference,) = board.run([feeds], board.reference_settings(), intermediates=True)
    _assert_same(reference, ReferenceSession(work, intermediates=True, prepack=False).run(feeds))
