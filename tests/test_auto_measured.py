"""``--auto`` measures the block list's overflow-prone ops and long accumulations instead of
blocking them (``op_classes.MEASURABLE``): they are converted when the reference run shows them
safe (rule ``auto.measured[Op]``) and kept FP32 by a range rule (``auto:range``) when not.

Numeric checks run the converted model in the FP16-faithful CPU evaluation
(``mpcompile.evaluate.faithful``: every FP16 node output rounded as a GPU stores it, so the CPU
EP does not hide FP16 overflow) against the FP32 model, at rtol = atol = 1e-2 (--auto's default).
"""

from __future__ import annotations

import pathlib

import click
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from onnx import helper

import mpcompile
from models.builder import constant, make_model, value_info, weight
from mpcompile.auto import AUTO_RANGE, auto_convert, read_trace
from mpcompile.auto.api import measured_op_names
from mpcompile.commands.auto_options import auto_options, auto_settings, run_auto_from_cli
from mpcompile.errors import PolicyError
from mpcompile.evaluate import faithful
from mpcompile.evaluate.inputs import cast_feeds, generate_inputs
from mpcompile.policy import OpClass, Policy, op_classes
from mpcompile.policy.policy import ClassifiedOp
from tests.helpers import decisions_by_name

RTOL = ATOL = 1e-2  # the per-element tolerance the planted models are checked against


def _sandwich(
    middle: list[onnx.NodeProto],
    *,
    rows: int = 4,
    features: int = 8,
    scale: float = 0.3,
    extra: tuple[onnx.TensorProto, ...] = (),
    middle_rows: int | None = None,
) -> onnx.ModelProto:
    """x[rows, features] -> MatMul ('h') -> ``middle`` (reads 'h', writes 'm') -> MatMul -> y."""
    out_rows = rows if middle_rows is None else middle_rows
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        *middle,
        helper.make_node("MatMul", ["m", "w2"], ["y"], name="fc2"),
    ]
    return make_model(
        nodes,
        [value_info("x", [rows, features])],
        [value_info("y", [out_rows, 4])],
        [
            weight("w1", [features, features], seed=1, scale=scale),
            weight("w2", [features, 4], seed=2),
            *extra,
        ],
    )


def _worst_ratio(original: onnx.ModelProto, converted: onnx.ModelProto) -> float:
    """Worst |y - y_fp32| / (atol + rtol·|y_fp32|) of the FP16-faithful run (<= 1 passes)."""
    feeds = generate_inputs(ir.from_proto(original), seed=0)[0]
    want = faithful.run_reference(original, feeds)["y"]
    got = faithful.run(converted, cast_feeds(ir.from_proto(converted), feeds))["y"].astype(np.float64)
    with np.errstate(invalid="ignore"):
        ratio = np.abs(got - want) / (ATOL + RTOL * np.abs(want))
    worst = float(np.nanmax(ratio)) if np.isfinite(got).all() else float("inf")
    print(f"worst err/allowed {worst:.3g} (rtol = atol = {RTOL}, FP16-faithful CPU run)")
    return worst


def _softmax_l2_model() -> onnx.ModelProto:
    """Tanh -> Exp -> ReduceSum -> Div (a hand-written softmax) -> LpNormalization: all in range."""
    return _sandwich(
        [
            helper.make_node("Tanh", ["h"], ["t"], name="squash"),
            helper.make_node("Exp", ["t"], ["e"], name="exp"),
            helper.make_node("ReduceSum", ["e", "axes"], ["s"], name="sum", keepdims=1),
            helper.make_node("Div", ["e", "s"], ["d"], name="normalize"),
            helper.make_node("LpNormalization", ["d"], ["m"], name="l2", axis=-1, p=2),
        ],
        extra=(constant("axes", np.asarray([-1], np.int64)),),
    )


RELAXED_SAFE = {"exp": "Exp", "sum": "ReduceSum", "l2": "LpNormalization"}


def test_measured_ops_go_fp16_when_the_reference_run_shows_them_safe():
    model = _softmax_l2_model()
    result = auto_convert(model, rtol=RTOL, atol=ATOL)
    decisions = decisions_by_name(result.model)
    print({name: decisions[name] for name in RELAXED_SAFE})
    for name, op in RELAXED_SAFE.items():
        assert decisions[name] == ("fp16", "follow", f"auto.measured[{op}]")
    assert not result.range_blocked and not result.sensitivity_blocked
    assert result.passed and result.evaluations == 2 and result.fp16_flop_share == pytest.approx(1.0)
    assert read_trace(result.model)["measured_ops"] == list(measured_op_names())
    assert _worst_ratio(model, result.model) <= 1.0
    onnx.checker.check_model(result.model, full_check=True)


def test_static_blocks_keep_the_core_block_list():
    model = _softmax_l2_model()
    measured = auto_convert(model, rtol=RTOL, atol=ATOL)
    static = auto_convert(model, static_blocks=True, rtol=RTOL, atol=ATOL)
    decisions = decisions_by_name(static.model)
    for name, op in RELAXED_SAFE.items():
        assert decisions[name] == ("fp32", "block", f"policy.block[{op}]")
    assert read_trace(static.model)["measured_ops"] == []
    assert static.passed and static.fp16_flop_share < measured.fp16_flop_share
    assert _worst_ratio(model, static.model) <= 1.0


@pytest.mark.parametrize(
    ("op", "offset", "attrs_inputs"),
    [("Exp", 12.0, ()), ("Pow", 300.0, ("two",))],
    ids=["Exp(~12)", "Pow(~300, 2)"],
)
def test_overflowing_measured_op_is_kept_fp32_by_the_overflow_rule(op, offset, attrs_inputs):
    """Exp of ~12 (1.6e5) and Pow(~300, 2) (9e4) overflow FP16 (65504): kept FP32 by the headroom rule."""
    model = _sandwich(
        [
            helper.make_node("Add", ["h", "offset"], ["s"], name="shift"),
            helper.make_node(op, ["s", *attrs_inputs], ["big"], name="risky"),
            helper.make_node("Mul", ["big", "tiny"], ["m"], name="rescale"),
        ],
        scale=0.01,
        extra=(
            constant("offset", np.float32(offset)),
            constant("tiny", np.float32(1e-5)),
            constant("two", np.float32(2.0)),
        ),
    )
    result = auto_convert(model, rtol=RTOL, atol=ATOL)
    decisions = decisions_by_name(result.model)
    print(result.range_blocked)
    assert decisions["risky"][:2] == ("fp32", AUTO_RANGE)
    assert "'big' reaches max |x|" in result.range_blocked["risky"]
    assert decisions["fc1"][0] == decisions["fc2"][0] == "fp16"
    assert result.passed and _worst_ratio(model, result.model) <= 1.0
    # The same op forced to FP16 without measuring overflows: the rule is what keeps it correct.
    # (static: plain convert's own range run would measure the overflow and keep it FP32 too)
    forced = mpcompile.convert(model, allow_ops=[op], static=True).model
    assert decisions_by_name(forced)["risky"][0] == "fp16"
    assert _worst_ratio(model, forced) > 1.0


LONG = 100_000


@pytest.mark.parametrize(
    ("op", "node", "out_rows"),
    [
        ("ReduceSum", helper.make_node("ReduceSum", ["h", "axis0"], ["m"], name="deep", keepdims=1), 1),
        ("ReduceMean", helper.make_node("ReduceMean", ["h"], ["m"], name="deep", axes=[0], keepdims=1), 1),
        ("ReduceL2", helper.make_node("ReduceL2", ["h"], ["m"], name="deep", axes=[0], keepdims=1), 1),
        ("CumSum", helper.make_node("CumSum", ["h", "axis0_scalar"], ["m"], name="deep"), LONG),
        ("LpNormalization", helper.make_node("LpNormalization", ["h"], ["m"], name="deep", axis=0), LONG),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_reduction_over_a_long_axis_is_kept_fp32_by_the_depth_rule(op, node, out_rows):
    """Reductions over 1e5 elements exceed the reduction-depth guard (16384): kept FP32."""
    model = _sandwich(
        [node],
        rows=LONG,
        features=4,
        scale=0.1,
        middle_rows=out_rows,
        extra=(
            constant("axis0", np.asarray([0], np.int64)),
            constant("axis0_scalar", np.asarray(0, np.int64)),
        ),
    )
    result = auto_convert(model, rtol=RTOL, atol=ATOL)
    decisions = decisions_by_name(result.model)
    print(op, result.range_blocked)
    assert decisions["deep"][:2] == ("fp32", AUTO_RANGE)
    assert result.range_blocked["deep"] == f"reduces {LONG} elements per output (> 16384)"
    assert result.passed and _worst_ratio(model, result.model) <= 1.0


def test_hidden_sum_of_squares_is_kept_fp32_by_the_accumulator_rule():
    """ReduceL2 of 64 values of ~50: the result (~400) fits FP16, its sum of squares (~1.6e5) does not."""
    model = _sandwich(
        [
            helper.make_node("ReduceL2", ["h"], ["n"], name="norm", axes=[-1], keepdims=1),
            helper.make_node("Div", ["h", "n"], ["m"], name="unit"),
        ],
        features=64,
        scale=6.25,
    )
    result = auto_convert(model, rtol=RTOL, atol=ATOL)
    print(result.range_blocked)
    assert decisions_by_name(result.model)["norm"][:2] == ("fp32", AUTO_RANGE)
    assert result.range_blocked["norm"].startswith("accumulates the sum of squares reaching")
    assert result.passed and _worst_ratio(model, result.model) <= 1.0


def test_user_choices_win_over_measurement(tmp_path):
    model = _softmax_l2_model()
    blocked_op = decisions_by_name(auto_convert(model, block_ops=["Exp"]).model)["exp"]
    assert blocked_op == ("fp32", "user-block-op", "user.block_ops[Exp]")
    policy = tmp_path / "policy.toml"
    policy.write_text('block_ops = ["ReduceSum"]\n')
    from_file = decisions_by_name(auto_convert(model, policy=policy).model)["sum"]
    assert from_file == ("fp32", "user-block-op", "user.block_ops[ReduceSum]")
    blocked_node = decisions_by_name(auto_convert(model, block_nodes=["l2"]).model)["l2"]
    assert blocked_node[:2] == ("fp32", "user-block-node")


NOT_MEASURABLE = [
    "Range", "TopK", "NonMaxSuppression", "RoiAlign", "GridSample", "RandomNormal", "Bernoulli",
    "DFT", "STFT", "SoftmaxCrossEntropyLoss", "NegativeLogLikelihoodLoss", "Det",
]  # fmt: skip


def test_only_measurable_ops_are_relaxed():
    policy = Policy.from_options(measured_ops=measured_op_names())
    assert op_classes.MEASURABLE <= op_classes.BLOCK
    for op in NOT_MEASURABLE:
        assert policy.classify("", op).op_class == OpClass.BLOCK, op
    assert policy.classify("ai.onnx.ml", "TreeEnsembleRegressor").op_class == OpClass.BLOCK
    for _, op in op_classes.MEASURABLE:
        assert policy.classify("", op) == ClassifiedOp(OpClass.FOLLOW, f"auto.measured[{op}]")
    with pytest.raises(PolicyError, match="TopK not measurable"):
        Policy.from_options(measured_ops=["TopK"])
    # the plain conversion keeps the static list
    assert decisions_by_name(mpcompile.convert(_softmax_l2_model()).model)["exp"][1] == "block"


def test_scatter_reductions_stay_blocked_under_auto():
    model = _sandwich(
        [
            helper.make_node(
                "ScatterElements", ["h", "idx", "h"], ["m"], name="scatter", axis=1, reduction="add"
            )
        ],
        extra=(constant("idx", np.zeros((4, 8), np.int64)),),
    )
    result = auto_convert(model, rtol=RTOL, atol=ATOL)
    assert decisions_by_name(result.model)["scatter"][:2] == ("fp32", "block")


@click.command("convert")
@click.argument("model", type=click.Path(dir_okay=False, path_type=pathlib.Path))
@click.option("-o", "--output", type=click.Path(path_type=pathlib.Path), required=True)
@auto_options
def convert_stand_in(model, output):
    settings = auto_settings()
    if settings is None:
        click.echo("plain conversion")
        return
    run_auto_from_cli(model, output, settings, quiet=True)


def test_keep_static_blocks_option(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_softmax_l2_model(), path)
    out = tmp_path / "o.onnx"
    alone = CliRunner().invoke(convert_stand_in, [str(path), "-o", str(out), "--keep-static-blocks"])
    assert alone.exit_code == 2 and "--keep-static-blocks: only with --auto" in alone.output
    result = CliRunner().invoke(
        convert_stand_in, [str(path), "-o", str(out), "--auto", "--keep-static-blocks"]
    )
    assert result.exit_code == 0, result.output
    saved = onnx.load(out)
    assert (
        decisions_by_name(saved)["exp"][:2] == ("fp32", "block") and read_trace(saved)["measured_ops"] == []
    )
    default = CliRunner().invoke(convert_stand_in, [str(path), "-o", str(out), "--auto"])
    assert default.exit_code == 0, default.output
    assert decisions_by_name(onnx.load(out))["exp"] == ("fp16", "follow", "auto.measured[Exp]")


def _one_node(node: onnx.NodeProto, x: np.ndarray):
    """The node as an ``ir.Node`` and the FP32 values of its input and output (ORT CPU)."""
    import onnxruntime as ort

    graph = helper.make_graph([node], "one", [value_info("x", list(x.shape))], [value_info("y", None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": x})
    graph = ir.from_proto(model).graph
    return next(iter(graph)), {"x": [x], "y": [y]}


def _lrn_square_sums(x: np.ndarray, size: int) -> np.ndarray:
    channels = x.shape[1]
    out = np.zeros_like(x, dtype=np.float64)
    for c in range(channels):
        low, high = max(0, c - (size - 1) // 2), min(channels - 1, c + size - 1 - (size - 1) // 2)
        out[:, c] = (x[:, low : high + 1].astype(np.float64) ** 2).sum(axis=1)
    return out


X4 = np.random.default_rng(0).standard_normal((2, 6, 5, 4)).astype(np.float32) * 30


@pytest.mark.parametrize(
    ("node", "depth", "accumulated"),
    [
        (helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3]), 20, np.abs(X4.sum(axis=(2, 3))).max()),
        (helper.make_node("ReduceL2", ["x"], ["y"], axes=[1]), 6, (X4.astype(np.float64) ** 2).sum(1).max()),
        (
            helper.make_node("ReduceLogSumExp", ["x"], ["y"], axes=[3]),
            4,
            np.exp((X4 / 30).astype(np.float64)).sum(3).max(),
        ),
        (
            helper.make_node("LpNormalization", ["x"], ["y"], axis=1, p=2),
            6,
            (X4.astype(np.float64) ** 2).sum(1).max(),
        ),
        (
            helper.make_node("MeanVarianceNormalization", ["x"], ["y"]),
            2 * 5 * 4,
            (X4.astype(np.float64) ** 2).sum(axis=(0, 2, 3)).max(),
        ),
        (
            helper.make_node("LpPool", ["x"], ["y"], kernel_shape=[5, 4], p=2),
            20,
            (X4.astype(np.float64) ** 2).sum(axis=(2, 3)).max(),
        ),
        (helper.make_node("LRN", ["x"], ["y"], size=3), 3, _lrn_square_sums(X4, 3).max()),
    ],
    ids=lambda value: value.op_type if isinstance(value, onnx.NodeProto) else "",
)
def test_depth_and_accumulator_of_each_accumulating_op(node, depth, accumulated):
    """Reduction depth from the shapes and the hidden accumulator from the values, against numpy."""
    from mpcompile.analysis.range_rules import accumulator_max, reduction_depth

    x = X4 / 30 if node.op_type == "ReduceLogSumExp" else X4  # keep exp in float32 range
    ir_node, values = _one_node(node, x)
    assert reduction_depth(ir_node, values, 17) == depth
    measured, what = accumulator_max(ir_node, values, 17)
    print(node.op_type, what, measured, accumulated)
    assert measured == pytest.approx(accumulated, rel=1e-4)


def _integer_cast_model() -> onnx.ModelProto:
    """y = (x @ w1 + Cast(ids) * 1e-3) @ w2, ids an int64 input (positions, counts, a mask)."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Cast", ["ids"], ["c"], name="ids_to_float", to=onnx.TensorProto.FLOAT),
        helper.make_node("Mul", ["c", "scale"], ["cs"], name="scale_ids"),
        helper.make_node("Add", ["h", "cs"], ["m"], name="mix"),
        helper.make_node("MatMul", ["m", "w2"], ["y"], name="fc2"),
    ]
    return make_model(
        nodes,
        [value_info("x", [4, 8]), value_info("ids", [4, 8], onnx.TensorProto.INT64)],
        [value_info("y", [4, 4])],
        [
            weight("w1", [8, 8], seed=1, scale=0.3),
            weight("w2", [8, 4], seed=2),
            constant("scale", np.float32(1e-3)),
        ],
    )


def _integer_feeds(low: int, high: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "x": rng.standard_normal((4, 8)).astype(np.float32),
        "ids": rng.integers(low, high, (4, 8)).astype(np.int64),
    }


def test_cast_of_a_mask_goes_fp16():
    """The core keeps a Cast from integers (and the Mul after it) FP32 by default; --auto makes it
    a candidate (measured_casts), and a 0/1 mask, exact in FP16 whatever the inputs, goes FP16
    with one Cast fewer."""
    model = _integer_cast_model()
    plain = decisions_by_name(mpcompile.convert(model).model)
    assert plain["ids_to_float"][:2] == ("fp32", "not-between-low")
    result = auto_convert(model, inputs=_integer_feeds(0, 2))
    decisions = decisions_by_name(result.model)
    print({name: decisions[name] for name in ("ids_to_float", "scale_ids")})
    assert decisions["ids_to_float"] == (
        "fp16",
        "pass-through",
        "policy.pass-through[Cast]; integer source (measured_casts)",
    )
    assert decisions["scale_ids"][0] == "fp16"
    cast = next(node for node in result.model.graph.node if node.name == "ids_to_float")
    assert helper.get_attribute_value(cast.attribute[0]) == onnx.TensorProto.FLOAT16
    assert result.passed and not result.range_blocked
    onnx.checker.check_model(result.model, full_check=True)
    import onnxruntime as ort

    ort.InferenceSession(result.model.SerializeToString(), providers=["CPUExecutionProvider"])
    static = decisions_by_name(auto_convert(model, inputs=_integer_feeds(0, 2), static_blocks=True).model)
    assert static["ids_to_float"][0] == "fp32"


@pytest.mark.parametrize(("low", "high"), [(0, 100), (3000, 5000)], ids=["small ids", "beyond 2048"])
def test_cast_of_other_integers_is_kept_fp32_by_a_range_rule(low, high):
    """Ids, positions and counts are exact in FP16 only up to 2048, and the sample says little
    about their range on other inputs: the integer-cast rule keeps the Cast FP32, even where every
    measured value (0..100) would be exact."""
    result = auto_convert(_integer_cast_model(), inputs=_integer_feeds(low, high))
    decisions = decisions_by_name(result.model)
    print(result.range_blocked)
    assert decisions["ids_to_float"][:2] == ("fp32", AUTO_RANGE)
    assert "beyond a 0/1 mask" in result.range_blocked["ids_to_float"]
    assert result.passed


def test_measured_ops_stay_blocked_inside_subgraphs_where_nothing_is_measured():
    """--auto measures main-graph values only (the reference run cannot expose a branch's
    intermediates), so an Exp inside an If branch keeps the static block list's FP32, while the
    same op in the main graph is a measured candidate (a merged decoder's whole body is in Ifs)."""
    branch_nodes = [
        helper.make_node("MatMul", ["h", "w_branch"], ["b1"], name="branch_fc"),
        helper.make_node("Exp", ["b1"], ["b_out"], name="branch_exp"),
    ]
    branch = helper.make_graph(
        branch_nodes, "then", [], [value_info("b_out", [4, 8])], [weight("w_branch", [8, 8])]
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["h"], ["o_out"], name="else_identity")],
        "else",
        [],
        [value_info("o_out", [4, 8])],
    )
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Exp", ["h"], ["e"], name="main_exp"),
            helper.make_node("If", ["cond"], ["m"], name="branch", then_branch=branch, else_branch=other),
            helper.make_node("Add", ["m", "e"], ["s"], name="add"),
            helper.make_node("MatMul", ["s", "w2"], ["y"], name="fc2"),
        ],
        [value_info("x", [4, 8]), value_info("cond", [], onnx.TensorProto.BOOL)],
        [value_info("y", [4, 4])],
        [weight("w1", [8, 8], seed=1, scale=0.1), weight("w2", [8, 4], seed=2)],
    )
    result = mpcompile.convert(model, measured_ops=measured_op_names())
    decisions = {row.name: row for row in result.decisions()}  # every graph
    assert decisions["main_exp"].rule == "auto.measured[Exp]"
    assert decisions["branch_exp"].precision == "fp32" and decisions["branch_exp"].rule == "policy.block[Exp]"
    assert decisions["branch_fc"].precision == "fp16"
