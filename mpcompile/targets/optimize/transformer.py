"""ORT's Python transformer fusions (``onnxruntime.transformers.optimizer``), one graph at a time."""

from __future__ import annotations

import dataclasses

import onnx

from mpcompile import errors
from mpcompile.evaluate.ort_session import is_onnxruntime_error
from mpcompile.targets.optimize.checks import first_line
from mpcompile.targets.optimize.control_flow import (
    ControlFlowLost,
    has_control_flow,
    hide_control_flow,
    optimize_bodies,
    restore_control_flow,
)
from mpcompile.targets.optimize.quiet import quiet


class FusionFailed(Exception):
    """ORT's transformer optimiser raised, or broke the graph's control flow."""


@dataclasses.dataclass(frozen=True)
class FusionSettings:
    """How the transformer optimiser runs: its ``model_type`` and the fusions switched off."""

    model_type: str
    num_heads: int = 0  # 0: detect from the graph
    hidden_size: int = 0
    disabled_flags: frozenset[str] = frozenset()  # FusionOptions attributes set to False
    use_gpu: bool = False


def fuse_transformer(model: onnx.ModelProto, settings: FusionSettings) -> onnx.ModelProto:
    """ORT's Python fusions on every graph of ``model`` (not modified): the main graph with its
    control-flow nodes hidden, then each body as a standalone model (see ``control_flow``).

    Raises ``FusionFailed`` when ORT's optimiser raises on a graph or breaks its control flow.
    """
    if not has_control_flow(model.graph):
        return _run_fusions(_copy(model), settings)
    try:
        hidden_model, hidden = hide_control_flow(model)
        restored = restore_control_flow(_run_fusions(hidden_model, settings), hidden)
        return optimize_bodies(restored, lambda body: fuse_transformer(body, settings))
    except ControlFlowLost as exc:
        raise FusionFailed(str(exc)) from exc


def _run_fusions(model: onnx.ModelProto, settings: FusionSettings) -> onnx.ModelProto:
    try:
        from onnxruntime.transformers import optimizer
        from onnxruntime.transformers.fusion_options import FusionOptions
    except ImportError as exc:
        raise errors.RuntimeMissingError(
            f"--optimize transformer needs onnxruntime.transformers ({exc})"
        ) from None
    options = FusionOptions(settings.model_type)
    for flag in settings.disabled_flags:
        setattr(options, flag, False)
    try:
        with quiet():
            result = optimizer.optimize_model(
                model,
                settings.model_type,
                settings.num_heads,
                settings.hidden_size,
                optimization_options=options,
                opt_level=0,
                use_gpu=settings.use_gpu,
            )
    except Exception as exc:
        if not is_onnxruntime_error(exc):
            raise
        raise FusionFailed(f"{type(exc).__name__}: {first_line(exc)}") from exc
    return result.model


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """ORT's optimiser edits the model it is given; it gets a copy."""
    copied = onnx.ModelProto()
    copied.CopyFrom(model)
    return copied
