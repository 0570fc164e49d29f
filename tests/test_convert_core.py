"""Core conversion behaviour on small graphs built in code."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import mpcompile
from models.builder import PROTO_FLOAT as FLOAT
from models.builder import make_model, value_info, weight
from mpcompile import errors
from mpcompile.core.plan import Reason
from tests.helpers import assert_close, metadata, node_by_name, run


def mlp_with_blocked_tail() -> onnx.ModelProto:
    """x -> MatMul -> Add -> Relu -> MatMul -> y, plus Exp -> ReduceSum off the Add."""
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["a"], name="mm1"),
        helper.make_node("Add", ["a", "B"], ["b"], name="add"),
        helper.make_node("Relu", ["b"], ["c"], name="relu"),
        helper.make_node("MatMul", ["c", "W2"], ["y"], name="mm2"),
        helper.make_node("Exp", ["b"], ["e"], name="exp"),
        helper.make_node("ReduceSum", ["e"], ["z"], name="sum", keepdims=1),
    ]
    return make_model(
        nodes,
        [value_info("x", [2, 8])],
        [value_info("y", [2, 4]), value_info("z", [1, 1])],
        [weight("W1", [8, 16], 1, 0.3), weight("W2", [16, 4], 2, 0.3), weight("B", [16], 3, 0.1)],
    )


def decisions(result: mpcompile.ConvertResult) -> dict[str, tuple[str, str]]:
    return {row.name: (row.precision, row.reason) for row in result.decisions()}


def test_painting_follows_tf_amp_rules():
    result = mpcompile.convert(mlp_with_blocked_tail())
    got = decisions(result)
    assert got["mm1"] == ("fp16", Reason.ALLOW)
    assert got["mm2"] == ("fp16", Reason.ALLOW)
    assert got["add"] == ("fp16", Reason.FOLLOW)  # between the two MatMuls
    assert got["relu"] == ("fp16", Reason.FOLLOW)
    assert got["exp"] == ("fp32", Reason.BLOCK)
    assert got["sum"] == ("fp32", Reason.BLOCK)


def test_converted_model_is_valid_and_matches_fp32():
    model = mlp_with_blocked_tail()
    result = mpcompile.convert(model)
    onnx.checker.check_model(result.model, full_check=True)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)}
    assert_close(run(model, feeds), run(result.model, feeds), rtol=1e-2, atol=1e-2)


def test_io_types_and_names_kept_by_default():
    model = mlp_with_blocked_tail()
    result = mpcompile.convert(model)
    assert [(v.name, v.type.tensor_type.elem_type) for v in result.model.graph.input] == [("x", FLOAT)]
    assert [(v.name, v.type.tensor_type.elem_type) for v in result.model.graph.output] == [
        ("y", FLOAT),
        ("z", FLOAT),
    ]


def test_no_keep_io_types_lowers_inputs_and_outputs():
    result = mpcompile.convert(mlp_with_blocked_tail(), keep_io_types=False)
    graph = result.model.graph
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    # Every float output goes low, also one a blocked op produces: the op stays FP32 and a Cast
    # to FP16 keeps the output's name (before issue 20 it stayed FP32, so graphs did not chain).
    assert graph.output[1].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert decisions(result)["sum"] == ("fp32", Reason.BLOCK)
    (cast,) = [node for node in graph.node if "z" in node.output]
    assert cast.op_type == "Cast" and cast.attribute[0].i == TensorProto.FLOAT16


def test_decisions_are_stamped_into_metadata():
    result = mpcompile.convert(mlp_with_blocked_tail())
    stamped = metadata(node_by_name(result.model, "exp"))
    assert stamped == {
        "mpcompile.precision": "fp32",
        "mpcompile.reason": "block",
        "mpcompile.rule": "policy.block[Exp]",
    }
    model_metadata = {entry.key: entry.value for entry in result.model.metadata_props}
    assert model_metadata["mpcompile.low_precision"] == "fp16"


def test_conversion_is_deterministic_and_idempotent():
    first = mpcompile.convert(mlp_with_blocked_tail()).model.SerializeToString()
    second = mpcompile.convert(mlp_with_blocked_tail()).model.SerializeToString()
    assert first == second
    again = mpcompile.convert(onnx.load_from_string(first))
    assert again.already_converted
    assert again.model.SerializeToString() == first


def test_input_model_is_not_modified():
    model = mlp_with_blocked_tail()
    before = model.SerializeToString()
    mpcompile.convert(model)
    assert model.SerializeToString() == before
    ir_model = ir.from_proto(model)
    ir_before = ir.to_proto(ir_model).SerializeToString()
    mpcompile.convert(ir_model)
    assert ir.to_proto(ir_model).SerializeToString() == ir_before


def test_result_kind_matches_input_kind(tmp_path):
    model = mlp_with_blocked_tail()
    assert isinstance(mpcompile.convert(model).model, onnx.ModelProto)
    assert isinstance(mpcompile.convert(ir.from_proto(model)).model, ir.Model)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    assert isinstance(mpcompile.convert(path).model, ir.Model)


def test_user_overrides():
    result = mpcompile.convert(
        mlp_with_blocked_tail(), block_ops=["Relu"], allow_ops=["Exp"], block_nodes=["mm2"]
    )
    got = decisions(result)
    assert got["relu"] == ("fp32", Reason.USER_BLOCK_OP)
    assert got["exp"] == ("fp16", Reason.USER_ALLOW_OP)
    assert got["mm2"] == ("fp32", Reason.USER_BLOCK_NODE)


def test_block_node_regex():
    result = mpcompile.convert(mlp_with_blocked_tail(), block_nodes=["mm[0-9]"])
    got = decisions(result)
    assert got["mm1"][1] == got["mm2"][1] == Reason.USER_BLOCK_NODE


def test_node_overrides_are_exact_names_stamped_as_given():
    from mpcompile.core.plan import Decision, read_decision
    from mpcompile.core.precision import Precision

    kept = Decision(Precision.FP32, Reason.AUTO_SENSITIVITY, "kept by the test")
    model = ir.from_proto(mlp_with_blocked_tail())
    result = mpcompile.convert(model, node_overrides={"mm2": kept, "mm[0-9]": kept})
    nodes = {node.name: node for node in result.model.graph}
    assert read_decision(nodes["mm2"]) == kept and result.plan[nodes["mm2"]] == kept
    assert read_decision(nodes["mm1"]).reason == Reason.ALLOW  # a name, not a pattern
    with pytest.raises(ValueError, match="FP32 only"):
        mpcompile.convert(mlp_with_blocked_tail(), node_overrides={"mm1": Decision(Precision.FP16, "x", "")})


def test_policy_file(tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('block_ops = ["MatMul"]\nprecision = "bf16"\n')
    result = mpcompile.convert(mlp_with_blocked_tail(), policy=policy)
    assert result.precision == "bf16"
    assert decisions(result)["mm1"] == ("fp32", Reason.USER_BLOCK_OP)


def test_bf16_conversion_uses_bfloat16():
    result = mpcompile.convert(mlp_with_blocked_tail(), precision="bf16")
    onnx.checker.check_model(result.model, full_check=True)
    types = {init.name: init.data_type for init in result.model.graph.initializer}
    assert types["W1"] == TensorProto.BFLOAT16


def test_bf16_needs_opset_13():
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"])]
    model = make_model(
        nodes, [value_info("x", [2, 4])], [value_info("y", [2, 4])], [weight("W", [4, 4])], opset=12
    )
    with pytest.raises(errors.UnsupportedOpsetError, match="opset >= 13"):
        mpcompile.convert(model, precision="bf16")


def test_no_lossy_round_trip_and_no_identity_casts():
    result = mpcompile.convert(mlp_with_blocked_tail())
    graph = ir.from_proto(result.model).graph
    for node in graph:
        if node.op_type != "Cast":
            continue
        assert node.inputs[0].dtype != node.outputs[0].dtype, "identity Cast left behind"
        producer = node.inputs[0].producer()
        if producer is not None and producer.op_type == "Cast":
            assert producer.inputs[0].dtype != node.outputs[0].dtype, "Cast round trip left behind"


def test_one_cast_per_value_and_type():
    # x feeds two low-precision MatMuls: both read the same Cast.
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["a"], name="mm1"),
        helper.make_node("MatMul", ["x", "W2"], ["b"], name="mm2"),
        helper.make_node("Add", ["a", "b"], ["y"], name="add"),
    ]
    model = make_model(
        nodes,
        [value_info("x", [2, 4])],
        [value_info("y", [2, 4])],
        [weight("W1", [4, 4]), weight("W2", [4, 4], 1)],
    )
    result = mpcompile.convert(model)
    casts = [node for node in result.model.graph.node if node.op_type == "Cast"]
    # x -> fp16 once, shared. The Add leads to no allow op, but going low turns two Casts back
    # (a, b) into one (y), so it extends the region; y is cast back to keep the output FP32.
    assert [node.input[0] for node in casts if node.output[0] != "y"] == ["x"]
    assert [node.output[0] for node in casts if node.input[0] != "x"] == ["y"]
    assert decisions(result)["add"] == ("fp16", Reason.FOLLOW)
    assert result.stats.casts_added == len(casts) == 2


def test_region_does_not_extend_into_inputs_of_blocked_ops():
    # MatMul -> Add -> Exp: the Add feeds a blocked op, so it stays FP32 (cast after the MatMul).
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["a"], name="mm"),
        helper.make_node("Add", ["a", "B"], ["b"], name="add"),
        helper.make_node("Exp", ["b"], ["y"], name="exp"),
    ]
    model = make_model(
        nodes,
        [value_info("x", [2, 4])],
        [value_info("y", [2, 4])],
        [weight("W", [4, 4]), weight("B", [4], 1)],
    )
    assert decisions(mpcompile.convert(model))["add"] == ("fp32", Reason.NOT_BETWEEN_LOW)


def test_untyped_contrib_op_is_kept_fp32_and_reported():
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["a"], name="mm"),
        helper.make_node("MysteryOp", ["a"], ["b"], name="mystery", domain="custom.domain"),
        helper.make_node("MatMul", ["b", "W"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes, "g", [value_info("x", [2, 4])], [value_info("y", [2, 4])], [weight("W", [4, 4])]
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.domain", 1)]
    )
    result = mpcompile.convert(model, verify=False, allow_custom_ops=True)  # refused without it
    got = decisions(result)
    assert got["mystery"] == ("fp32", Reason.UNKNOWN_OP)
    assert got["mm"][0] == "fp16"


def test_stats_count_weight_bytes():
    result = mpcompile.convert(mlp_with_blocked_tail())
    assert result.stats.weight_bytes_before == (8 * 16 + 16 * 4 + 16) * 4
    assert result.stats.weight_bytes_after == result.stats.weight_bytes_before // 2
    assert result.stats.nodes_by_precision["fp16"] == 4


def test_convert_file_writes_atomically_and_refuses_same_path(tmp_path):
    source = tmp_path / "m.onnx"
    onnx.save(mlp_with_blocked_tail(), source)
    before = source.read_bytes()
    with pytest.raises(errors.OutputIsInputError):
        mpcompile.convert_file(source, source)
    output = tmp_path / "m.fp16.onnx"
    mpcompile.convert_file(source, output)
    assert source.read_bytes() == before
    onnx.checker.check_model(str(output), full_check=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_local_function_bodies_are_converted_behind_fp32_interfaces():
    block = helper.make_function(
        "local",
        "Block",
        ["x", "w"],
        ["y"],
        [
            helper.make_node("MatMul", ["x", "w"], ["a"]),
            helper.make_node("Relu", ["a"], ["b"]),
            helper.make_node("MatMul", ["b", "w"], ["c"]),
            helper.make_node("Exp", ["c"], ["y"]),
        ],
        opset_imports=[helper.make_opsetid("", 17)],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Block", ["x", "W"], ["h"], domain="local", name="call1"),
            helper.make_node("Block", ["h", "W"], ["y"], domain="local", name="call2"),
        ],
        "g",
        [value_info("x", [2, 4])],
        [value_info("y", [2, 4])],
        [weight("W", [4, 4], 0, 0.3)],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        functions=[block],
        ir_version=10,
    )
    result = mpcompile.convert(model)
    onnx.checker.check_model(result.model, full_check=True)
    body = {
        row.op_type: row.precision for row in result.decisions() if row.graph == "" and row.op_type != "Cast"
    }
    assert body == {"MatMul": "fp16", "Relu": "fp16", "Exp": "fp32"}
    assert decisions(result)["call1"] == ("fp32", Reason.FUNCTION_CALL)
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)}
    assert_close(run(model, feeds), run(result.model, feeds), rtol=1e-2, atol=1e-2)


def test_input_failing_the_checker_is_a_user_error_not_a_bug():
    # The graph output is declared int64 but Relu produces float: onnx's full check rejects it.
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [value_info("x", [2, 4])],
        [value_info("y", [2, 4], TensorProto.INT64)],
        [weight("W", [4, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(errors.InvalidModelError, match="input model fails the ONNX checker"):
        mpcompile.convert(model)


def test_model_with_only_ai_onnx_ml_ops_converts_to_itself():
    node = helper.make_node("Binarizer", ["x"], ["y"], domain="ai.onnx.ml", threshold=0.5)
    graph = helper.make_graph([node], "g", [value_info("x", [2])], [value_info("y", [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx.ml", 1)])
    result = mpcompile.convert(model)
    assert [(row.precision, row.reason) for row in result.decisions()] == [("fp32", Reason.BLOCK)]
    assert result.stats.casts_added == 0


def test_scatter_with_reduction_is_blocked():
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
        helper.make_node("ScatterElements", ["h", "idx", "h"], ["s"], name="scatter", reduction="add"),
        helper.make_node("MatMul", ["s", "W"], ["y"], name="mm2"),
    ]
    model = make_model(
        nodes,
        [value_info("x", [4, 4]), value_info("idx", [4, 4], TensorProto.INT64)],
        [value_info("y", [4, 4])],
        [weight("W", [4, 4])],
        opset=18,
    )
    got = decisions(mpcompile.convert(model))
    assert got["scatter"] == ("fp32", Reason.BLOCK)
    assert got["mm"][0] == "fp16"


def test_ops_with_float_tensor_attributes_stay_fp32():
    attr = helper.make_tensor("nodes_splits", TensorProto.FLOAT, [1], [0.5])
    node = helper.make_node(
        "TreeEnsemble", ["x"], ["y"], domain="ai.onnx.ml", name="trees",
        aggregate_function=1, leaf_targetids=[0, 0], leaf_weights=helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0]),
        n_targets=1, nodes_falseleafs=[1], nodes_falsenodeids=[1], nodes_featureids=[0],
        nodes_modes=helper.make_tensor("m", TensorProto.UINT8, [1], [0]), nodes_splits=attr,
        nodes_trueleafs=[1], nodes_truenodeids=[0], post_transform=0, tree_roots=[0],
    )  # fmt: skip
    graph = helper.make_graph([node], "g", [value_info("x", [2, 1])], [value_info("y", [2, 1])])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("ai.onnx.ml", 5), helper.make_opsetid("", 21)]
    )
    result = mpcompile.convert(model, allow_ops=["ai.onnx.ml::TreeEnsemble"], target="any")
    assert decisions(result)["trees"] == ("fp32", Reason.SCHEMA)
