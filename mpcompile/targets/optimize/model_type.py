"""Which of ORT's transformer optimisers (``model_type``) suits a graph, read from the graph itself.

ORT's ``optimize_model`` needs a ``model_type`` naming the optimiser class whose fusions match the
model's patterns: ``bert`` (encoders), ``gpt2`` (decoder-only; its rotary-attention fusion covers
Llama-style graphs), ``bart`` (encoder-decoder decoders: BART, Marian, Whisper), ``t5`` (RMSNorm
with T5's relative position bias). The signs read here, all graphs included:

- T5: an RMSNorm (ReduceMean of a square without a mean subtracted) and a Log (the relative
  position buckets), no Sin/Cos;
- encoder-decoder decoder: an input or output naming the encoder (``encoder_hidden_states``,
  ``present.*.encoder.*``), or ``decoder_input_ids``;
- decoder-only: a KV cache (``past_key_values*`` / ``present*``), rotary embeddings (Sin and Cos),
  or a causal mask (Trilu, or positions from a Range compared with each other);
- anything else: ``bert``.
"""

from __future__ import annotations

import collections

import onnx

from mpcompile.targets.optimize.checks import all_nodes

MODEL_TYPES = ("bert", "gpt2", "bart", "t5")


def detect_model_type(model: onnx.ModelProto) -> str:
    """The ``model_type`` for ORT's transformer optimiser, one of ``MODEL_TYPES``."""
    nodes = list(all_nodes(model.graph))
    ops = collections.Counter(node.op_type for node in nodes if node.domain in ("", "ai.onnx"))
    names = [value.name for value in (*model.graph.input, *model.graph.output)]
    rotary = ops["Sin"] > 0 and ops["Cos"] > 0
    if _has_rms_norm(nodes) and ops["Log"] > 0 and not rotary:
        return "t5"
    if (
        any("encoder_hidden_states" in name or ".encoder." in name for name in names)
        or "decoder_input_ids" in names
    ):
        return "bart"
    kv_cache = any(name.startswith(("past_key_values", "present")) for name in names)
    if kv_cache or rotary or ops["Trilu"] > 0 or _has_position_comparison(nodes):
        return "gpt2"
    return "bert"


_COMPARISONS = ("Less", "LessOrEqual", "Greater", "GreaterOrEqual")
_RESHAPING = ("Unsqueeze", "Reshape", "Expand", "Cast", "Squeeze")


def _has_position_comparison(nodes: list[onnx.NodeProto]) -> bool:
    """A comparison reading a Range's positions (possibly reshaped): how exporters build causal masks."""
    producers = {output: node for node in nodes for output in node.output}

    def from_range(name: str, depth: int = 0) -> bool:
        node = producers.get(name)
        if node is None or depth > 4:
            return False
        if node.op_type == "Range":
            return True
        return node.op_type in _RESHAPING and bool(node.input) and from_range(node.input[0], depth + 1)

    return any(node.op_type in _COMPARISONS and any(map(from_range, node.input)) for node in nodes)


def _has_rms_norm(nodes: list[onnx.NodeProto]) -> bool:
    """A ReduceMean of x*x or x**2 where x is not itself centred (x - mean): an RMSNorm."""
    producers = {output: node for node in nodes for output in node.output}
    for node in nodes:
        if node.op_type != "ReduceMean" or not node.input:
            continue
        square = producers.get(node.input[0])
        if square is None or not _is_square(square):
            continue
        base = producers.get(square.input[0])
        if base is None or base.op_type != "Sub":
            return True
    return False


def _is_square(node: onnx.NodeProto) -> bool:
    return (node.op_type == "Mul" and len(node.input) == 2 and node.input[0] == node.input[1]) or (
        node.op_type == "Pow"
    )
