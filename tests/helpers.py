"""Test helpers: run a model in ONNX Runtime, compare outputs, read back what a conversion stamped,
load one of the repository's scripts.

Models are built with ``models.builder``."""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run on ONNX Runtime's CPU EP (note: CPU runs FP16 nodes without FP16 kernels in FP32)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_close(
    expected: Sequence[np.ndarray], actual: Sequence[np.ndarray], rtol: float, atol: float
) -> None:
    """Compare outputs, printing the stated tolerance and the measured error."""
    assert len(expected) == len(actual)
    for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
        assert want.shape == got.shape, f"output {index}: shape {got.shape} != {want.shape}"
        want64, got64 = want.astype(np.float64), got.astype(np.float64)
        error = float(np.max(np.abs(want64 - got64))) if want.size else 0.0
        print(f"output {index}: max abs error {error:.3g} (rtol {rtol}, atol {atol}, CPU EP)")
        np.testing.assert_allclose(got64, want64, rtol=rtol, atol=atol)


def node_by_name(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    for node in model.graph.node:
        if node.name == name:
            return node
    raise KeyError(name)


def metadata(node: onnx.NodeProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in node.metadata_props}


def initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    for tensor in model.graph.initializer:
        if tensor.name == name:
            return tensor
    raise KeyError(name)


def decisions_by_name(model) -> dict[str, tuple[str, str, str]]:
    """(precision, reason, rule) stamped on each node of the main graph, Casts mpcompile added left
    out; ``model`` is an ``onnx.ModelProto`` or an ``onnx_ir.Model``."""
    import onnx_ir as ir

    from mpcompile.core.plan import read_decision

    graph = (ir.from_proto(model) if isinstance(model, onnx.ModelProto) else model).graph
    return {
        node.name: (d.precision.value, d.reason, d.rule)
        for node in graph
        if (d := read_decision(node)) is not None and d.reason != "cast"
    }


REPO_ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str) -> types.ModuleType:
    """The script at ``relative_path`` in the repository (``tools/bench/convert_bench.py``) as a
    module, registered under its file name (its dataclasses and pickling find it there)."""
    path = REPO_ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module
