"""Mixed-precision training with ONNX Runtime: artifacts, loss scaling and the training driver.

Graph rewriting works with plain onnx/onnx-ir. ``Trainer`` and ``generate_training_artifacts``
need ``onnxruntime-training`` (``tools/training_env.sh`` builds that environment).
"""

from __future__ import annotations

from mpcompile.training.artifacts import (
    ArtifactPaths,
    TrainingGraphLayout,
    convert_artifacts,
    convert_training_graph,
)
from mpcompile.training.scaler import DynamicLossScaler, LossScalerState
from mpcompile.training.trainer import StepResult, Trainer, train_step

__all__ = [
    "ArtifactPaths",
    "DynamicLossScaler",
    "LossScalerState",
    "StepResult",
    "Trainer",
    "TrainingGraphLayout",
    "convert_artifacts",
    "convert_training_graph",
    "train_step",
]
