"""Per-output tolerances: a default plus overrides by output name (``--atol logits:1e-2``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping

from mpcompile import errors

# Defaults by low-precision type: elementwise |converted - reference| <= atol + rtol * |reference|.
DEFAULT_TOLERANCES = {"fp16": (1e-2, 1e-2), "bf16": (5e-2, 5e-2)}  # (rtol, atol)


class ToleranceError(errors.MpcompileError):
    """A malformed ``--rtol``/``--atol`` value or an override naming no output."""

    exit_code = errors.ExitCode.USAGE


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """A default tolerance and per-output overrides (Polygraphy style: ``""`` keys the default)."""

    default: float | None  # None: the default of the model's low-precision type, filled in by coerce()
    per_output: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def for_output(self, name: str) -> float:
        value = self.per_output.get(name, self.default)
        if value is None:
            raise ValueError("tolerance default not resolved; use Tolerance.coerce")
        return value

    def to_dict(self) -> dict:
        return {"default": self.default, "per_output": dict(sorted(self.per_output.items()))}

    def check_names(self, outputs: Iterable[str], option: str) -> None:
        unknown = sorted(set(self.per_output) - set(outputs))
        if unknown:
            raise ToleranceError(f"{option} names no output of the model: {', '.join(unknown)}")

    @classmethod
    def coerce(
        cls, value: float | Mapping[str, float] | Tolerance | None, default: float, option: str
    ) -> Tolerance:
        """From a number, a ``{name: value}`` mapping (``""`` = default) or None (the default)."""
        if value is None:
            return cls(default)
        if isinstance(value, Tolerance):
            return value if value.default is not None else dataclasses.replace(value, default=default)
        if isinstance(value, Mapping):
            per_output = {str(k): _check_value(float(v), option) for k, v in value.items() if k != ""}
            return cls(_check_value(float(value.get("", default)), option), per_output)
        return cls(_check_value(float(value), option))


def parse_tolerance_options(items: Iterable[str], *, option: str, default: float | None = None) -> Tolerance:
    """Parse CLI values: ``1e-3`` sets the default, ``name:1e-2`` one output; comma lists allowed."""
    value = default
    per_output: dict[str, float] = {}
    for item in items:
        for part in filter(None, (piece.strip() for piece in item.split(","))):
            name, sep, text = part.rpartition(":")
            number = _parse_number(text, option, part)
            if sep:
                if not name:
                    raise ToleranceError(f"{option} {part!r}: empty output name before ':'")
                per_output[name] = number
            else:
                value = number
    return Tolerance(value, per_output)


def _parse_number(text: str, option: str, item: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise ToleranceError(f"{option} {item!r}: expected a number or NAME:NUMBER") from None
    return _check_value(number, option)


def _check_value(number: float, option: str) -> float:
    if math.isnan(number) or number < 0:
        raise ToleranceError(f"{option} {number}: tolerances must be non-negative numbers")
    return number
