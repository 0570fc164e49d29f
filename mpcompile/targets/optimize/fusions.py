"""Which fusion creates which fused op, for ORT's session levels and its Python transformer optimiser.

When a fused op cannot stay (no kernel on the target, an ORT-internal op that cannot be lowered),
the fusion that made it is switched off and the optimisation rerun. ORT's session levels take
graph transformer names (``disabled_optimizers``); the transformer optimiser takes
``FusionOptions`` flags (``enable_*`` attributes set to False). Ops missing here (e.g. T5's
``RelativePositionBias``, created unconditionally by the t5 optimiser) cannot be switched off
one by one; the caller then falls back to another optimiser or a lower level.

``REPLACED_HEAVY_OPS`` names the FLOP-heavy standard op each fused op takes the place of: a fused
op the target runs only in FP32 while it runs that op in low precision would move the op's FLOPs
to FP32 (``FusedConv`` on CUDA is registered for float only, Conv for float16 too).
"""

from __future__ import annotations

_MS = "com.microsoft"

# ORT graph transformers (names as ``disabled_optimizers`` takes them) that create each fused op.
SESSION_FUSIONS: dict[tuple[str, str], tuple[str, ...]] = {
    (_MS, "FusedGemm"): ("GemmActivationFusion",),
    (_MS, "FusedConv"): ("ConvActivationFusion",),
    (_MS, "FusedMatMul"): ("MatMulScaleFusion", "MatmulTransposeFusion"),
    (_MS, "BiasSoftmax"): ("BiasSoftmaxFusion",),
    (_MS, "BiasGelu"): ("BiasGeluFusion",),
    (_MS, "Gelu"): ("GeluFusionL1", "GeluFusionL2"),
    (_MS, "FastGelu"): ("FastGeluFusion",),
    (_MS, "QuickGelu"): ("QuickGeluFusion",),
    (_MS, "SkipLayerNormalization"): ("SkipLayerNormFusion",),
    (_MS, "EmbedLayerNormalization"): ("EmbedLayerNormFusion",),
    (_MS, "Attention"): ("AttentionFusion",),
    (_MS, "MatMulIntegerToFloat"): ("MatMulIntegerToFloatFusion",),
    (_MS, "DynamicQuantizeMatMul"): ("DynamicQuantizeMatMulFusion",),
    (_MS, "MatMulNBits"): ("MatMulNBitsFusion",),
    ("", "LayerNormalization"): ("LayerNormFusion",),
    ("", "SimplifiedLayerNormalization"): ("SimplifiedLayerNormFusion",),
}

_SKIP_LAYER_NORM = ("enable_skip_layer_norm", "enable_bias_skip_layer_norm")
# ``FusionOptions`` flags (onnxruntime.transformers.fusion_options) whose fusions create each op.
PYTHON_FUSION_FLAGS: dict[tuple[str, str], tuple[str, ...]] = {
    (_MS, "Attention"): ("enable_attention",),
    (_MS, "MultiHeadAttention"): ("enable_attention",),
    (_MS, "GroupQueryAttention"): ("enable_attention",),
    (_MS, "PackedAttention"): ("enable_attention",),
    (_MS, "RotaryEmbedding"): ("enable_rotary_embeddings",),
    (_MS, "SkipLayerNormalization"): _SKIP_LAYER_NORM,
    (_MS, "SkipSimplifiedLayerNormalization"): _SKIP_LAYER_NORM,
    (_MS, "EmbedLayerNormalization"): ("enable_embed_layer_norm",),
    (_MS, "BiasGelu"): ("enable_bias_gelu",),
    (_MS, "FastGelu"): ("enable_gelu", "enable_bias_gelu"),
    (_MS, "Gelu"): ("enable_gelu",),
    (_MS, "QuickGelu"): ("enable_gelu",),
    (_MS, "GemmFastGelu"): ("enable_gemm_fast_gelu",),
    (_MS, "BiasSplitGelu"): ("enable_bias_splitgelu",),
    (_MS, "BiasAdd"): ("enable_bias_add",),
    (_MS, "GroupNorm"): ("enable_group_norm",),
    (_MS, "SkipGroupNorm"): ("enable_skip_group_norm",),
    (_MS, "NhwcConv"): ("enable_nhwc_conv",),
    ("", "LayerNormalization"): ("enable_layer_norm",),
    ("", "SimplifiedLayerNormalization"): ("enable_layer_norm",),
}


# The heavy standard op each fused op replaces (its FLOPs are that op's; see ``analysis.flops``).
REPLACED_HEAVY_OPS: dict[tuple[str, str], str] = {
    (_MS, "FusedConv"): "Conv",
    (_MS, "NhwcConv"): "Conv",
    (_MS, "FusedGemm"): "Gemm",
    (_MS, "FusedMatMul"): "MatMul",
    (_MS, "GemmFastGelu"): "MatMul",
    (_MS, "Attention"): "MatMul",
    (_MS, "MultiHeadAttention"): "MatMul",
    (_MS, "GroupQueryAttention"): "MatMul",
    (_MS, "PackedAttention"): "MatMul",
}


def op_key(domain: str, op_type: str) -> tuple[str, str]:
    """``(domain, op)`` with the default domain spelled ``""``."""
    return ("" if domain == "ai.onnx" else domain, op_type)
