"""Infer the dtype of every value: onnx shape inference plus typing rules for contrib ops."""

from __future__ import annotations

import logging

import onnx_ir as ir
import onnx_ir.passes.common

from mpcompile import op_types
from mpcompile.context import ConversionContext
from mpcompile.values import set_dtype

logger = logging.getLogger(__name__)


class InferTypesPass(ir.passes.InPlacePass):
    """Fill in value dtypes so precision decisions never guess.

    Runs onnx's shape inference (which cannot type contrib ops), then types the
    outputs of known contrib ops from their inputs. Values that stay untyped are
    counted; nodes reading them are kept FP32 by the precision assignment.
    """

    def __init__(self, context: ConversionContext):
        super().__init__()
        self.context = context

    def __repr__(self) -> str:
        return "InferTypesPass()"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        if any(value.dtype is None for graph in model.graphs() for node in graph for value in node.outputs):
            # Strips large initializers before serializing, so big models are not copied.
            result = ir.passes.common.ShapeInferencePass(data_prop=False)(model)
            modified = result.modified
        modified |= _type_contrib_outputs(model)
        self.context.stats.untyped_values = sum(
            1
            for graph in model.graphs()
            for node in graph
            for value in node.outputs
            if value.dtype is None and value.name
        )
        return ir.passes.PassResult(model, modified=modified)


def _type_contrib_outputs(model: ir.Model) -> bool:
    modified = False
    for graph in model.graphs():
        for node in graph:
            rule = op_types.CONTRIB_TYPING.get((node.domain, node.op_type))
            if rule is None:
                continue
            source = next(
                (
                    v.dtype
                    for i, v in enumerate(node.inputs)
                    if v is not None
                    and i not in rule.keep_inputs
                    and v.dtype is not None
                    and v.dtype.is_floating_point()
                ),
                None,
            )
            for index, value in enumerate(node.outputs):
                if value.dtype is not None or not value.name:
                    continue
                set_dtype(value, ir.DataType.FLOAT if index in rule.keep_outputs else source)
                modified = modified or value.dtype is not None
    return modified
