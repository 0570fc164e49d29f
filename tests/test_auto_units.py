"""Unit tests of the --auto building blocks: criteria, range rules, node naming, regions, sensitivity."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from models.builder import constant, make_model, value_info
from mpcompile.analysis.range_rules import (
    RangeRules,
    cancellation,
    find_unsafe_nodes,
    reduction_depth,
    value_stats,
)
from mpcompile.auto.criteria import Criterion, CriterionError, make_criterion, parse_metric
from mpcompile.auto.graph import connected_regions, main_nodes, name_nodes
from mpcompile.auto.sensitivity import NodeSensitivity, blame_items, measure
from mpcompile.core.precision import FP16


def _model(text: str) -> ir.Model:
    return ir.from_onnx_text(text)


CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
chain (float[2, 4] x) => (float[2, 4] y) {
    a = Relu (x)
    b = Add (a, x)
    c = Mul (b, b)
    y = Softmax <axis = -1> (c)
}
"""


def test_tolerance_error_is_the_worst_ratio_to_the_allowed_error():
    criterion = make_criterion(rtol=0.1, atol=0.01)
    ref = [{"y": np.array([1.0, 10.0], np.float32)}]
    got = [{"y": np.array([1.05, 10.5], np.float32)}]  # allowed: 0.11 and 1.01
    result = criterion.check(ref, got)
    assert result.passed and math.isclose(result.error, 0.5 / 1.01, rel_tol=1e-5)
    bad = criterion.check(ref, [{"y": np.array([1.2, 10.0], np.float32)}])
    assert not bad and math.isclose(bad.error, 0.2 / 0.11, rel_tol=1e-5)


def test_new_infinities_and_changed_nans_fail():
    criterion = make_criterion(rtol=1.0, atol=1.0)
    ref = [{"y": np.array([1.0, np.nan], np.float32)}]
    assert not criterion.check(ref, [{"y": np.array([np.inf, np.nan], np.float32)}])
    assert not criterion.check(ref, [{"y": np.array([1.0, 0.0], np.float32)}])
    assert criterion.check(ref, [{"y": np.array([1.5, np.nan], np.float32)}])


def test_metrics_parse_and_check():
    assert parse_metric("cosine:0.9999") == ("cosine", 0.9999)
    assert parse_metric("REL_L2:1e-3") == ("rel-l2", 1e-3)
    cosine = make_criterion(metric="cosine:0.99")
    ref = [{"y": np.array([1.0, 0.0], np.float32)}]
    assert cosine.check(ref, [{"y": np.array([1.0, 0.1], np.float32)}])  # cos = 0.995
    assert not cosine.check(ref, [{"y": np.array([1.0, 0.2], np.float32)}])  # cos = 0.981
    for bad in ("cosine", "cosine:x", "cosine:1.5", "psnr:3"):
        with pytest.raises(CriterionError):
            parse_metric(bad)
    with pytest.raises(CriterionError, match="exclude"):
        make_criterion(rtol=1e-2, metric="cosine:0.99")
    with pytest.raises(CriterionError):
        make_criterion(rtol=0, atol=0)


def test_value_stats_overflow_and_flushed_magnitude():
    stats = value_stats([np.array([1e5, 1.0], np.float32)], FP16)
    assert stats.max_abs == 1e5 and stats.flushed_mass == 0
    tiny = value_stats([np.array([1e-9, 1e-9, 1e-9, 1.0], np.float32)], FP16)
    assert math.isclose(tiny.flushed_mass, 3e-9 / (1 + 3e-9), rel_tol=1e-5)  # Softmax-tail-like: negligible
    scaled = value_stats([np.full(8, 1e-8, np.float32)], FP16)
    assert scaled.flushed_mass == 1.0  # everything flushes to zero


@pytest.mark.parametrize(
    "arrays",
    [
        [np.array([1e5, -7e4, 1.0], np.float32), np.array([-2e5], np.float32)],
        [np.array([np.inf, 3.0, -np.inf], np.float32), np.array([1.0], np.float16)],
        [np.array([np.nan, -5.0], np.float32), np.array([np.nan], np.float64)],
        [np.array([], np.float32), np.arange(4, dtype=np.int64)],
    ],
    ids=["finite", "infinite", "nan", "no-floats"],
)
def test_value_stats_without_the_flushed_share_measure_the_same_max(arrays):
    """The range run's shortcut (``flushed=False``, the underflow rule off): the same max |x| over
    the finite values, whatever non-finite values a batch holds."""
    full = value_stats(arrays, FP16)
    short = value_stats(arrays, FP16, flushed=False)
    if full is None:
        assert short is None
    else:
        assert short.max_abs == full.max_abs and short.flushed_mass == 0


def test_range_rules_flag_overflow_underflow_and_depth():
    model = _model(CHAIN)
    nodes = main_nodes(model)
    assert name_nodes(model) == 4 and list(main_nodes(model)) == [
        "auto/Relu_0",
        "auto/Add_1",
        "auto/Mul_2",
        "auto/Softmax_3",
    ]
    nodes = main_nodes(model)
    x = np.ones((2, 4), np.float32)
    values = {
        "x": [x],
        "a": [x],
        "b": [np.full((2, 4), 200.0, np.float32)],
        "c": [np.full((2, 4), 40000.0, np.float32)],
        "y": [np.full((2, 4), 1e-9, np.float32)],
    }
    found = find_unsafe_nodes(nodes, list(nodes), values, FP16, RangeRules(), 17)
    assert set(found) == {"auto/Mul_2", "auto/Softmax_3"}
    assert found["auto/Mul_2"].rule == "overflow" and found["auto/Mul_2"].value == "c"
    strict = RangeRules(reduction_depth=3)
    values["y"] = [np.full((2, 4), 0.25, np.float32)]
    values["c"] = [np.full((2, 4), 100.0, np.float32)]
    found = find_unsafe_nodes(nodes, list(nodes), values, FP16, strict, 17)
    assert {name: f.rule for name, f in found.items()} == {"auto/Softmax_3": "deep-reduction"}
    assert "reduces 4 elements" in found["auto/Softmax_3"].describe()


CANCEL = """
<ir_version: 8, opset_import: ["" : 17]>
cancel (float[2, 8] x, float[2, 8] mask) => (float[2, 8] y, float[2, 8] keep) {
    offset = Constant <value = float {1000.0}> ()
    one = Constant <value = float {1.0}> ()
    a = Relu (x)
    b = Add (a, offset)
    d = Sub (b, offset)
    y = Mul (d, d)
    keep = Sub (one, mask)
}
"""


def _cancel_values() -> tuple[ir.Model, dict[str, ir.Node], dict[str, list[np.ndarray]]]:
    model = _model(CANCEL)
    name_nodes(model)
    nodes = main_nodes(model)
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    mask = np.zeros((2, 8), np.float32)
    mask[:, :7] = 1.0  # mostly 1: 1 - mask is mostly 0: amplification (8 + 7) / 1 = 15
    a = np.maximum(x, 0)
    b = a + np.float32(1000)
    d = b - np.float32(1000)
    values = {
        "x": [x], "mask": [mask], "offset": [np.float32(1000)], "one": [np.float32(1)],
        "a": [a], "b": [b], "d": [d], "y": [d * d], "keep": [1 - mask],
    }  # fmt: skip
    return model, nodes, values


def test_cancellation_rule_keeps_the_sum_and_its_producers_fp32():
    _, nodes, values = _cancel_values()
    candidates = [name for name, node in nodes.items() if node.op_type != "Constant"]
    found = find_unsafe_nodes(nodes, candidates, values, FP16, RangeRules(), 17, relative_budget=1e-2)
    assert {name: f.rule for name, f in found.items()} == {
        "auto/Sub_4": "cancellation",
        "auto/Add_3": "cancellation-input",  # its FP16 output is the rounding amplified
    }
    assert "cancellation amplifies input rounding" in found["auto/Sub_4"].describe()
    assert found["auto/Add_3"].describe().startswith("feeds auto/Sub_4")
    # 1 - mask cancels (amplification 15) but 0/1 values are exact in FP16: nothing to amplify.
    factor, predicted = cancellation(nodes["auto/Sub_6"], values, FP16)
    assert factor == 15.0 and predicted == 0.0
    # A loose tolerance, or the rule switched off, keeps everything low.
    assert not find_unsafe_nodes(nodes, candidates, values, FP16, RangeRules(), 17, relative_budget=100.0)
    off = RangeRules(cancellation_share=math.inf)
    assert not find_unsafe_nodes(nodes, candidates, values, FP16, off, 17, relative_budget=1e-2)


def test_cancellation_prediction_equals_the_fp16_error_it_causes():
    """Against FP32: with the Add's output stored in FP16 and the Sub computed exactly, the
    Sub's relative error sum |err| / sum |d| is exactly the predicted one (stated tolerance 1e-9)."""
    _, nodes, values = _cancel_values()
    factor, predicted = cancellation(nodes["auto/Sub_4"], values, FP16)
    b16 = values["b"][0].astype(np.float16).astype(np.float64)
    d = values["d"][0].astype(np.float64)
    measured = np.abs((b16 - 1000.0) - d).sum() / np.abs(d).sum()
    assert factor > 100 and math.isclose(predicted, measured, rel_tol=1e-9)
    assert predicted <= 2.0**-11 * factor  # never beyond the unit-roundoff bound u·A


def test_relative_budget_of_each_criterion():
    ref = [{"y": np.array([1.0, -3.0], np.float32)}, {"y": np.array([2.0, 2.0], np.float32)}]  # mean |y| 2
    assert math.isclose(make_criterion(rtol=1e-2, atol=1e-2).relative_budget(ref), 1e-2 + 1e-2 / 2)
    assert math.isclose(make_criterion(metric="cosine:0.99995").relative_budget(ref), 1e-2)
    assert make_criterion(metric="rel-l2:1e-3").relative_budget(ref) == 1e-3
    assert math.isclose(make_criterion(metric="max-abs:0.1").relative_budget(ref), 0.05)
    zeros = [{"y": np.zeros(3, np.float32)}]
    assert make_criterion(rtol=1e-2, atol=1e-2).relative_budget(zeros) == math.inf


def test_softmax_depth_follows_the_opset():
    model = _model(CHAIN.replace("Softmax <axis = -1>", "Softmax <axis = 1>"))
    softmax = list(model.graph)[-1]
    values = {"c": [np.zeros((2, 3, 5), np.float32)]}
    assert reduction_depth(softmax, values, 17) == 3  # one axis
    assert reduction_depth(softmax, values, 11) == 15  # flattened from axis 1


def test_duplicate_names_are_made_unique():
    model = _model(CHAIN)
    for node in model.graph:
        node.name = "same"
    name_nodes(model)
    names = [node.name for node in model.graph]
    assert names[0] == "same" and len(set(names)) == 4


def test_regions_and_blame_items():
    model = _model(CHAIN)
    name_nodes(model)
    nodes = main_nodes(model)
    regions = connected_regions(nodes, ["auto/Relu_0", "auto/Add_1", "auto/Softmax_3"])
    assert regions == [["auto/Relu_0", "auto/Add_1"], ["auto/Softmax_3"]]
    # Sensitivity: the Add amplifies nothing, the Mul introduces error.
    reference = [{"a": np.ones(4), "b": np.full(4, 2.0), "c": np.full(4, 4.0), "y": np.full(4, 0.25)}]
    candidate = [{"a": np.ones(4), "b": np.full(4, 2.0), "c": np.full(4, 4.4), "y": np.full(4, 0.25)}]
    sensitivities = measure(nodes, nodes, reference, candidate)
    assert math.isclose(sensitivities["auto/Mul_2"].introduced, 0.1)
    assert sensitivities["auto/Softmax_3"].introduced == 0.0  # reads an error of 0.1, has 0
    low = list(nodes)
    items = blame_items(nodes, low, sensitivities, {})
    assert items[0].node == "auto/Mul_2" and items[0].members == ("auto/Mul_2", "auto/Add_1")


def test_selection_ops_get_no_blame_item():
    """A Gather of an FP16 embedding table seems to introduce the table's rounding, but its FP16
    consumer rounds the same values: keeping the Gather alone FP32 would change nothing. It is
    no item of its own; the consumer's item takes it along."""
    nodes_proto = [
        helper.make_node("Gather", ["table", "ids"], ["e"], name="lookup"),
        helper.make_node("Add", ["e", "x"], ["y"], name="mix"),
    ]
    table = np.linspace(0.1, 2.0, 40, dtype=np.float32).reshape(10, 4)
    model = ir.from_proto(
        make_model(
            nodes_proto,
            [value_info("ids", [3], onnx.TensorProto.INT64), value_info("x", [3, 4])],
            [value_info("y", [3, 4])],
            [constant("table", table)],
        )
    )
    nodes = main_nodes(model)
    sensitivities = {
        "lookup": NodeSensitivity("lookup", 4e-4, 0.0, 4e-4),
        "mix": NodeSensitivity("mix", 3e-4, 4e-4, 0.0),
    }
    items = blame_items(nodes, ["lookup", "mix"], sensitivities, {})
    assert [item.node for item in items] == ["mix"] and items[0].members == ("mix", "lookup")


class _FakeEvaluator:
    """Stands in for mpcompile.auto.evaluator.Evaluator: a candidate passes when it keeps at
    least ``needed`` of the numbered nodes FP32; every new candidate costs one evaluation."""

    def __init__(self, needed: int, budget: int = 100):
        from mpcompile.auto.criteria import make_criterion

        self.needed, self.budget, self.evaluations = needed, budget, 0
        self.criterion = make_criterion()
        self.flops: dict[str, int] = {}
        self.seen: dict[frozenset, object] = {}

    def is_cached(self, blocked, static=False):
        return blocked in self.seen

    def probe(self, blocked, intermediates=False, static=False):
        from mpcompile.auto.criteria import CheckResult
        from mpcompile.auto.evaluator import BudgetExhausted, Probe

        if blocked not in self.seen:
            if self.evaluations >= self.budget:
                raise BudgetExhausted()
            self.evaluations += 1
            passed = len(blocked) >= self.needed
            check = CheckResult(passed, 0.5 if passed else 2.0, "y")
            self.seen[blocked] = Probe(blocked, None, frozenset(), 0.0, check, True)
        return self.seen[blocked]


def _gallop(needed: int, count: int, budget: int = 100, max_k: int | None = None):
    from mpcompile.auto.search import Search

    evaluator = _FakeEvaluator(needed, budget)
    search = Search(evaluator, {}, frozenset(), ())
    found = search._gallop(
        "nodes", count, lambda k: frozenset(str(i) for i in range(k)), lambda k: f"{k}", max_k=max_k
    )
    return found, [len(step.blocked) for step in search.steps]


def test_galloping_then_bisection_finds_the_fewest_items():
    assert _gallop(5, 20) == (5, [1, 2, 4, 8, 6, 5])
    assert _gallop(1, 20) == (1, [1])
    assert _gallop(20, 20) == (20, [1, 2, 4, 8, 16, 18, 19])  # 20 itself is known to pass: never run
    assert _gallop(3, 20, max_k=4) == (3, [1, 2, 4, 3])
    assert _gallop(7, 20, max_k=4) == (None, [1, 2, 4])  # not within the first few: give up
    assert _gallop(5, 20, budget=3) == (20, [1, 2, 4])  # budget spent: the known-passing bound


CANCEL_THEN_MIX = """
<ir_version: 8, opset_import: ["" : 17]>
mix (float[4, 8] x, float[8, 8] w) => (float[4, 8] y) {
    offset = Constant <value = float {1000.0}> ()
    a = Add (x, offset)
    d = Sub (a, offset)
    y = MatMul (d, w)
}
"""


def test_exact_introduced_error_blames_the_cancellation_not_the_matmul_after_it():
    """Candidate values are computed as the FP16-faithful run does (FP32 math, outputs rounded
    to FP16); the MatMul only passes the Sub's error on, so its introduced error stays at FP16
    rounding level (< 2**-9), while the Sub's is far beyond a 1e-2 tolerance."""
    model = _model(CANCEL_THEN_MIX)
    name_nodes(model)
    nodes = main_nodes(model)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    w = rng.standard_normal((8, 8)).astype(np.float32)

    def f16(array):
        return np.asarray(array, np.float32).astype(np.float16)

    reference = [{"x": x, "w": w, "a": x + 1000, "d": (x + 1000) - 1000, "y": ((x + 1000) - 1000) @ w}]
    a16 = f16(x.astype(np.float32) + 1000)
    d16 = f16(a16.astype(np.float32) - 1000)
    y16 = f16(d16.astype(np.float32) @ f16(w).astype(np.float32))
    candidate = [{"x": x, "w": f16(w), "a": a16, "d": d16, "y": y16}]
    sensitivity = measure(nodes, nodes, reference, candidate, FP16)
    add, sub, matmul = (sensitivity[f"auto/{op}"] for op in ("Add_1", "Sub_2", "MatMul_3"))
    assert sub.exact > 1e-2 and add.exact < 2**-9 and matmul.exact < 2**-9
    items = {item.node: item for item in blame_items(nodes, list(nodes)[1:], sensitivity, {})}
    assert items["auto/Sub_2"].exact == sub.exact and items["auto/Sub_2"].members == (
        "auto/Sub_2",
        "auto/Add_1",
    )
    # Without the low-precision type only the difference is measured.
    assert measure(nodes, nodes, reference, candidate)["auto/Sub_2"].exact is None


def test_sensitivity_bands_hold_one_rounding_and_follow_the_type():
    from mpcompile.auto.sensitivity import sensitivity_band

    u16, u_bf16 = 2.0**-11, 2.0**-8
    # One FP16 rounding shows as about u/4 .. u: [u/2, 2u) is one band, the next starts at 2u.
    assert {sensitivity_band(x, u16) for x in (u16 / 2, u16, 1.99 * u16)} == {0}
    assert sensitivity_band(2 * u16, u16) == 1 and sensitivity_band(0.49 * u16, u16) == -1
    assert sensitivity_band(u_bf16, u_bf16) == 0 and sensitivity_band(u16, u_bf16) < 0
    assert sensitivity_band(math.inf, u16) > sensitivity_band(1.0, u16) > sensitivity_band(0.0, u16)


def test_criterion_round_trips_through_the_saved_record():
    for criterion in (make_criterion(rtol=1e-3, atol=2e-3), make_criterion(metric="cosine:0.9999")):
        assert Criterion.from_dict(criterion.to_dict()) == criterion
