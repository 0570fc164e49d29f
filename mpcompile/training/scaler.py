"""Dynamic loss scaling, with the defaults of PyTorch's ``torch.amp.GradScaler``.

The scaler owns only the arithmetic of the scale; the trainer feeds ``scale`` to the training
graph's ``loss_scale`` input and reports the graph's ``all_finite`` output back via ``update``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib

from mpcompile.errors import TrainingError


@dataclasses.dataclass
class LossScalerState:
    """Everything needed to resume scaling (and worth logging)."""

    scale: float
    growth_tracker: int  # clean steps since the last change of scale
    skipped_steps: int
    total_steps: int


class DynamicLossScaler:
    """Halves the scale on overflow (step skipped), doubles it after ``growth_interval`` clean steps.

    ``dynamic=False`` gives a static scale: ``update`` never changes it, but overflowing steps are
    still reported so the trainer can skip them.
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        min_scale: float = 1.0,
        max_scale: float = 2.0**24,
        dynamic: bool = True,
    ) -> None:
        if not (math.isfinite(init_scale) and init_scale > 0):
            raise TrainingError(f"init_scale must be a positive finite number, got {init_scale}")
        if growth_factor <= 1.0:
            raise TrainingError(f"growth_factor must be > 1, got {growth_factor}")
        if not 0.0 < backoff_factor < 1.0:
            raise TrainingError(f"backoff_factor must be in (0, 1), got {backoff_factor}")
        if growth_interval < 1:
            raise TrainingError(f"growth_interval must be >= 1, got {growth_interval}")
        if not 0 < min_scale <= max_scale:
            raise TrainingError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_interval = growth_interval
        self.min_scale = min_scale
        self.max_scale = max_scale
        self.dynamic = dynamic
        self._state = LossScalerState(
            scale=init_scale if not dynamic else min(max(init_scale, min_scale), max_scale),
            growth_tracker=0,
            skipped_steps=0,
            total_steps=0,
        )

    @classmethod
    def static(cls, scale: float) -> DynamicLossScaler:
        """A fixed loss scale (overflowing steps are still skipped)."""
        return cls(init_scale=scale, dynamic=False)

    @property
    def scale(self) -> float:
        return self._state.scale

    @property
    def state(self) -> LossScalerState:
        return dataclasses.replace(self._state)

    def update(self, all_finite: bool) -> bool:
        """Record one step's overflow check; return True when the optimizer step must be taken."""
        state = self._state
        state.total_steps += 1
        if not all_finite:
            state.skipped_steps += 1
            state.growth_tracker = 0
            if self.dynamic:
                state.scale = max(state.scale * self.backoff_factor, self.min_scale)
            return False
        state.growth_tracker += 1
        if self.dynamic and state.growth_tracker >= self.growth_interval:
            state.scale = min(state.scale * self.growth_factor, self.max_scale)
            state.growth_tracker = 0
        return True

    def state_dict(self) -> dict:
        return {
            **dataclasses.asdict(self._state),
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
            "min_scale": self.min_scale,
            "max_scale": self.max_scale,
            "dynamic": self.dynamic,
        }

    def load_state_dict(self, data: dict) -> None:
        try:
            self._state = LossScalerState(
                scale=float(data["scale"]),
                growth_tracker=int(data["growth_tracker"]),
                skipped_steps=int(data["skipped_steps"]),
                total_steps=int(data["total_steps"]),
            )
            self.growth_factor = float(data.get("growth_factor", self.growth_factor))
            self.backoff_factor = float(data.get("backoff_factor", self.backoff_factor))
            self.growth_interval = int(data.get("growth_interval", self.growth_interval))
            self.min_scale = float(data.get("min_scale", self.min_scale))
            self.max_scale = float(data.get("max_scale", self.max_scale))
            self.dynamic = bool(data.get("dynamic", self.dynamic))
        except (KeyError, TypeError, ValueError) as exc:
            raise TrainingError(f"invalid loss scaler state: {exc}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write the state as JSON (atomically)."""
        path = pathlib.Path(path)
        temp = path.with_name(f".{path.name}.tmp")
        temp.write_text(json.dumps(self.state_dict(), indent=2, sort_keys=True))
        os.replace(temp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DynamicLossScaler:
        path = pathlib.Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TrainingError(f"{path}: cannot read loss scaler state ({exc})") from None
        scaler = cls()
        scaler.load_state_dict(data)
        return scaler
