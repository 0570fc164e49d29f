"""LossScalingPass alone, on a hand-built ORT-style training graph (``test_training_graph``): the
backward seed is scaled by a ``loss_scale`` input, gradients are unscaled before accumulation, and
an ``all_finite`` output says whether they are usable."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from test_training_graph import feeds_for, mlp_params, nodes_by_output, training_graph

from mpcompile.core.plan import Reason, read_decision
from mpcompile.errors import TrainingError
from mpcompile.passes.loss_scaling import ALL_FINITE_OUTPUT, LOSS_SCALE_INPUT, LossScalingPass
from mpcompile.training import reference
from mpcompile.training.artifacts import check_training_model


def test_loss_scaling_rewires_seed_unscales_gradients_and_reports_finiteness():
    proto = training_graph(mlp_params(np.random.default_rng(0)), hidden=True)
    model = ir.from_proto(proto)
    LossScalingPass()(model)
    graph = model.graph
    names = [v.name for v in graph.inputs]
    # loss_scale sits after the user inputs, before the parameters.
    assert names[:4] == ["x", "labels", LOSS_SCALE_INPUT, "w1"]
    loss_scale = graph.inputs[2]
    assert loss_scale.dtype == ir.DataType.FLOAT and loss_scale.shape == ir.Shape([])
    assert "loss_grad" not in graph.initializers
    seed_users = {use.node.op_type for use in loss_scale.uses()}
    assert seed_users == {"SoftmaxCrossEntropyLossGrad", "Reciprocal"}
    producers = nodes_by_output(model)
    for accumulator in (n for n in graph if n.op_type == "InPlaceAccumulatorV2"):
        unscale = accumulator.inputs[1].producer()
        assert unscale.op_type == "Mul"
        assert unscale.inputs[1] is producers["loss_scale.reciprocal"].outputs[0]
        assert accumulator.inputs[1].dtype == ir.DataType.FLOAT
    assert graph.outputs[-1].name == ALL_FINITE_OUTPUT
    assert graph.outputs[-1].dtype == ir.DataType.BOOL
    original = {n.name for n in ir.from_proto(proto).graph}
    added = [n for n in graph if n.name not in original]
    assert len(added) == 1 + 3 + 5 * 3 + 3  # reciprocal, 3 unscales, 5 per finiteness check, Sum/Cast/Not
    for node in added:
        assert read_decision(node).reason == Reason.LOSS_SCALING
        for out in node.outputs:
            assert not out.name.endswith("_grad"), out.name
    check_training_model(ir.to_proto(model))


def test_loss_scaling_refuses_twice_and_graphs_without_seed():
    model = ir.from_proto(training_graph(mlp_params(np.random.default_rng(0)), hidden=True))
    LossScalingPass()(model)
    with pytest.raises(TrainingError, match="already"):
        LossScalingPass()(model)
    proto = training_graph(mlp_params(np.random.default_rng(0)), hidden=True)
    proto.graph.initializer[0].name = "something_else"
    with pytest.raises(TrainingError, match="backward seed"):
        LossScalingPass()(ir.from_proto(proto))


def test_all_finite_and_unscaling_computed_by_the_graph():
    rng = np.random.default_rng(1)
    params = mlp_params(rng)
    proto = training_graph(params, hidden=True)
    model = ir.from_proto(proto)
    LossScalingPass()(model)
    scaled = ir.to_proto(model)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    labels = rng.integers(0, 3, 5).astype(np.int64)
    want = reference.evaluate(proto, feeds_for(proto, params, x, labels), ["w1_grad", "w2_grad", "b2_grad"])
    got = reference.evaluate(
        scaled,
        feeds_for(scaled, params, x, labels, scale=1024.0),
        ["w1_grad.unscaled", "w2_grad.unscaled", "b2_grad.unscaled", ALL_FINITE_OUTPUT],
    )
    for name in ("w1_grad", "w2_grad", "b2_grad"):
        np.testing.assert_allclose(got[f"{name}.unscaled"], want[name], rtol=1e-5, atol=1e-9)
    assert bool(got[ALL_FINITE_OUTPUT])
    x_bad = x.copy()
    x_bad[0, 0] = np.inf
    bad = reference.evaluate(
        scaled, feeds_for(scaled, params, x_bad, labels, scale=1024.0), [ALL_FINITE_OUTPUT]
    )
    assert not bool(bad[ALL_FINITE_OUTPUT])
