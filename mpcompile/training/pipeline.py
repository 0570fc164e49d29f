"""The pipelines that convert ORT training graphs: the same ``Pipeline`` runner as inference.

``convert --training`` runs, on the training and eval graphs of an FP32 artifact folder:

    AssignTrainingPrecision -> ApplyTrainingPrecision -> MasterWeights -> [LossScaling]
    -> TopologicalSort -> StampTrainingDecisions

``train-artifacts`` converts the forward graph with the inference pipeline (the training policy
lifts the parameters to FP32 inputs), lets ORT build the gradient graph, then runs on the graphs
ORT wrote:

    StampGeneratedGraph -> MasterWeights -> [LossScaling -> TopologicalSort]

Each pass is timed (``stats.pass_seconds``), and with ``check_invariants`` the graph is verified
after each one (``VerifyPass``: type variables, topological order); ``dump_dir`` writes the IR
after each pass, as ``mpcompile convert --dump-dir`` does.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import onnx_ir as ir
import onnx_ir.passes.common

from mpcompile.core.pipeline import Pipeline
from mpcompile.core.plan import Decision, PrecisionPlan
from mpcompile.core.precision import low_precision_format
from mpcompile.passes.context import ConversionContext
from mpcompile.passes.loss_scaling import LossScalingPass
from mpcompile.passes.master_weights import MasterWeightsPass
from mpcompile.passes.stamp_generated import StampGeneratedGraphPass
from mpcompile.passes.training_precision import (
    ApplyTrainingPrecisionPass,
    AssignTrainingPrecisionPass,
    StampTrainingDecisionsPass,
)
from mpcompile.passes.verify import VerifyPass
from mpcompile.policy import Policy
from mpcompile.policy.training_rules import TrainingRules
from mpcompile.targets.base import AnyTarget


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    """Debugging options of the training pipelines (``convert --check-invariants/--dump-dir``)."""

    check_invariants: bool = False
    dump_dir: str | os.PathLike | None = None

    def pipeline(self, context: ConversionContext, passes: list[ir.passes.PassBase], graph: str) -> Pipeline:
        """A ``Pipeline`` of ``passes``; dumps go to ``dump_dir/<graph>``."""
        return Pipeline(
            passes,
            check_invariants=(lambda m: VerifyPass(context)(m)) if self.check_invariants else None,
            dump_dir=pathlib.Path(self.dump_dir) / graph if self.dump_dir else None,
        )


DEFAULT_SETTINGS = PipelineSettings()


def training_context(precision: str) -> ConversionContext:
    """The context of a training-graph conversion: the low-precision format; the training rule
    set replaces the inference policy and kernel target."""
    return ConversionContext(low=low_precision_format(precision), target=AnyTarget(), policy=Policy())


def run_training_pipeline(
    model: ir.Model,
    precision: str = "fp16",
    *,
    loss_scaling: bool = True,
    block_ops: tuple[str, ...] = (),
    block_nodes: tuple[str, ...] = (),
    settings: PipelineSettings = DEFAULT_SETTINGS,
    graph: str = "training",
) -> ConversionContext:
    """Convert a training (or eval) graph in place; return the context holding the stats."""
    context = training_context(precision)
    plan = PrecisionPlan()
    rules = TrainingRules(context.low.precision, block_ops=block_ops, block_nodes=block_nodes)
    passes: list[ir.passes.PassBase] = [
        AssignTrainingPrecisionPass(context, plan, rules),
        ApplyTrainingPrecisionPass(context, plan),
        MasterWeightsPass.of(model),
    ]
    if loss_scaling:
        passes.append(LossScalingPass())
    passes += [onnx_ir.passes.common.TopologicalSortPass(), StampTrainingDecisionsPass(context, plan)]
    pipeline = settings.pipeline(context, passes, graph)
    pipeline(model)
    context.stats.pass_seconds.update(pipeline.seconds)
    return context


def finish_generated_graph(
    model: ir.Model,
    precision: str,
    forward_decisions: dict[str, Decision],
    *,
    loss_scaling: bool,
    settings: PipelineSettings = DEFAULT_SETTINGS,
    graph: str = "training",
) -> ConversionContext:
    """Stamp a graph ORT generated from a converted forward graph, and add loss scaling."""
    context = training_context(precision)
    passes: list[ir.passes.PassBase] = [
        StampGeneratedGraphPass(forward_decisions, precision),
        MasterWeightsPass.of(model),
    ]
    if loss_scaling:
        passes += [LossScalingPass(), onnx_ir.passes.common.TopologicalSortPass()]
    pipeline = settings.pipeline(context, passes, graph)
    pipeline(model)
    context.stats.pass_seconds.update(pipeline.seconds)
    return context
