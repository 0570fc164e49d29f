"""Dtype-carrying attributes: the ops whose float output type is an attribute, not an input's type.

When such a node goes low precision, RetypeNodesPass sets the attribute to the low-precision
type along with the output (``dtype_attribute`` names it). The ``*Like`` ops without a
``dtype`` copy their input's type; RetypeNodesPass pins it first (``LIKE_OPS``), so a change of
their input's type cannot leak into their output.
"""

from __future__ import annotations

import onnx_ir as ir

# Ops whose output dtype comes from a `dtype` attribute (default FLOAT, or the input's
# type for the *Like ops when the attribute is absent).
DTYPE_ATTRIBUTE_OPS = frozenset(
    {
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "EyeLike",
        "Bernoulli",
        "Multinomial",
    }
)
# Ops whose float output type is an `output_datatype` attribute (default FLOAT).
OUTPUT_DATATYPE_OPS = frozenset({"BlackmanWindow", "HannWindow", "HammingWindow", "MelWeightMatrix"})
# Ops that copy their input's type when `dtype` is absent.
LIKE_OPS = frozenset({"RandomNormalLike", "RandomUniformLike", "EyeLike", "Bernoulli"})


def dtype_attribute(node: ir.Node) -> str | None:
    """The attribute holding the dtype of ``node``'s output 0 (ai.onnx ops), or None."""
    if node.domain != "":
        return None
    if node.op_type == "Cast":
        return "to"
    if node.op_type in DTYPE_ATTRIBUTE_OPS:
        return "dtype"
    if node.op_type in OUTPUT_DATATYPE_OPS:
        return "output_datatype"
    return None
