"""The shortcuts that keep conversion linear and cheap give the same answers as the long way."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import models
import mpcompile
from models.builder import make_model, value_info
from mpcompile.io import model_io
from mpcompile.irtools import graphs
from mpcompile.irtools.graphs import model_graphs
from mpcompile.passes import infer_types
from mpcompile.policy import op_types

ZOO_NAMES = sorted(models.ZOO)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_model_graphs_lists_the_graphs_of_onnx_ir_in_the_same_order(name):
    model = ir.from_proto(models.ZOO[name]())
    assert [id(graph) for graph in model_graphs(model)] == [id(graph) for graph in model.graphs()]


def test_model_graphs_finds_nested_subgraphs():
    model = ir.from_proto(models.ZOO["control_flow"]())
    assert len(model_graphs(model)) > 2  # If branches and the Loop body, some nested


def test_shared_walk_answers_from_one_walk_until_graphs_change(monkeypatch):
    model = ir.from_proto(models.ZOO["control_flow"]())
    expected = [id(graph) for graph in model.graphs()]
    walks = []
    real = graphs.subgraphs
    monkeypatch.setattr(graphs, "subgraphs", lambda graph: walks.append(graph) or real(graph))
    walks_of_main = lambda: sum(graph is model.graph for graph in walks)  # noqa: E731
    with graphs.shared_walk():
        first, second = model_graphs(model), model_graphs(model)
        assert [id(g) for g in first] == [id(g) for g in second] == expected
        assert walks_of_main() == 1 and first is not second  # callers may change their list
        loop = next(node for node in model.graph if node.op_type == "Loop")
        del loop.attributes["body"]
        graphs.graphs_changed()
        assert len(model_graphs(model)) < len(expected)
        assert walks_of_main() == 2
    model_graphs(model)
    assert walks_of_main() == 3  # outside the block every call walks


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_cached_typings_equal_fresh_ones(name):
    model = ir.from_proto(onnx.shape_inference.infer_shapes(models.ZOO[name]()))
    opset = model.opset_imports.get("", 1)
    for graph in model_graphs(model):
        for node in graph:
            node_opset = model.opset_imports.get(node.domain, opset) if node.domain else opset
            for low in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
                op_types._TYPINGS.clear()
                fresh = op_types.node_typing(node, node_opset, low)
                cached = op_types.node_typing(node, node_opset, low)  # served from the cache
                assert cached == fresh


def test_typing_cache_tells_casts_apart_by_target_type():
    x = value_info("x", [2])
    to_float = helper.make_node("Cast", ["x"], ["a"], to=TensorProto.FLOAT)
    to_int = helper.make_node("Cast", ["x"], ["b"], to=TensorProto.INT64)
    model = ir.from_proto(
        make_model([to_float, to_int], [x], [value_info("a", [2]), value_info("b", [2], TensorProto.INT64)])
    )
    first, second = list(model.graph)
    low = ir.DataType.FLOAT16
    assert op_types.node_typing(first, 17, low).float_outputs == (0,)
    assert op_types.node_typing(second, 17, low).float_outputs == ()


def test_types_inferred_at_load_skip_the_pass_and_convert_identically(tmp_path, monkeypatch):
    path = tmp_path / "bert.onnx"
    onnx.save(models.ZOO["bert_encoder"](), path)
    loaded = model_io.load_model(path, infer_types=True)
    assert loaded.meta.get(model_io.TYPES_INFERRED_KEY)
    assert all(value.dtype is not None for node in loaded.graph for value in node.outputs)

    def must_not_run(model):
        raise AssertionError("shape inference ran again after load")

    monkeypatch.setattr(infer_types, "_infer_shapes", must_not_run)
    from_path = mpcompile.convert_file(path, tmp_path / "out.onnx").model
    monkeypatch.undo()
    from_proto = mpcompile.convert(models.ZOO["bert_encoder"]()).model
    assert ir.to_proto(from_path).graph == from_proto.graph


def test_load_without_inference_leaves_intermediates_untyped(tmp_path):
    path = tmp_path / "bert.onnx"
    onnx.save(models.ZOO["bert_encoder"](), path)
    loaded = model_io.load_model(path)
    assert not loaded.meta.get(model_io.TYPES_INFERRED_KEY)
    assert any(value.dtype is None for node in loaded.graph for value in node.outputs)


def test_cyclic_gc_is_paused_during_conversion_and_restored_after(monkeypatch):
    import gc

    from mpcompile.compiler.gc_pause import cyclic_gc_paused
    from mpcompile.passes.assign_precision import AssignPrecisionPass

    seen: list[bool] = []
    original = AssignPrecisionPass._paint

    def spy(self, model):
        seen.append(gc.isenabled())
        return original(self, model)

    monkeypatch.setattr(AssignPrecisionPass, "_paint", spy)
    assert gc.isenabled()
    mpcompile.convert(models.ZOO["mlp"](), static=True)
    assert seen == [False] and gc.isenabled()
    # the range run finds nothing here: one paint (tests/test_range_run_cost.py)
    seen.clear()
    mpcompile.convert(models.ZOO["mlp"]())
    assert seen == [False] and gc.isenabled()
    # where it finds something the plan is painted again with its findings, paused too
    from test_range_run import linear_attention

    seen.clear()
    mpcompile.convert(linear_attention())
    assert seen == [False, False] and gc.isenabled()

    gc.disable()  # a caller that paused it already keeps it paused
    try:
        with cyclic_gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_cyclic_gc_is_restored_when_conversion_fails():
    import gc

    with pytest.raises(TypeError):
        mpcompile.convert(42)
    assert gc.isenabled()


def test_shared_maps_scan_external_weights_like_onnx_ir_loads_them(tmp_path):
    import numpy as np

    from mpcompile.core.precision import low_precision_format
    from mpcompile.core.ranges import SharedMaps, measure

    low = low_precision_format("fp16")
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(64, 64)).astype(np.float32) * scale for scale in (1.0, 1e5, 1e-9)]
    arrays[0][3, 3] = np.inf  # non-finite values are left out of max |x|, as for loaded tensors
    data = b"".join(array.tobytes() for array in arrays)
    (tmp_path / "weights.bin").write_bytes(data)
    offsets = np.cumsum([0] + [array.nbytes for array in arrays])[:-1]

    def external(index: int) -> ir.ExternalTensor:
        return ir.ExternalTensor(
            "weights.bin",
            int(offsets[index]),
            arrays[index].nbytes,
            ir.DataType.FLOAT,
            shape=ir.Shape(arrays[index].shape),
            name=f"w{index}",
            base_dir=str(tmp_path),
        )

    shared = SharedMaps()
    try:
        scanned = [measure(external(index), low, shared) for index in range(len(arrays))]
        assert shared.scan(external(1), low) is not None  # the file is mapped after the first load
    finally:
        shared.close()
    loaded = [measure(external(index), low) for index in range(len(arrays))]
    assert scanned == loaded
    assert loaded[1].overflowing > 0 and loaded[2].flushed_to_zero > 0


def test_shared_maps_leave_truncated_tensors_to_onnx_ir(tmp_path):
    from mpcompile.core.precision import low_precision_format
    from mpcompile.core.ranges import SharedMaps

    (tmp_path / "weights.bin").write_bytes(b"\0" * 64)
    short = ir.ExternalTensor(
        "weights.bin", 0, 400, ir.DataType.FLOAT, shape=ir.Shape([100]), name="w", base_dir=str(tmp_path)
    )
    shared = SharedMaps()
    try:
        shared.add(short)
        assert shared.scan(short, low_precision_format("fp16")) is None
    finally:
        shared.close()
