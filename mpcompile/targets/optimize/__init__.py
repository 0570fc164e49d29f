"""ONNX Runtime graph optimisation before precision assignment (``convert --optimize``).

Fusions (Attention, SkipLayerNormalization, BiasGelu, ...) stop matching once a graph has Casts
and FP16 types in it, so ORT users optimise first and convert second. Levels:

- ``basic``: ORT's ``ORT_ENABLE_BASIC`` (constant folding, redundant-node elimination; EP-agnostic).
- ``extended``: ``ORT_ENABLE_EXTENDED`` (adds ORT's contrib-op fusions: Gelu, LayerNormalization,
  SkipLayerNormalization, Attention, FusedMatMul, ...), written out through
  ``SessionOptions.optimized_model_filepath``.
- ``transformer``: ``onnxruntime.transformers.optimizer.optimize_model`` (ORT's Python fusions for
  transformer models on top of ORT's basic level), every control-flow body optimised on its own.

ORT applies a fusion only where the session's execution provider supports the fused op, so the
session runs on the target's provider when the installed build has it, else on CPU. Each result is
checked (full onnx check, ORT load, a target kernel for every fused op, in the conversion's
precision wherever the target runs the heavy op it replaces in it); what fails is fixed by
switching the blamed fusion off, or the next lower level is used (``levels``). onnxruntime is
imported lazily.

Modules: ``levels`` (the entry point and its fallbacks), ``ort_session`` (ORT's session levels,
loading), ``transformer`` (ORT's Python fusions), ``control_flow`` (If/Loop/Scan bodies one at a
time), ``model_type`` (which Python optimiser), ``fusions`` (fused op -> the fusion that makes
it), ``checks``, ``lowering`` (ORT-internal ai.onnx ops -> standard ONNX), ``unsqueeze``,
``symbolic_types`` (typing the fused ops), ``quiet``.
"""

from mpcompile.targets.optimize.fusions import PYTHON_FUSION_FLAGS, SESSION_FUSIONS
from mpcompile.targets.optimize.levels import OPTIMIZE_METADATA_KEY, OptimizeLevelError, optimize_model
from mpcompile.targets.optimize.model_type import detect_model_type
from mpcompile.targets.optimize.ort_session import session_provider
from mpcompile.targets.optimize.symbolic_types import annotate_types
from mpcompile.targets.optimize.unsqueeze import split_multi_axis_unsqueeze

__all__ = [
    "OPTIMIZE_METADATA_KEY",
    "PYTHON_FUSION_FLAGS",
    "SESSION_FUSIONS",
    "OptimizeLevelError",
    "annotate_types",
    "detect_model_type",
    "optimize_model",
    "session_provider",
    "split_multi_axis_unsqueeze",
]
