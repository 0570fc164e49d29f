"""Each private onnxruntime API mpcompile uses sits behind a feature check with a fallback;
these tests take the private API away and check the fallback."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

pytest.importorskip("onnxruntime")

from mpcompile.targets import KernelTableTarget
from mpcompile.targets import live as live_registry
from mpcompile.targets.optimize import annotate_types

CPU = "CPUExecutionProvider"


def _relu_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture
def fresh_live_registry():
    live_registry._live_kernel_defs.cache_clear()
    live_registry.live_table.cache_clear()
    yield
    live_registry._live_kernel_defs.cache_clear()
    live_registry.live_table.cache_clear()


@pytest.mark.usefixtures("fresh_live_registry")
def test_without_the_kernel_registry_the_shipped_tables_are_used(monkeypatch):
    from onnxruntime.capi import _pybind_state

    monkeypatch.delattr(_pybind_state, "get_all_opkernel_def", raising=False)
    assert live_registry.live_providers() == []
    assert live_registry.live_table(CPU) is None
    target = KernelTableTarget.for_provider("cpu", CPU)
    assert not target.is_live and target.source.startswith("OperatorKernels.md")
    assert target.supports("", "Relu", 17, ir.DataType.FLOAT)


def test_symbolic_inference_without_its_private_result_leaves_the_model(monkeypatch):
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    def forget_result(self):
        del self.out_mp_

    model = _relu_model()
    assert annotate_types(model)[1] is True  # the private steps work on this onnxruntime
    monkeypatch.setattr(SymbolicShapeInference, "_update_output_from_vi", forget_result)
    annotated, complete = annotate_types(model)
    assert annotated is model and complete is False


def test_symbolic_inference_without_its_run_flag_leaves_the_model(monkeypatch):
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    real_init = SymbolicShapeInference.__init__

    def init_without_run_flag(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        del self.run_

    monkeypatch.setattr(SymbolicShapeInference, "__init__", init_without_run_flag)
    model = _relu_model()
    annotated, complete = annotate_types(model)
    assert annotated is model and complete is False
