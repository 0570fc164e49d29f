"""StampDecisionsPass alone: each planned node gets its decision in metadata_props, the model its
provenance; read_decision reads them back."""

from __future__ import annotations

from pass_support import MATMUL_EXP, by_name, planned

from mpcompile import __version__
from mpcompile.core.plan import MODEL_PRECISION_KEY, MODEL_VERSION_KEY, RULE_KEY, read_decision
from mpcompile.passes.stamp_decisions import StampDecisionsPass


def test_decisions_and_provenance_are_stamped():
    converted, ctx, plan = planned(MATMUL_EXP)
    StampDecisionsPass(ctx, plan)(converted)
    nodes = by_name(converted)
    assert read_decision(nodes["mm"]) == plan[nodes["mm"]]
    assert read_decision(nodes["exp"]) == plan[nodes["exp"]]
    assert nodes["exp"].metadata_props[RULE_KEY] == "policy.block[Exp]"
    assert converted.metadata_props[MODEL_VERSION_KEY] == __version__
    assert converted.metadata_props[MODEL_PRECISION_KEY] == "fp16"


def test_nodes_removed_after_planning_are_skipped():
    converted, ctx, plan = planned(MATMUL_EXP)
    exp = by_name(converted)["exp"]
    converted.graph.outputs[0] = exp.inputs[0]
    converted.graph.remove(exp, safe=True)
    StampDecisionsPass(ctx, plan)(converted)
    assert read_decision(exp) is None
