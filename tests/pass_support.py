"""What the one-pass tests (``tests/test_pass_*.py``) share: a conversion context and the plan
AssignPrecisionPass makes for a model written in ONNX text."""

from __future__ import annotations

import onnx_ir as ir

from mpcompile.core.plan import PrecisionPlan
from mpcompile.core.precision import low_precision_format
from mpcompile.passes.assign_precision import AssignPrecisionPass
from mpcompile.passes.context import ConversionContext
from mpcompile.passes.infer_types import InferTypesPass
from mpcompile.policy import Policy
from mpcompile.targets import get_target
from mpcompile.targets.registry import DEFAULT_TARGET

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def context(precision: str = "fp16", target: str = DEFAULT_TARGET, **options) -> ConversionContext:
    """A context with the default policy (``policy=Policy.from_options(...)`` to change it)."""
    options.setdefault("policy", Policy())
    return ConversionContext(low=low_precision_format(precision), target=get_target(target), **options)


def model(text: str) -> ir.Model:
    """An ``ir.Model`` from ONNX text (a graph, opset 17, unless ``text`` starts with its header)."""
    return ir.from_onnx_text(text if text.lstrip().startswith("<") else HEADER + text)


def planned(
    text: str, ctx: ConversionContext | None = None
) -> tuple[ir.Model, ConversionContext, PrecisionPlan]:
    """The model typed (InferTypesPass) and its plan (AssignPrecisionPass)."""
    ctx = ctx or context()
    converted = model(text)
    InferTypesPass(ctx)(converted)
    plan = PrecisionPlan()
    AssignPrecisionPass(ctx, plan)(converted)
    return converted, ctx, plan


def by_name(model_: ir.Model) -> dict[str, ir.Node]:
    return {node.name: node for node in model_.graph}


# A MatMul (allow) reading a weight, then an Exp (block): the MatMul goes low, the Exp stays FP32.
MATMUL_EXP = """
g (float[2,4] x) => (float[2,4] y) <float[4,4] w = {1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16}> {
  [mm] h = MatMul(x, w)
  [exp] y = Exp(h)
}
"""
