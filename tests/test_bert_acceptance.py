"""Issue 2 acceptance on the BERT-style encoder with the default policy."""

from __future__ import annotations

import onnx
import onnx_ir as ir

import models
import mpcompile
from mpcompile.core.plan import read_decision

# Tiny encoder (2 layers): the FP16 region runs from the embedding lookups (they read only
# weights) to the pooler Gemm. Boundaries: attention mask -> fp16, last_hidden_state -> fp32,
# pooler Gemm -> fp32 (Tanh stays FP32: no allow op after it).
EXPECTED_BOUNDARIES = 3


def precision_boundaries(original: onnx.ModelProto, converted: onnx.ModelProto) -> set[tuple[str, str]]:
    """(value, wanted precision) pairs where a float edge of the original graph crosses precisions."""
    decided = {node.name: read_decision(node) for node in ir.from_proto(converted).graph if node.name}
    graph = ir.from_proto(onnx.shape_inference.infer_shapes(original)).graph
    boundaries = set()

    def precision_of(value: ir.Value) -> str:
        producer = value.producer()
        if producer is None:
            return (
                "fp16" if value.is_initializer() else "fp32"
            )  # weights follow their readers; inputs are FP32
        return decided[producer.name].precision.value

    for node in graph:
        decision = decided[node.name]
        for value in node.inputs:
            if value is None or value.dtype != ir.DataType.FLOAT or value.is_initializer():
                continue
            if (
                decision.precision.value in ("fp16", "fp32")
                and precision_of(value) != decision.precision.value
            ):
                boundaries.add((value.name, decision.precision.value))
    for value in graph.outputs:
        if value.dtype == ir.DataType.FLOAT and precision_of(value) != "fp32":
            boundaries.add((value.name, "fp32"))
    return boundaries


def test_bert_matmuls_fp16_casts_equal_boundaries_no_lossy_round_trip():
    original = models.build("bert_encoder")
    result = mpcompile.convert(original)
    rows = result.decisions()
    heavy = [row for row in rows if row.op_type in ("MatMul", "Gemm")]
    assert heavy and all(row.precision == "fp16" for row in heavy), [
        r for r in heavy if r.precision != "fp16"
    ]

    boundaries = precision_boundaries(original, result.model)
    print(f"boundaries: {sorted(boundaries)}; casts added: {result.stats.casts_added}")
    assert len(boundaries) == EXPECTED_BOUNDARIES
    assert result.stats.casts_added == EXPECTED_BOUNDARIES

    graph = ir.from_proto(result.model).graph
    for node in graph:
        if node.op_type != "Cast":
            continue
        producer = node.inputs[0].producer()
        if producer is not None and producer.op_type == "Cast":
            lossy_pair = (
                producer.inputs[0].dtype == ir.DataType.FLOAT
                and producer.outputs[0].dtype == ir.DataType.FLOAT16
                and node.outputs[0].dtype == ir.DataType.FLOAT
            )
            assert not lossy_pair, f"FP32->FP16->FP32 pair at {node.name}"
