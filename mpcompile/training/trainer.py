"""A training loop step around ORT's ``CheckpointState``/``Module``/``Optimizer`` with loss scaling.

Needs ``onnxruntime-training`` (see ``tools/training_env.sh``); it is imported when a ``Trainer``
is created, never at module import.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from mpcompile.errors import RuntimeMissingError, TrainingError
from mpcompile.passes.loss_scaling import ALL_FINITE_OUTPUT, LOSS_SCALE_INPUT
from mpcompile.training.artifacts import ArtifactPaths
from mpcompile.training.scaler import DynamicLossScaler

SCALER_STATE_SUFFIX = ".loss_scaler.json"


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one training step did, for logging."""

    loss: float
    all_finite: bool
    stepped: bool  # False: optimizer step skipped because a gradient overflowed
    loss_scale: float  # the scale this step ran with
    next_loss_scale: float
    outputs: tuple[np.ndarray, ...]  # every user-visible training output, loss first


class Trainer:
    """Runs training steps on (loss-scaled) ORT training artifacts.

    Each ``train_step`` feeds ``loss_scale``, reads ``all_finite``, takes the optimizer step only
    when every gradient is finite, lets the scaler back off or grow, and always resets the
    gradients. Artifacts without a ``loss_scale`` input (plain FP32 ones) train without scaling.
    """

    def __init__(
        self,
        artifacts: str | os.PathLike,
        *,
        scaler: DynamicLossScaler | None = None,
        static_scale: float | None = None,
        learning_rate: float | None = None,
        prefix: str = "",
        checkpoint: str | os.PathLike | None = None,
    ) -> None:
        api = _training_api()
        self.paths = ArtifactPaths.find(artifacts, prefix)
        checkpoint_path = pathlib.Path(checkpoint) if checkpoint is not None else self.paths.checkpoint
        self.state = api.CheckpointState.load_checkpoint(str(checkpoint_path))
        eval_model = str(self.paths.eval_model) if self.paths.eval_model else None
        self.module = api.Module(str(self.paths.training_model), self.state, eval_model)
        if self.paths.optimizer_model is None:
            raise TrainingError(f"{self.paths.directory}: no optimizer model; cannot train")
        self.optimizer = api.Optimizer(str(self.paths.optimizer_model), self.module)
        if learning_rate is not None:
            self.optimizer.set_learning_rate(learning_rate)
        self.module.train()
        self.input_names = list(self.module.input_names())
        self.output_names = list(self.module.output_names())
        self.loss_scaled = LOSS_SCALE_INPUT in self.input_names
        if self.loss_scaled and ALL_FINITE_OUTPUT not in self.output_names:
            raise TrainingError(
                f"training model has {LOSS_SCALE_INPUT!r} but no {ALL_FINITE_OUTPUT!r} output"
            )
        if static_scale is not None and scaler is not None:
            raise TrainingError("give either a scaler or a static scale, not both")
        if static_scale is not None:
            scaler = DynamicLossScaler.static(static_scale)
        self.scaler = scaler or DynamicLossScaler()
        if not self.loss_scaled:
            self.scaler = DynamicLossScaler.static(1.0)
        scaler_file = _scaler_path(checkpoint_path)
        if self.loss_scaled and scaler is None and static_scale is None and scaler_file.is_file():
            self.scaler = DynamicLossScaler.load(scaler_file)

    @property
    def user_input_names(self) -> list[str]:
        """The inputs ``train_step`` takes, in order (``loss_scale`` is fed by the trainer)."""
        return [name for name in self.input_names if name != LOSS_SCALE_INPUT]

    def train_step(self, *inputs: np.ndarray) -> StepResult:
        """One forward/backward pass and, unless a gradient overflowed, one optimizer step."""
        self.module.train()
        scale = self.scaler.scale
        feeds = list(inputs)
        if self.loss_scaled:
            feeds.insert(self.input_names.index(LOSS_SCALE_INPUT), np.array(scale, dtype=np.float32))
        if len(feeds) != len(self.input_names):
            raise TrainingError(
                f"train_step expects inputs {self.user_input_names}, got {len(inputs)} arrays"
            )
        raw = self.module(*feeds)
        outputs = raw if isinstance(raw, (list, tuple)) else (raw,)
        all_finite = True
        if self.loss_scaled:
            all_finite = bool(np.asarray(outputs[self.output_names.index(ALL_FINITE_OUTPUT)]))
        stepped = self.scaler.update(all_finite) if self.loss_scaled else True
        if stepped:
            self.optimizer.step()
        self.module.lazy_reset_grad()
        user_outputs = tuple(
            np.asarray(value)
            for name, value in zip(self.output_names, outputs, strict=False)
            if name != ALL_FINITE_OUTPUT
        )
        return StepResult(
            loss=float(np.asarray(user_outputs[0])),
            all_finite=all_finite,
            stepped=stepped,
            loss_scale=scale,
            next_loss_scale=self.scaler.scale,
            outputs=user_outputs,
        )

    def eval_step(self, *inputs: np.ndarray) -> float:
        """The eval model's loss for ``inputs`` (user inputs of the eval graph)."""
        self.module.eval()
        raw = self.module(*inputs)
        outputs = raw if isinstance(raw, (list, tuple)) else (raw,)
        return float(np.asarray(outputs[0]))

    def parameters(self) -> dict[str, np.ndarray]:
        """Copies of the FP32 master weights, by name."""
        return {name: np.array(param.data) for name, param in self.state.parameters}

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Save the ORT checkpoint and the scaler state beside it (``<path>.loss_scaler.json``)."""
        api = _training_api()
        api.CheckpointState.save_checkpoint(self.state, str(path), include_optimizer_state=True)
        self.scaler.save(_scaler_path(pathlib.Path(path)))


def train_step(trainer: Trainer, *inputs: np.ndarray) -> StepResult:
    """Functional form of ``Trainer.train_step``."""
    return trainer.train_step(*inputs)


def _scaler_path(checkpoint: pathlib.Path) -> pathlib.Path:
    return checkpoint.with_name(checkpoint.name + SCALER_STATE_SUFFIX)


def _training_api():
    try:
        from onnxruntime.training import api
    except ImportError:
        raise RuntimeMissingError(
            "onnxruntime-training is not installed; create the training environment with tools/training_env.sh"
        ) from None
    return api
