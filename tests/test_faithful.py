"""FP16-faithful CPU evaluation: overflow shows as inf, and each node output is rounded exactly as
numpy rounds FP32 results to FP16 (or ml_dtypes to BF16)."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_validate_models import FP16, FP32, overflow_model

from models.builder import make_model, value_info
from mpcompile.evaluate import faithful

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is needed to evaluate models")

BF16 = TensorProto.BFLOAT16


def test_overflow_mul_is_inf_in_faithful_mode_but_hidden_by_native_cpu():
    model = overflow_model()
    x = np.array([65504.0], np.float32)
    result = faithful.run(model, {"x": x}, intermediates=["p"])
    assert np.isposinf(result["y"]).all()
    assert result["p"].dtype == np.float16 and np.isposinf(result["p"]).all()
    # The motivation, measured on this ORT: its CPU EP computes the FP16 Mul in FP32 and drops the
    # Cast pair, returning 262016 (a later ORT that stops doing so would return inf here).
    native = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (value,) = native.run(None, {"x": x})[0]
    assert value == 262016.0 or math.isinf(value)


def _chain_model(low: int, numpy_low) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x(low) → Mul a → Add b → Div c → Abs → Sqrt → Sub d → Relu → Neg → Mul big → Mul tiny → Exp,
    and Neg → Mul 1e-6 (subnormal in FP16).

    Constants are chosen so outputs overflow, go subnormal and hit rounding ties.
    """
    rng = np.random.default_rng(1)
    consts = {
        "a": rng.standard_normal(64).astype(numpy_low) * numpy_low(3),
        "b": rng.standard_normal(64).astype(numpy_low),
        "c": (rng.uniform(0.1, 2.0, 64)).astype(numpy_low),
        "d": rng.standard_normal(64).astype(numpy_low),
        "big": np.full(64, 9000.0, dtype=numpy_low),
        "tiny": np.full(64, 1e-3, dtype=numpy_low),
        "subnormal": np.full(64, 1e-6, dtype=numpy_low),
    }
    steps = [
        ("Mul", ["x", "a"], "m1"),
        ("Add", ["m1", "b"], "a1"),
        ("Div", ["a1", "c"], "d1"),
        ("Abs", ["d1"], "abs1"),
        ("Sqrt", ["abs1"], "s1"),
        ("Sub", ["s1", "d"], "sub1"),
        ("Relu", ["sub1"], "r1"),
        ("Neg", ["r1"], "n1"),
        ("Mul", ["n1", "big"], "m2"),
        ("Mul", ["m2", "tiny"], "m3"),
        ("Exp", ["m3"], "y"),
        ("Mul", ["n1", "subnormal"], "sn"),
    ]
    nodes = [helper.make_node(op, ins, [out]) for op, ins, out in steps]
    initializers = [
        numpy_helper.from_array(value, name)
        if numpy_low is np.float16
        else helper.make_tensor(name, BF16, value.shape, value.view(np.uint16).tobytes(), raw=True)
        for name, value in consts.items()
    ]
    model = make_model(nodes, [value_info("x", [4, 64], low)], [value_info("y", [4, 64], low)], initializers)
    return model, consts


def _numpy_per_node(consts, x, numpy_low) -> dict[str, np.ndarray]:
    """Each node in FP32 on its (already rounded) inputs, output rounded to the low type."""
    f = {name: value.astype(np.float32) for name, value in consts.items()}
    v = {}

    def r(value):
        return value.astype(np.float32).astype(numpy_low)

    with np.errstate(over="ignore", invalid="ignore"):
        v["m1"] = r(x.astype(np.float32) * f["a"])
        v["a1"] = r(v["m1"].astype(np.float32) + f["b"])
        v["d1"] = r(v["a1"].astype(np.float32) / f["c"])
        v["abs1"] = r(np.abs(v["d1"].astype(np.float32)))
        v["s1"] = r(np.sqrt(v["abs1"].astype(np.float32)))
        v["sub1"] = r(v["s1"].astype(np.float32) - f["d"])
        v["r1"] = r(np.maximum(v["sub1"].astype(np.float32), 0))
        v["n1"] = r(-v["r1"].astype(np.float32))
        v["m2"] = r(v["n1"].astype(np.float32) * f["big"])
        v["m3"] = r(v["m2"].astype(np.float32) * f["tiny"])
        v["y"] = r(np.exp(v["m3"].astype(np.float32)))
        v["sn"] = r(v["n1"].astype(np.float32) * f["subnormal"])
    return v


@pytest.mark.parametrize(("low", "numpy_low"), [(FP16, np.float16), (BF16, ml_dtypes.bfloat16)])
def test_chain_matches_numpy_per_node_rounding(low, numpy_low):
    model, consts = _chain_model(low, numpy_low)
    x = (np.random.default_rng(2).standard_normal((4, 64)) * 20).astype(numpy_low)
    got = faithful.run(model, {"x": x}, intermediates=True)
    expected = _numpy_per_node(consts, x, numpy_low)
    exact = [name for name in expected if name != "y"]  # IEEE-exact ops: bit-for-bit
    for name in exact:
        assert got[name].dtype == numpy_low, name
        np.testing.assert_array_equal(got[name].view(np.uint16), expected[name].view(np.uint16), err_msg=name)
    # Exp is not correctly rounded in FP32 by every library: allow one unit in the last low-precision place.
    got_y, want_y = got["y"].astype(np.float32), expected["y"].astype(np.float32)
    ulp = (
        np.spacing(want_y.astype(numpy_low)).astype(np.float32) if numpy_low is np.float16 else want_y * 2**-7
    )
    assert np.all(np.abs(got_y - want_y) <= np.abs(ulp))
    if numpy_low is np.float16:  # the chain really exercises FP16's edges: overflow and subnormals
        assert np.isneginf(got["m2"].astype(np.float32)).any()
        sn = np.abs(got["sn"].astype(np.float32))
        assert ((sn > 0) & (sn < np.finfo(np.float16).tiny)).any()


def test_rounding_matches_numpy_on_edge_values():
    """ORT's Cast FP32→FP16 inside the evaluation rounds like numpy: ties to even, overflow, subnormals."""
    model = make_model(
        [helper.make_node("Cast", ["x"], ["y"], to=FP16)],
        [value_info("x", [12])],
        [value_info("y", [12], FP16)],
    )
    x = np.array(
        [
            65504,
            65519.99,
            65520,
            -65520,
            1 + 2**-11,
            1 + 3 * 2**-11,
            2**-24,
            2**-25,
            2**-25 * 1.01,
            6e-8,
            1e-9,
            np.nan,
        ],
        np.float32,
    )
    got = faithful.run(model, {"x": x})["y"]
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16)
    np.testing.assert_array_equal(got.view(np.uint16), expected.view(np.uint16))


def test_rounding_casts_survive_in_the_session(tmp_path):
    """Proof that ORT keeps every explicit rounding: the optimized graph it runs still has them."""
    model, _ = _chain_model(FP16, np.float16)
    evaluation, _ = faithful.build_faithful_model(model)
    rounding = [n for n in evaluation.graph if n.metadata_props.get(faithful.ROUNDING_TAG) == "1"]
    assert len(rounding) == 2 * 12  # a narrowing and a widening Cast after each of the 12 nodes
    faithful.check_faithful_model(evaluation)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "as_run.onnx")
    ort.InferenceSession(
        ir.to_proto(evaluation).SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    as_run = onnx.load(str(tmp_path / "as_run.onnx"))
    casts = [n for n in as_run.graph.node if n.op_type == "Cast"]
    assert len(casts) == len(rounding)


def test_low_precision_only_in_rounding_casts():
    model, _ = _chain_model(FP16, np.float16)
    evaluation, declared = faithful.build_faithful_model(model)
    for node in evaluation.graph:
        if node.op_type != "Cast":
            assert all(v.dtype == ir.DataType.FLOAT for v in [*node.inputs, *node.outputs]), node.op_type
    assert declared["y"] == ir.DataType.FLOAT16


def test_input_model_is_not_modified():
    model = overflow_model()
    before = model.SerializeToString()
    as_ir = ir.serde.deserialize_model(model)
    text_before = ir.to_onnx_text(as_ir)
    faithful.run(model, {"x": np.ones(1, np.float32)})
    faithful.run(as_ir, {"x": np.ones(1, np.float32)})
    assert model.SerializeToString() == before
    assert ir.to_onnx_text(as_ir) == text_before


def test_if_branch_outputs_are_rounded():
    """Rounding also happens inside subgraphs."""
    then_graph = helper.make_graph(
        [helper.make_node("Mul", ["x16", "four"], ["t"])], "then", [], [value_info("t", [1], FP16)]
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["x16"], ["e"])], "else", [], [value_info("e", [1], FP16)]
    )
    model = make_model(
        [
            helper.make_node("Cast", ["x"], ["x16"], to=FP16),
            helper.make_node("If", ["cond"], ["branch"], then_branch=then_graph, else_branch=else_graph),
            helper.make_node("Cast", ["branch"], ["y"], to=FP32),
        ],
        [value_info("x", [1]), value_info("cond", [], TensorProto.BOOL)],
        [value_info("y", [1])],
        [numpy_helper.from_array(np.array([4], np.float16), "four")],
    )
    feeds = {"x": np.array([65504], np.float32), "cond": np.array(True)}
    assert np.isposinf(faithful.run(model, feeds)["y"]).all()
    feeds["cond"] = np.array(False)
    assert faithful.run(model, feeds)["y"][0] == 65504.0


def test_constant_nodes_and_cast_targets_are_widened():
    """A Constant holding FP16 and a Cast to FP16 in the middle of FP32 compute."""
    model = make_model(
        [
            helper.make_node(
                "Constant", [], ["c"], value=numpy_helper.from_array(np.array([3.0], np.float16), "c_value")
            ),
            helper.make_node("Cast", ["x"], ["x16"], to=FP16),
            helper.make_node("Mul", ["x16", "c"], ["p"]),
            helper.make_node(
                "ConstantOfShape", ["shape"], ["z"], value=helper.make_tensor("v", FP16, [1], [0.5])
            ),
            helper.make_node("Add", ["p", "z"], ["y"]),
        ],
        [value_info("x", [1]), value_info("shape", [1], TensorProto.INT64)],
        [value_info("y", [1], FP16)],
    )
    x = np.array([0.1], np.float32)
    got = faithful.run(model, {"x": x, "shape": np.array([1], np.int64)})["y"]
    x16 = x.astype(np.float16).astype(np.float32)
    expected = ((x16 * 3).astype(np.float16).astype(np.float32) + 0.5).astype(np.float16)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got, expected)


def test_run_reference_exposes_fp32_intermediates():
    model = make_model(
        [helper.make_node("Mul", ["x", "w"], ["m"]), helper.make_node("Tanh", ["m"], ["y"])],
        [value_info("x", [3])],
        [value_info("y", [3])],
        [numpy_helper.from_array(np.array([1.0, 2.0, 3.0], np.float32), "w")],
    )
    x = np.array([0.5, -1.0, 2.0], np.float32)
    got = faithful.run_reference(model, {"x": x}, intermediates=True)
    np.testing.assert_array_equal(got["m"], x * np.array([1, 2, 3], np.float32))
    np.testing.assert_allclose(got["y"], np.tanh(got["m"]), rtol=1e-6)
    assert set(faithful.run_reference(model, {"x": x}, intermediates=["m"])) == {"y", "m"}


def test_unknown_intermediate_name_is_refused():
    with pytest.raises(KeyError, match="nope"):
        faithful.run(overflow_model(), {"x": np.ones(1, np.float32)}, intermediates=["nope"])


def test_accepts_a_path(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(overflow_model(), str(path))
    assert np.isposinf(faithful.run(path, {"x": np.array([65504], np.float32)})["y"]).all()


def test_untyped_contrib_op_outputs_are_rounded():
    """com.microsoft ops are unknown to onnx shape inference: their FP16 outputs are found from
    their inputs, also along a chain of them."""
    model = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Gelu", ["x"], ["g1"], domain="com.microsoft"),
                helper.make_node("Gelu", ["g1"], ["g2"], domain="com.microsoft"),
                helper.make_node("Mul", ["g2", "big"], ["y"]),
            ],
            "contrib",
            [value_info("x", [8], FP16)],
            [value_info("y", [8], FP16)],
            [numpy_helper.from_array(np.full(8, 1000.0, np.float16), "big")],
        ),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    model.ir_version = 10
    evaluation, _ = faithful.build_faithful_model(model)
    rounded = {
        n.inputs[0].name for n in evaluation.graph if n.metadata_props.get(faithful.ROUNDING_TAG) == "1"
    }
    assert {"g1__unrounded", "g2__unrounded", "y__unrounded"} <= rounded
    x = np.linspace(-3, 80, 8).astype(np.float16)
    got = faithful.run(model, {"x": x}, intermediates=["g1", "g2"])
    erf = np.vectorize(math.erf)

    def gelu(v):
        v = v.astype(np.float64)
        return (0.5 * v * (1 + erf(v / math.sqrt(2)))).astype(np.float32).astype(np.float16)

    g1 = gelu(x)
    np.testing.assert_allclose(got["g1"].astype(np.float32), g1.astype(np.float32), rtol=2**-10)
    with np.errstate(over="ignore"):
        expected_y = (gelu(got["g1"]).astype(np.float32) * 1000).astype(np.float16)
    assert got["y"].dtype == np.float16 and np.isposinf(got["y"][-1])  # 80 * 1000 overflows FP16
    np.testing.assert_allclose(got["y"].astype(np.float32), expected_y.astype(np.float32), rtol=2**-9)


def _traced_size_value_info_model() -> onnx.ModelProto:
    """x[1, 96, h, w] -> GlobalAveragePool -> Relu -> Mul(·, x) -> Relu -> Relu, with value_info
    declaring every intermediate [1, 96, 1, 1]: right for the pooled values, right for the Mul
    only at the 1x1 size an exporter traced. ONNX Runtime plans buffer reuse from such shapes."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["p"]),
        helper.make_node("Relu", ["p"], ["r"]),
        helper.make_node("Mul", ["r", "x"], ["m"]),
        helper.make_node("Relu", ["m"], ["q"]),
        helper.make_node("Relu", ["q"], ["y"]),
    ]
    model = make_model(nodes, [value_info("x", [1, 96, "h", "w"])], [value_info("y", [1, 96, "h", "w"])])
    model.graph.value_info.extend(value_info(name, [1, 96, 1, 1]) for name in ["p", "r", "m", "q"])
    return model


def test_value_shapes_declared_for_one_input_size_do_not_constrain_another():
    import onnxruntime as ort

    model = _traced_size_value_info_model()
    x = np.random.default_rng(0).standard_normal((1, 96, 2, 2)).astype(np.float32)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    as_exported = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="re-use buffer"):  # what the declared shapes cause
        as_exported.run(None, {"x": x})
    typed = faithful.prepared_copy(model)  # every value typed: shapes dropped, ORT infers them
    untyped = onnx.ModelProto()
    untyped.CopyFrom(model)
    del untyped.graph.value_info[:]
    untyped.graph.value_info.extend(value_info(name, [1, 96, 1, 1]) for name in ["p", "r", "m"])
    inferred = faithful.prepared_copy(untyped)  # "q" untyped: onnx shape inference types it
    shapes = {value.name: value.shape for node in typed.graph for value in node.outputs}
    assert shapes["p"] is None and shapes["m"] is None
    shapes = {value.name: value.shape for node in inferred.graph for value in node.outputs}
    assert shapes["p"] == ir.Shape([1, 96, 1, 1]) and shapes["m"] != ir.Shape([1, 96, 1, 1])
    for prepared in (typed, inferred):
        proto = ir.to_proto(prepared)
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for size in (1, 2, 3):
            x = np.random.default_rng(size).standard_normal((1, 96, size, size)).astype(np.float32)
            (y,) = session.run(None, {"x": x})
            want = np.maximum(np.maximum(x.mean(axis=(2, 3), keepdims=True), 0) * x, 0)
            np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


def test_optional_outputs_left_out_are_not_rounded():
    """A fused node with an optional output left out (``""``, as ORT's SkipLayerNormalization
    writes it) stores nothing there: no rounding Cast may read it."""
    scale = numpy_helper.from_array(np.ones(8, np.float16), "scale")
    bias = numpy_helper.from_array(np.zeros(8, np.float16), "bias")
    model = make_model(
        [
            helper.make_node("Cast", ["x"], ["x16"], to=FP16),
            helper.make_node("LayerNormalization", ["x16", "scale", "bias"], ["y16", "", "inv_std"], axis=-1),
            helper.make_node("Cast", ["y16"], ["y"], to=FP32),
        ],
        [value_info("x", [2, 8])],
        [value_info("y", [2, 8]), value_info("inv_std", [2, 1])],
        [scale, bias],
    )
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    evaluation, _ = faithful.build_faithful_model(model)
    for node in evaluation.graph:
        assert all(value is None or value.name for value in node.inputs), node
    got = faithful.run(model, {"x": x})
    x16 = x.astype(np.float16).astype(np.float32)
    want = (x16 - x16.mean(-1, keepdims=True)) / np.sqrt(x16.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(got["y"], want.astype(np.float16).astype(np.float32), rtol=2e-3, atol=2e-3)


def test_reference_session_hands_large_weights_to_ort_as_arrays():
    """``serialize_apart``: the large weight leaves the serialized graph (ORT takes the array), the
    model keeps its data, and the run equals the FP32 product computed by numpy."""
    from mpcompile.evaluate.ort_session import APART_MIN_BYTES, serialize_apart

    rng = np.random.default_rng(0)
    w = rng.standard_normal((128, 256)).astype(np.float32)  # 128 KiB: handed over apart
    b = rng.standard_normal((256,)).astype(np.float32)  # 1 KiB: stays in the graph
    assert w.nbytes >= APART_MIN_BYTES > b.nbytes
    proto = make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
        [value_info("x", [2, 128])],
        [value_info("y", [2, 256])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = ir.from_proto(proto)
    serialized, apart = serialize_apart(model)
    assert list(apart) == ["w"] and len(serialized) < w.nbytes
    np.testing.assert_array_equal(model.graph.initializers["w"].const_value.numpy(), w)  # unchanged
    x = rng.standard_normal((2, 128)).astype(np.float32)
    got = faithful.ReferenceSession(proto).run({"x": x})["y"]
    np.testing.assert_allclose(got, x @ w + b, rtol=1e-5, atol=1e-5)


def test_sessions_with_many_inputs_skip_the_wrappers_quadratic_check(monkeypatch):
    """Above ``LINEAR_RUN_INPUTS`` inputs a run goes to ORT's C++ session directly (the Python
    wrapper's input check is quadratic: plain convert's range run on 100,000 inputs); the values
    are the wrapper's, bit for bit."""
    from mpcompile.evaluate import ort_session

    width = 5
    nodes = [helper.make_node("Sum", [f"x{index}" for index in range(width)], ["s"], name="sum")]
    nodes.append(helper.make_node("Tanh", ["s"], ["y"], name="tanh"))
    graph = helper.make_graph(
        nodes,
        "many_inputs",
        [helper.make_tensor_value_info(f"x{index}", TensorProto.FLOAT, [2, 3]) for index in range(width)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(0)
    feeds = {f"x{index}": rng.standard_normal((2, 3)).astype(np.float32) for index in range(width)}
    checked = faithful.ReferenceSession(model, intermediates=True).run(feeds)
    calls = []
    monkeypatch.setattr(ort_session, "LINEAR_RUN_INPUTS", 2)
    real = ort_session.run_linear

    def counting(session, names, inputs):
        calls.append(getattr(session, "_sess", None) is not None and len(inputs) > 2)
        return real(session, names, inputs)

    monkeypatch.setattr(faithful, "run_linear", counting)
    unchecked = faithful.ReferenceSession(model, intermediates=True).run(feeds)
    assert calls == [True]
    assert checked.keys() == unchecked.keys()
    for name, array in checked.items():
        np.testing.assert_array_equal(unchecked[name], array)
