"""policy/training_ops.py: which ORT training ops may run in low precision, and their data slots."""

from __future__ import annotations

from mpcompile.policy.training_ops import LOW_PRECISION_OPS, OpRule, rule_for


def test_compute_ops_seed_and_element_wise_ops_follow():
    assert rule_for("", "MatMul").allow and rule_for("ai.onnx", "MatMul") == rule_for("", "MatMul")
    assert not rule_for("", "Add").allow
    assert rule_for("com.microsoft", "ReluGrad") is not None


def test_losses_normalizations_and_reductions_stay_fp32():
    for domain, op in (
        ("", "SoftmaxCrossEntropyLoss"),
        ("", "LayerNormalization"),
        ("", "ReduceSum"),
        ("com.microsoft", "InPlaceAccumulatorV2"),
    ):
        assert rule_for(domain, op) is None
        assert (domain, op) not in LOW_PRECISION_OPS


def test_data_slots_stop_at_the_node_arity():
    assert OpRule((0, 2), (0,)).data_inputs(2) == [0]
    assert OpRule(None, None).data_outputs(3) == [0, 1, 2]
