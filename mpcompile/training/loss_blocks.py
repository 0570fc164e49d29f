"""A cross-entropy loss block for scores with the classes in the last dimension (LM heads).

ORT 1.19.2's ``CrossEntropyLoss`` block declares ``labels`` as the scores' shape without the last
dimension (classes last: ``[N, T, V]`` -> ``[N, T]``) but feeds the scores to
``SoftmaxCrossEntropyLoss`` unchanged, which reads the classes from dimension 1: a ``[N, T, V]``
LM head fails at the first step ("The shape of logit and label does not match"). This block keeps
ORT's labels and moves the classes to dimension 1 with a Transpose first, which is what
``torch.nn.functional.cross_entropy(logits.transpose(1, -1), labels)`` computes. Its nodes are named
like ORT's loss nodes (``onnx::<Op>::<n>``), so they belong to the FP32 loss subgraph.
"""

from __future__ import annotations

import copy
from typing import Any

import onnx


def classes_last_cross_entropy(scores_rank: int) -> Any:
    """An ``onnxblock`` loss block (mean reduction) for scores of rank ``scores_rank`` >= 3."""
    from onnxruntime.training import onnxblock
    from onnxruntime.training.onnxblock import _graph_utils

    class ClassesLastCrossEntropyLoss(onnxblock.blocks.Block):
        def build(self, scores_input_name: str, labels_name: str = "labels") -> str:
            scores = _graph_utils.get_output_from_output_name(self.base, scores_input_name)
            if not _graph_utils.node_arg_exists(self.base, labels_name):
                labels = copy.deepcopy(scores)
                labels.name = labels_name
                labels.type.tensor_type.elem_type = onnx.TensorProto.INT64
                del labels.type.tensor_type.shape.dim[-1]
                self.base.graph.input.append(labels)
            classes_first = _graph_utils.generate_graph_name("scores.classes_first")
            perm = [0, scores_rank - 1, *range(1, scores_rank - 1)]
            self.base.graph.node.append(
                onnx.helper.make_node(
                    "Transpose",
                    [scores_input_name],
                    [classes_first],
                    perm=perm,
                    name=_graph_utils.generate_graph_name("Transpose"),
                )
            )
            loss = _graph_utils.generate_graph_name("loss")
            log_prob = _graph_utils.generate_graph_name("log_prob")
            self.base.graph.node.append(
                onnx.helper.make_node(
                    "SoftmaxCrossEntropyLoss",
                    [classes_first, labels_name],
                    [loss, log_prob],
                    reduction="mean",
                    name=_graph_utils.generate_graph_name("SoftmaxCrossEntropyLoss"),
                )
            )
            return loss

    return ClassesLastCrossEntropyLoss()
