"""``--auto`` shares its work across the search (issue 23): FLOPs from the reference run's
arrays, conversions cached, and no whole-model copy or serialisation per candidate."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import models
from models.sensitive import SENSITIVE
from mpcompile.auto.flops import audited_flops, flops_from_values
from mpcompile.auto.graph import name_nodes
from mpcompile.evaluate.faithful import ReferenceSession
from mpcompile.evaluate.inputs import generate_inputs

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
