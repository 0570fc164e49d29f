"""``--optimize`` on the graph shapes real exporters produce, each failure class built in code.

RMSNorm fused into ORT's internal SimplifiedLayerNormalization, merged-decoder Ifs, shared
subexpressions that break ORT's Python fusions, external data, unnamed multi-axis Unsqueezes,
fused ops the target has no kernel for. Numbers are compared with the FP32 model on ORT's CPU EP:
optimisation alone keeps the function within 1e-5 (fusions reorder float sums); an FP16 conversion
after it within 2e-2 (CPU runs FP16 nodes without FP16 kernels in FP32 behind its own Casts).
"""

from __future__ import annotations

import collections
import logging

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import mpcompile
from models.builder import constant, value_info, weight
from mpcompile.io import model_io
from tests.helpers import assert_close, run

ort = pytest.importorskip("onnxruntime", reason="--optimize runs onnxruntime")

from mpcompile.targets.optimize import (  # noqa: E402  (needs onnxruntime)  # noqa: E402
    OPTIMIZE_METADATA_KEY,
    annotate_types,
    checks,
    detect_model_type,
    levels,
    optimize_model,
    split_multi_axis_unsqueeze,
    symbolic_types,
)
from mpcompile.targets.optimize.control_flow import _share_identical_initializers  # noqa: E402
from mpcompile.targets.optimize.quiet import logging_disabled  # noqa: E402

HIDDEN = 64
TIGHT = {"rtol": 1e-5, "atol": 1e-5}
FP16 = {"rtol": 2e-2, "atol": 2e-2}


def _rms_norm(prefix: str, x: str, scale: str, out: str, opset: int) -> tuple[list, list]:
    """HF's LlamaRMSNorm as exported: x * 1/sqrt(mean(x^2) + eps) * weight."""
    axes_inputs = [f"{prefix}_axes"] if opset >= 18 else []
    axes_attribute = {} if opset >= 18 else {"axes": [-1]}
    nodes = [
        helper.make_node("Pow", [x, f"{prefix}_two"], [f"{prefix}_sq"]),
        helper.make_node(
            "ReduceMean", [f"{prefix}_sq", *axes_inputs], [f"{prefix}_ms"], keepdims=1, **axes_attribute
        ),
        helper.make_node("Add", [f"{prefix}_ms", f"{prefix}_eps"], [f"{prefix}_mse"]),
        helper.make_node("Sqrt", [f"{prefix}_mse"], [f"{prefix}_rms"]),
        helper.make_node("Div", [f"{prefix}_one", f"{prefix}_rms"], [f"{prefix}_inv"]),
        helper.make_node("Mul", [x, f"{prefix}_inv"], [f"{prefix}_n"]),
        helper.make_node("Mul", [scale, f"{prefix}_n"], [out]),
    ]
    initializers = [
        constant(f"{prefix}_two", np.float32(2)),
        constant(f"{prefix}_eps", np.float32(1e-6)),
        constant(f"{prefix}_one", np.float32(1)),
        *([constant(f"{prefix}_axes", np.array([-1], np.int64))] if opset >= 18 else []),
    ]
    return nodes, initializers


def _decoder_block(prefix: str, x: str, out: str, opset: int) -> tuple[list, list]:
    """RMSNorm -> MatMul -> residual Add -> RMSNorm -> MatMul: one plain and one skip RMSNorm for ORT."""
    first, first_constants = _rms_norm(f"{prefix}n1", x, "scale1", f"{prefix}h0", opset)
    second, second_constants = _rms_norm(f"{prefix}n2", f"{prefix}res", "scale2", f"{prefix}h2", opset)
    nodes = [
        *first,
        helper.make_node("MatMul", [f"{prefix}h0", "w1"], [f"{prefix}h1"]),
        helper.make_node("Add", [x, f"{prefix}h1"], [f"{prefix}res"]),
        *second,
        helper.make_node("MatMul", [f"{prefix}h2", "w2"], [out]),
    ]
    return nodes, [*first_constants, *second_constants]


def _weights() -> list[onnx.TensorProto]:
    return [
        weight("w1", [HIDDEN, HIDDEN], seed=1, scale=0.1),
        weight("w2", [HIDDEN, HIDDEN], seed=2, scale=0.1),
        numpy_helper.from_array(1 + 0.1 * np.arange(HIDDEN, dtype=np.float32) / HIDDEN, "scale1"),
        numpy_helper.from_array(1 - 0.1 * np.arange(HIDDEN, dtype=np.float32) / HIDDEN, "scale2"),
    ]


def rms_decoder(opset: int = 18) -> onnx.ModelProto:
    nodes, constants = _decoder_block("", "x", "y", opset)
    graph = helper.make_graph(
        nodes,
        "rms",
        [value_info("x", ["batch", "seq", HIDDEN])],
        [value_info("y", ["batch", "seq", HIDDEN])],
        [*_weights(), *constants],
    )
    ir_version = 10 if opset >= 21 else 8
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def merged_decoder(opset: int = 18) -> onnx.ModelProto:
    """optimum's merged-decoder shape: an If on ``use_cache_branch`` whose branches read outer weights and inputs."""
    then_nodes, then_constants = _decoder_block("t_", "x", "logits_then", opset)
    else_nodes, else_constants = _decoder_block("e_", "x", "e_pre", opset)
    else_nodes.append(helper.make_node("Relu", ["e_pre"], ["logits_else"]))
    then_branch = helper.make_graph(
        then_nodes, "with_past", [], [value_info("logits_then", ["batch", "seq", HIDDEN])], then_constants
    )
    else_branch = helper.make_graph(
        else_nodes, "no_past", [], [value_info("logits_else", ["batch", "seq", HIDDEN])], else_constants
    )
    node = helper.make_node(
        "If",
        ["use_cache_branch"],
        ["logits"],
        name="optimum::if",
        then_branch=then_branch,
        else_branch=else_branch,
    )
    graph = helper.make_graph(
        [node],
        "merged",
        [value_info("x", ["batch", "seq", HIDDEN]), value_info("use_cache_branch", [1], TensorProto.BOOL)],
        [value_info("logits", ["batch", "seq", HIDDEN])],
        _weights(),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _feeds(batch: int, seq: int, **extra) -> dict[str, np.ndarray]:
    x = np.random.default_rng(batch * 10 + seq).standard_normal((batch, seq, HIDDEN)).astype(np.float32)
    return {"x": x, **extra}


def _note(model: onnx.ModelProto) -> str:
    return {entry.key: entry.value for entry in model.metadata_props}[OPTIMIZE_METADATA_KEY]


def _ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(
        (node.domain or "ai.onnx", node.op_type) for node in checks.all_nodes(model.graph)
    )


# --- RMSNorm: ORT's SimplifiedLayerNormalization exists only inside ORT ------------------------


@pytest.mark.parametrize("level", ["extended", "transformer"])
@pytest.mark.parametrize("target", ["cuda", "cpu"])
def test_rms_norm_fusions_give_standard_onnx(level, target):
    model = rms_decoder()
    optimized = optimize_model(model, level, target)
    onnx.checker.check_model(optimized, full_check=True)
    ops = _ops(optimized)
    print(level, target, dict(ops), _note(optimized))
    assert ("ai.onnx", "SimplifiedLayerNormalization") not in ops
    assert "SimplifiedLayerNormalization -> primitive ops" in _note(optimized)
    if level == "transformer":
        assert ops[("com.microsoft", "SkipSimplifiedLayerNormalization")] == 1
    for batch, seq in ((1, 5), (3, 2)):
        assert_close(run(model, _feeds(batch, seq)), run(optimized, _feeds(batch, seq)), **TIGHT)


def test_rms_norm_becomes_rms_normalization_at_opset_23():
    model = rms_decoder(opset=23)
    optimized = optimize_model(model, "extended", "cpu")
    onnx.checker.check_model(optimized, full_check=True)
    ops = _ops(optimized)
    assert ops[("ai.onnx", "RMSNormalization")] == 2
    assert "SimplifiedLayerNormalization -> RMSNormalization x2" in _note(optimized)
    assert_close(run(model, _feeds(2, 3)), run(optimized, _feeds(2, 3)), **TIGHT)


def test_skip_simplified_layer_norm_goes_fp16_for_cuda():
    model = rms_decoder()
    result = mpcompile.convert(model, target="cuda", optimize="transformer")
    onnx.checker.check_model(result.model, full_check=True)
    rows = [row for row in result.decisions() if row.op_type == "SkipSimplifiedLayerNormalization"]
    assert [row.precision for row in rows] == ["fp16"]
    assert any(note.startswith("--optimize transformer") for note in result.notes)
    assert_close(run(model, _feeds(2, 4)), run(result.model, _feeds(2, 4)), **FP16)


def test_layer_norm_below_opset_17_is_lowered():
    """ORT fuses a LayerNorm pattern into LayerNormalization even where onnx has none (opset 14)."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[-1]),
        helper.make_node("Sub", ["x", "mean"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["d2"]),
        helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["std"]),
        helper.make_node("Div", ["d", "std"], ["n"]),
        helper.make_node("Mul", ["n", "scale1"], ["ns"]),
        helper.make_node("Add", ["ns", "bias"], ["ln"]),
        helper.make_node("MatMul", ["ln", "w1"], ["y"]),
    ]
    initializers = [
        *_weights(),
        constant("two", np.float32(2)),
        constant("eps", np.float32(1e-5)),
        weight("bias", [HIDDEN], seed=3, scale=0.1),
    ]
    graph = helper.make_graph(
        nodes,
        "ln14",
        [value_info("x", ["batch", HIDDEN])],
        [value_info("y", ["batch", HIDDEN])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
    optimized = optimize_model(model, "extended", "cpu")
    onnx.checker.check_model(optimized, full_check=True)
    assert ("ai.onnx", "LayerNormalization") not in _ops(optimized)
    assert "LayerNormalization -> primitive ops x1" in _note(optimized)
    feeds = {"x": np.random.default_rng(0).standard_normal((3, HIDDEN)).astype(np.float32)}
    assert_close(run(model, feeds), run(optimized, feeds), **TIGHT)


# --- merged decoders: an If whose branches both hold fusable patterns ---------------------------


@pytest.mark.parametrize("target", ["cuda", "cpu"])
def test_merged_decoder_branches_are_optimised_and_stay_valid(target):
    model = merged_decoder()
    optimized = optimize_model(model, "transformer", target)
    onnx.checker.check_model(optimized, full_check=True)
    (node,) = optimized.graph.node
    assert node.op_type == "If" and [output.name for output in optimized.graph.output] == ["logits"]
    for branch in node.attribute:
        ops = collections.Counter(n.op_type for n in branch.g.node)
        print(branch.name, dict(ops))
        assert ops["SkipSimplifiedLayerNormalization"] == 1
        assert "SimplifiedLayerNormalization" not in {n.op_type for n in branch.g.node if n.domain == ""}
        assert not branch.g.input  # outer values are read from the enclosing graph again
    # the outer weights stay outer: no branch carries a copy of w1/w2/scale1/scale2
    branch_initializers = {t.name for branch in node.attribute for t in branch.g.initializer}
    assert not branch_initializers & {"w1", "w2", "scale1", "scale2"}
    for use_cache in (True, False):
        for batch, seq in ((1, 5), (2, 3)):
            feeds = _feeds(batch, seq, use_cache_branch=np.array([use_cache]))
            assert_close(run(model, feeds), run(optimized, feeds), **TIGHT)


def _layer_norm_branch(prefix: str, extra_output: onnx.NodeProto | None, constants: list) -> onnx.GraphProto:
    """LayerNormalization -> MatMul -> GELU -> residual Add -> LayerNormalization; ORT fuses the
    second into SkipLayerNormalization only where its shape inference runs through the graph."""
    nodes = [
        helper.make_node("LayerNormalization", ["x", "scale1", "bias1"], [f"{prefix}n1"], axis=-1),
        helper.make_node("MatMul", [f"{prefix}n1", "w1"], [f"{prefix}h0"]),
        # erf GELU: ORT fuses it first and appends the Gelu at the end of the graph
        helper.make_node("Div", [f"{prefix}h0", "sqrt2"], [f"{prefix}g0"]),
        helper.make_node("Erf", [f"{prefix}g0"], [f"{prefix}g1"]),
        helper.make_node("Add", [f"{prefix}g1", "one"], [f"{prefix}g2"]),
        helper.make_node("Mul", [f"{prefix}h0", f"{prefix}g2"], [f"{prefix}g3"]),
        helper.make_node("Mul", [f"{prefix}g3", "half"], [f"{prefix}h1"]),
        helper.make_node("Add", [f"{prefix}n1", f"{prefix}h1"], [f"{prefix}res"]),
        helper.make_node("LayerNormalization", [f"{prefix}res", "scale2", "bias2"], [f"{prefix}n2"], axis=-1),
        helper.make_node("MatMul", [f"{prefix}n2", "w2"], [f"{prefix}logits"]),
        *([extra_output] if extra_output is not None else []),
    ]
    outputs = [value_info(f"{prefix}logits", ["batch", "seq", HIDDEN]), value_info(f"{prefix}cache", None)]
    return helper.make_graph(nodes, prefix, [], outputs, constants)


def test_merged_decoder_branches_returning_constants_or_outer_values_are_fused():
    """optimum's with-past branch returns empty constants for the encoder KV cache; a graph output
    that is an initializer (or an outer input passed through an Identity) stopped ORT's shape
    inference from sorting the standalone branch, so its SkipLayerNormalization never fused."""
    empty = numpy_helper.from_array(np.zeros((0, 4, 1, 16), np.float32), "with_cache")
    then_branch = _layer_norm_branch("with_", None, [empty])
    else_branch = _layer_norm_branch("no_", helper.make_node("Identity", ["past"], ["no_cache"]), [])
    node = helper.make_node(
        "If", ["use_cache_branch"], ["logits", "present"], then_branch=then_branch, else_branch=else_branch
    )
    initializers = [*_weights(), weight("bias1", [HIDDEN], seed=5), weight("bias2", [HIDDEN], seed=6)]
    initializers += [
        constant(name, np.float32(v)) for name, v in (("sqrt2", 2**0.5), ("one", 1), ("half", 0.5))
    ]
    inputs = [
        value_info("x", ["batch", "seq", HIDDEN]),
        value_info("past", [0, 4, 1, 16]),
        value_info("use_cache_branch", [1], TensorProto.BOOL),
    ]
    outputs = [value_info("logits", ["batch", "seq", HIDDEN]), value_info("present", None)]
    graph = helper.make_graph([node], "merged", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    optimized = optimize_model(model, "transformer", "cuda")
    onnx.checker.check_model(optimized, full_check=True)
    for branch in optimized.graph.node[0].attribute:
        assert collections.Counter(n.op_type for n in branch.g.node)["SkipLayerNormalization"] == 1, (
            branch.name
        )
    for use_cache in (True, False):
        feeds = _feeds(2, 3, past=np.zeros((0, 4, 1, 16), np.float32), use_cache_branch=np.array([use_cache]))
        assert_close(run(model, feeds), run(optimized, feeds), **TIGHT)


def test_merged_decoder_converts_fp16_for_cuda():
    model = merged_decoder()
    result = mpcompile.convert(model, target="cuda", optimize="transformer")
    onnx.checker.check_model(result.model, full_check=True)
    rows = [row for row in result.decisions() if row.op_type == "SkipSimplifiedLayerNormalization"]
    assert len(rows) == 2 and all(row.precision == "fp16" for row in rows)
    for use_cache in (True, False):
        feeds = _feeds(2, 3, use_cache_branch=np.array([use_cache]))
        assert_close(run(model, feeds), run(result.model, feeds), **FP16)


def test_identical_weights_created_in_both_branches_are_stored_once():
    shared = np.arange(512, dtype=np.float32)  # 2 KiB, above the 1 KiB sharing threshold
    branches = []
    for name in ("then_branch", "else_branch"):
        body = helper.make_graph(
            [helper.make_node("Add", ["x", f"{name}_w"], [f"{name}_y"])],
            name,
            [],
            [value_info(f"{name}_y", [512])],
            [numpy_helper.from_array(shared, f"{name}_w")],
        )
        branches.append(body)
    node = helper.make_node("If", ["c"], ["y"], then_branch=branches[0], else_branch=branches[1])
    graph = helper.make_graph(
        [node],
        "g",
        [value_info("x", [512]), value_info("c", [1], TensorProto.BOOL)],
        [value_info("y", [512])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    from mpcompile.core.casts import NameAuthority

    _share_identical_initializers(model.graph.node(0), NameAuthority(model))
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    assert len(proto.graph.initializer) == 1  # named by the model's name authority
    assert all(not branch.g.initializer for branch in proto.graph.node[0].attribute)
    feeds = {"x": np.ones(512, np.float32), "c": np.array([False])}
    np.testing.assert_array_equal(run(proto, feeds)[0], shared + 1)


def test_sibling_branches_reusing_value_names_convert_from_memory():
    """optimum's merged decoders reuse names across branches; a value named alike in the other
    branch must not lend its type (was: "type T bound to both INT64 and FLOAT")."""
    then_branch = helper.make_graph(
        [
            helper.make_node("Shape", ["x"], ["v"]),
            helper.make_node("Cast", ["v"], ["vf"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["vf"], ["out_then"], keepdims=0),
        ],
        "then",
        [],
        [value_info("out_then", [])],
    )
    else_branch = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x"], ["v"], keepdims=0),
            helper.make_node("Add", ["v", "v"], ["out_else"]),
        ],
        "else",
        [],
        [value_info("out_else", [])],
    )
    node = helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch)
    graph = helper.make_graph(
        [node], "g", [value_info("x", [2, 3]), value_info("c", [1], TensorProto.BOOL)], [value_info("y", [])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    # An ir.Model is typed by InferTypesPass, as the result of --optimize is.
    result = mpcompile.convert(ir.from_proto(model), target="cuda")
    converted = ir.to_proto(result.model)
    onnx.checker.check_model(converted, full_check=True)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for flag in (True, False):
        feeds = {"x": x, "c": np.array([flag])}
        assert_close(run(model, feeds), run(converted, feeds), **FP16)


# --- ORT's fused LLM ops go FP16 where the target has FP16 kernels -------------------------------


def _fused_llm_block() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Rotary embeddings, grouped-query and multi-head attention as ORT's fused contrib ops."""
    heads, kv_heads, head_size, batch, seq = 4, 2, 16, 2, 5
    ms = "com.microsoft"
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("RotaryEmbedding", ["q", "pos", "cos", "sin"], ["qr"], domain=ms, num_heads=heads),
        helper.make_node(
            "RotaryEmbedding", ["k", "pos", "cos", "sin"], ["kr"], domain=ms, num_heads=kv_heads
        ),
        helper.make_node(
            "GroupQueryAttention",
            ["qr", "kr", "v", "", "", "seqlens", "total"],
            ["attention", "present_key", "present_value"],
            domain=ms,
            num_heads=heads,
            kv_num_heads=kv_heads,
        ),
        helper.make_node("MultiHeadAttention", ["attention"] * 3, ["mixed"], domain=ms, num_heads=heads),
        helper.make_node("MatMul", ["mixed", "wo"], ["y"]),
    ]
    angles = np.arange(64)[:, None] / 10000 ** (np.arange(0, head_size, 2) / head_size)[None]
    initializers = [
        weight("wq", [HIDDEN, heads * head_size], seed=1, scale=0.1),
        weight("wk", [HIDDEN, kv_heads * head_size], seed=2, scale=0.1),
        weight("wv", [HIDDEN, kv_heads * head_size], seed=3, scale=0.1),
        weight("wo", [heads * head_size, HIDDEN], seed=4, scale=0.1),
        numpy_helper.from_array(np.cos(angles).astype(np.float32), "cos"),
        numpy_helper.from_array(np.sin(angles).astype(np.float32), "sin"),
    ]
    inputs = [
        value_info("x", ["batch", "seq", HIDDEN]),
        value_info("pos", ["batch", "seq"], TensorProto.INT64),
        value_info("seqlens", ["batch"], TensorProto.INT32),
        value_info("total", [], TensorProto.INT32),
    ]
    graph = helper.make_graph(nodes, "llm", inputs, [value_info("y", ["batch", "seq", HIDDEN])], initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ms, 1)], ir_version=8
    )
    feeds = {
        **_feeds(batch, seq),
        "pos": np.tile(np.arange(seq, dtype=np.int64), (batch, 1)),
        "seqlens": np.full((batch,), seq - 1, np.int32),
        "total": np.array(seq, np.int32),
    }
    return model, feeds


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("cuda", {"RotaryEmbedding": "fp16", "GroupQueryAttention": "fp16", "MultiHeadAttention": "fp16"}),
        ("cpu", {"MultiHeadAttention": "fp32"}),
    ],
)
def test_fused_llm_ops_take_the_target_kernels_precision(target, expected):
    """CUDA has FP16 kernels for all three; ORT's CPU EP has none for MultiHeadAttention (the
    others then follow their FP32 neighbours there)."""
    model, feeds = _fused_llm_block()
    result = mpcompile.convert(model, target=target, optimize="transformer")
    onnx.checker.check_model(result.model, full_check=True)
    precisions = {row.op_type: row.precision for row in result.decisions() if row.op_type in expected}
    assert precisions == expected
    assert_close(run(model, feeds), run(result.model, feeds), **FP16)


# --- ORT's Python fusions breaking on shared subexpressions -------------------------------------


def _shared_shape_reshapes() -> onnx.ModelProto:
    """GPT-2's attention head split: two Reshapes whose shapes come from the same Shape(a); ORT's
    basic level merges them into one Concat, which ORT's Reshape fusion then removes while the
    second Reshape still reads it ("Graph is not a DAG")."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["qk"]),
        helper.make_node("Split", ["qk", "split"], ["a", "b"], axis=-1),
    ]
    for part in ("a", "b"):
        nodes += [
            helper.make_node("Shape", ["a"], [f"shape_{part}"]),
            helper.make_node("Gather", [f"shape_{part}", "zero"], [f"d0_{part}"], axis=0),
            helper.make_node("Gather", [f"shape_{part}", "one"], [f"d1_{part}"], axis=0),
            helper.make_node("Unsqueeze", [f"d0_{part}", "axis0"], [f"u0_{part}"]),
            helper.make_node("Unsqueeze", [f"d1_{part}", "axis0"], [f"u1_{part}"]),
            helper.make_node(
                "Concat", [f"u0_{part}", f"u1_{part}", "heads", "head_size"], [f"s_{part}"], axis=0
            ),
            helper.make_node("Reshape", [part, f"s_{part}"], [f"r_{part}"]),
            helper.make_node("Transpose", [f"r_{part}"], [f"y_{part}"], perm=[0, 2, 1, 3]),
        ]
    integers = {"split": [HIDDEN, HIDDEN], "zero": 0, "one": 1, "axis0": [0], "heads": [4], "head_size": [16]}
    initializers = [weight("w", [HIDDEN, 2 * HIDDEN], seed=4)]
    initializers += [constant(name, np.array(array, np.int64)) for name, array in integers.items()]
    outputs = [value_info(f"y_{part}", ["batch", 4, "seq", 16]) for part in ("a", "b")]
    graph = helper.make_graph(
        nodes, "heads", [value_info("x", ["batch", "seq", HIDDEN])], outputs, initializers
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_shared_subexpressions_fall_back_to_a_basic_pass_without_them():
    model = _shared_shape_reshapes()
    optimized = optimize_model(model, "transformer", "cuda", model_type="bert")
    onnx.checker.check_model(optimized, full_check=True)
    note = _note(optimized)
    print(note)
    assert "Graph is not a DAG" in note
    assert "fell back to transformer (model type bert, without common-subexpression elimination)" in note
    for batch, seq in ((1, 5), (2, 3)):
        assert_close(run(model, _feeds(batch, seq)), run(optimized, _feeds(batch, seq)), **TIGHT)


def test_transformer_optimiser_failing_everywhere_falls_back_to_extended(monkeypatch):
    def broken(model, settings):
        raise levels.FusionFailed("TypeError: 'int' object is not iterable")

    monkeypatch.setattr(levels, "fuse_transformer", broken)
    optimized = optimize_model(rms_decoder(), "transformer", "cpu")
    onnx.checker.check_model(optimized, full_check=True)
    note = _note(optimized)
    assert note.startswith("transformer (CPUExecutionProvider") and "fell back to extended after" in note
    assert (
        note.count("'int' object is not iterable") == 2
    )  # with and without common-subexpression elimination


def test_refused_fused_ops_skip_the_rerun_without_shared_subexpressions(monkeypatch):
    """A fused op no switch removes (T5's RelativePositionBias for cpu) fails the same way without
    common-subexpression elimination: that rung is skipped, the next optimiser tried."""
    real_check = levels.check_candidate

    def refuse_skip_norms(candidate, context):
        if any(node.op_type == "SkipSimplifiedLayerNormalization" for node in candidate.graph.node):
            return checks.CheckResult(
                [checks.Problem("refused", ("com.microsoft", "RelativePositionBias"))], []
            )
        return real_check(candidate, context)

    monkeypatch.setattr(levels, "check_candidate", refuse_skip_norms)
    optimized = optimize_model(rms_decoder(), "transformer", "cpu", model_type="gpt2")
    note = _note(optimized)
    print(note)
    assert "after: transformer (model type gpt2): refused; transformer (model type gpt2)" not in note
    assert "without common-subexpression elimination" not in note
    assert "fell back to extended after: transformer (model type gpt2): refused" in note


def test_nothing_usable_returns_the_model_unoptimised(monkeypatch):
    monkeypatch.setattr(
        levels,
        "check_candidate",
        lambda candidate, context: checks.CheckResult([checks.Problem("broken")], []),
    )
    model = rms_decoder()
    optimized = optimize_model(model, "extended", "cpu")
    assert "fell back to none after: extended: broken; basic: broken" in _note(optimized)
    assert [n.op_type for n in optimized.graph.node] == [n.op_type for n in model.graph.node]


# --- fused ops without kernels, and ops only the target's provider runs -------------------------


def _with_relative_position_bias() -> onnx.ModelProto:
    node = helper.make_node(
        "RelativePositionBias",
        ["table", "length", "length"],
        ["bias"],
        domain="com.microsoft",
        max_distance=16,
        is_bidirectional=1,
    )
    graph = helper.make_graph(
        [node],
        "rpb",
        [],
        [value_info("bias", [1, 4, 3, 3])],
        [weight("table", [8, 4]), constant("length", np.int64(3))],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        ir_version=8,
    )


def _context(target: str, reference: onnx.ModelProto, tmp_path) -> checks.CheckContext:
    from mpcompile.targets import get_target

    return checks.CheckContext(
        reference_io=checks.io_signature(reference),
        input_ops=frozenset(),
        target=get_target(target),
        session_provider="CPUExecutionProvider",
        session_target=get_target("cpu"),
        onnxruntime=ort,
        folder=tmp_path,
    )


def test_fused_op_without_a_target_kernel_is_a_problem_for_cpu(tmp_path):
    model = _with_relative_position_bias()
    result = checks.check_candidate(model, _context("cpu", model, tmp_path))
    assert [problem.description for problem in result.problems] == [
        "RelativePositionBias has no CPUExecutionProvider kernel"
    ]
    assert result.problems[0].op == ("com.microsoft", "RelativePositionBias")


def test_cuda_only_op_is_legitimate_for_cuda_but_not_loaded_here(tmp_path):
    """RelativePositionBias has only a CUDA kernel: valid for --target cuda (the full checker
    passes), unloadable on the CPU-only onnxruntime, and the note says so."""
    model = _with_relative_position_bias()
    onnx.checker.check_model(model, full_check=True)
    result = checks.check_candidate(model, _context("cuda", model, tmp_path))
    assert result.problems == []
    assert result.unchecked == [
        "not loaded in onnxruntime here: RelativePositionBias run only on CUDAExecutionProvider, "
        "which the installed onnxruntime lacks"
    ]


def test_changed_graph_outputs_are_a_problem(tmp_path):
    model = rms_decoder()
    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    renamed.graph.output[0].name = "other"
    result = checks.check_candidate(renamed, _context("cpu", model, tmp_path))
    assert [problem.description for problem in result.problems] == ["the graph inputs or outputs changed"]


# --- external data, names, logging, inference ---------------------------------------------------


@pytest.mark.parametrize("level", ["basic", "extended", "transformer"])
def test_external_data_is_carried_to_onnxruntime(tmp_path, level):
    model = rms_decoder()
    path = tmp_path / "model.onnx"
    saved = onnx.ModelProto.FromString(model.SerializeToString())  # save_model moves the weights out of it
    onnx.save_model(
        saved, str(path), save_as_external_data=True, location="model.onnx.data", size_threshold=1024
    )
    loaded = model_io.load_model(path)
    assert any(
        isinstance(value.const_value, ir.ExternalTensor) for value in loaded.graph.initializers.values()
    )
    optimized = optimize_model(loaded, level, "cpu")
    onnx.checker.check_model(optimized, full_check=True)
    assert_close(run(model, _feeds(2, 3)), run(optimized, _feeds(2, 3)), **TIGHT)
    output = tmp_path / "out.onnx"
    mpcompile.convert_file(path, output, target="cuda", optimize=level)
    onnx.checker.check_model(str(output), full_check=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("model")) == [
        "model.onnx",
        "model.onnx.data",
    ]


def test_two_unnamed_multi_axis_unsqueezes_get_unique_names():
    nodes = [
        helper.make_node("Unsqueeze", ["x", "axes"], ["u1"]),
        helper.make_node("Unsqueeze", ["x", "axes"], ["u2"]),
        helper.make_node("Add", ["u1", "u2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [value_info("x", [2, 3])],
        [value_info("y", [2, 1, 1, 3])],
        [constant("axes", np.array([1, 2], np.int64))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    split = ir.to_proto(split_multi_axis_unsqueeze(ir.from_proto(model)))
    onnx.checker.check_model(split, full_check=True)
    names = [node.name for node in split.graph.node]
    print(names, [t.name for t in split.graph.initializer])
    assert len(names) == len(set(names)) == 5
    assert len({t.name for t in split.graph.initializer}) == len(split.graph.initializer) == 5
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    np.testing.assert_array_equal(run(model, feeds)[0], run(split, feeds)[0])


def test_logging_state_is_restored():
    logging.disable(logging.INFO)
    try:
        with logging_disabled():
            assert logging.root.manager.disable == logging.WARNING
        assert logging.root.manager.disable == logging.INFO
    finally:
        logging.disable(logging.NOTSET)


def test_annotate_types_without_the_private_steps_leaves_the_model(monkeypatch):
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = rms_decoder()
    monkeypatch.delattr(SymbolicShapeInference, "_infer_impl")
    annotated, complete = annotate_types(model)
    assert annotated is model and complete is False


def test_annotate_types_keeps_types_not_shapes():
    """Shapes merged by symbolic inference ('past + sequence' as 'sequence') would make ORT reuse
    buffers of the wrong size; only element types are kept, and outputs stay as declared."""
    model = rms_decoder()
    annotated, complete = annotate_types(model)
    assert complete
    assert annotated.graph.output[0] == model.graph.output[0]
    assert annotated.graph.value_info and all(
        info.type.tensor_type.elem_type == TensorProto.FLOAT and not info.type.tensor_type.HasField("shape")
        for info in annotated.graph.value_info
    )
    guessed = onnx.ModelProto()
    guessed.CopyFrom(model)
    guessed.graph.output[0].type.tensor_type.elem_type = 0
    guessed.graph.value_info.append(helper.make_tensor_value_info("untyped", 0, None))
    symbolic_types._keep_declarations_and_types_only(guessed, model)
    assert guessed.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert "untyped" not in {info.name for info in guessed.graph.value_info}


# --- the model type read from the graph ---------------------------------------------------------


def _graph_with(ops: list[str], inputs: list[str], outputs: list[str] = ("y",)) -> onnx.ModelProto:
    nodes = [helper.make_node(op, ["x"], [f"o{index}"]) for index, op in enumerate(ops)]
    graph = helper.make_graph(
        nodes, "g", [value_info(name, [1]) for name in inputs], [value_info(o, [1]) for o in outputs]
    )
    return helper.make_model(graph)


def test_model_type_from_the_graph():
    assert detect_model_type(rms_decoder()) == "bert"
    t5 = rms_decoder()
    t5.graph.node.append(helper.make_node("Log", ["x"], ["log"]))
    assert detect_model_type(t5) == "t5"
    assert detect_model_type(_graph_with([], ["input_ids", "encoder_hidden_states"])) == "bart"
    assert detect_model_type(_graph_with([], ["input_ids", "past_key_values.0.key"])) == "gpt2"
    assert detect_model_type(_graph_with(["Sin", "Cos"], ["input_ids"])) == "gpt2"
    assert detect_model_type(_graph_with(["Relu"], ["input_ids"])) == "bert"
    causal = _graph_with([], ["input_ids"])
    causal.graph.node.extend(
        [
            helper.make_node("Range", ["a", "b", "c"], ["positions"]),
            helper.make_node("Unsqueeze", ["positions", "axes"], ["rows"]),
            helper.make_node("LessOrEqual", ["rows", "positions"], ["mask"]),
        ]
    )
    assert detect_model_type(causal) == "gpt2"
