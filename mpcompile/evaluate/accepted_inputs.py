"""Generated inputs the model accepts: the sizes and values it implies first, then a size ladder.

When ONNX Runtime rejects inputs generated at the default sizes (``inputs.DEFAULT_DIM``), the
candidates below are generated and run in order until one runs:

1. the values the model compares its scalar inputs with (``implied_sizes.scalar_values``), at
   the default sizes;
2. the image sizes the model implies for the height/width dims of its image inputs (position
   embeddings, Resize sizes, then 224, 256, 384, 512), the other dims at their default;
3. the sizes it implies for its other dynamic dims (position-embedding rows, Reshape
   constants), the image dims at their default;
4. the ladder: every free dynamic dim at 32, 64, ..., 4096 (``FREE_DIM_LADDER``).

Each size is tried with each combination of implied scalar values (at most
``MAX_VALUE_COMBINATIONS``); a candidate whose inputs equal one tried before is skipped. No new
candidate starts once ``MAX_RETRY_SECONDS`` (30 s) have passed since the first rejection, nor
after ``MAX_TRIES`` runs; the one-line error then names the dims tried and the ``--shape`` to give.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

import onnx_ir as ir

from mpcompile import errors
from mpcompile.evaluate import implied_sizes
from mpcompile.evaluate.inputs import (
    DEFAULT_DIM,
    Feeds,
    InputSpec,
    cast_feeds,
    generate_from_specs,
    input_specs,
    model_inputs,
    rejected_inputs_error,
)

# Sizes tried, in order, for every free dimension at once when nothing the model implies runs
# (image models that need 32 pixels or more, audio front ends that need hundreds of samples).
FREE_DIM_LADDER = (32, 64, 128, 256, 512, 1024, 4096)
MAX_RETRY_SECONDS = 30.0
MAX_TRIES = 40
MAX_VALUE_COMBINATIONS = 4
LADDER = "size ladder"
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class InputChoice:
    """The generated inputs a model accepted after rejecting the defaults, and why they were tried."""

    specs: tuple[InputSpec, ...]
    source: str  # "position embedding pos [1, 197, 64], patch stride 16", "size ladder", ...
    dims: Mapping[str, int] = dataclasses.field(default_factory=dict)
    values: Mapping[str, float | int] = dataclasses.field(default_factory=dict)
    free_dim: int | None = None  # every other free dim's size (the ladder); None: the default

    def describe(self) -> str:
        """``height=224, width=224 (position embedding ...)``, ``free dynamic dims 32 (size ladder)``."""
        parts = []
        if self.dims:
            parts.append(", ".join(f"{name}={size}" for name, size in self.dims.items()))
        if self.free_dim is not None:
            parts.append(f"free dynamic dims {self.free_dim}")
        if self.values:
            parts.append(implied_sizes.describe_values(self.values))
        return f"{'; '.join(parts)} ({self.source})"

    def to_dict(self) -> dict:
        return {
            "dims": dict(self.dims),
            "values": dict(self.values),
            "free_dim": self.free_dim,
            "source": self.source,
        }


def run_accepting_inputs(
    model: ir.Model,
    run: Callable[[list[Feeds]], T],
    feeds: list[Feeds],
    specs: Sequence[InputSpec] | None,
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    what: str = "the FP32 model",
    time_limit: float = MAX_RETRY_SECONDS,
    max_tries: int = MAX_TRIES,
) -> tuple[T, list[Feeds], InputChoice | None]:
    """``run(feeds)``; when ONNX Runtime rejects generated ``feeds``, ``run`` again on the
    candidates of the module docstring. ``specs``: how ``feeds`` were generated, or None for
    the user's own (run once). Returns the result, the feeds it ran on and the choice that made
    them (None: ``feeds`` as given). When nothing runs, raises the one-line
    ``rejected_inputs_error`` for the first rejection, naming the dims tried."""
    from mpcompile.evaluate.ort_session import first_line, is_onnxruntime_error

    try:
        return run(feeds), feeds, None
    except Exception as exc:
        if not is_onnxruntime_error(exc):
            raise
        rejection = first_line(exc)
    if specs is None:
        raise rejected_inputs_error(model, rejection, None, what=what)
    started = time.monotonic()
    tried = {_key(specs)}
    attempts: list[InputChoice] = []
    stopped = ""
    for choice in _candidates(model, shapes):
        if len(attempts) >= max_tries:
            stopped = f"stopped after {max_tries} tries"
            break
        if time.monotonic() - started > time_limit:
            stopped = f"stopped at the {time_limit:g} s limit"
            break
        try:
            candidate = input_specs(
                model, shapes, free_dim=choice.free_dim or DEFAULT_DIM, dims=choice.dims, values=choice.values
            )
        except errors.MpcompileError:  # a size the generator refuses (too large, say)
            continue
        if _key(candidate) in tried:
            continue
        tried.add(_key(candidate))
        choice = dataclasses.replace(choice, specs=tuple(candidate))
        attempts.append(choice)
        batches = [
            cast_feeds(model, generate_from_specs(candidate, seed=seed, batch_index=index))
            for index in range(len(feeds))
        ]
        try:
            return run(batches), batches, choice
        except Exception as exc:
            if not is_onnxruntime_error(exc):
                raise
    hint = sizes_hint(model, shapes, attempts, stopped, time.monotonic() - started)
    raise rejected_inputs_error(model, rejection, specs, what=what, sizes_hint=hint)


def _candidates(model: ir.Model, shapes: Mapping[str, Sequence[int]] | None) -> Iterator[InputChoice]:
    inputs = model_inputs(model)
    free = implied_sizes.free_dims(inputs, given=shapes or {})
    value_sets = _value_sets(model, inputs)
    if value_sets != [{}]:
        for values in value_sets:
            yield InputChoice((), _value_source(model, inputs, values), values=values)
    if free.image or free.unnamed_image:
        for size in implied_sizes.image_sizes(model, inputs):
            dims = {name: size.height if axis == -2 else size.width for name, axis in free.image.items()}
            square = size.height if free.unnamed_image and size.height == size.width else None
            for values in value_sets:
                yield InputChoice((), size.source, dims, values, square)
    if free.other:
        for size in implied_sizes.sequence_sizes(model):
            dims = dict.fromkeys(free.other, size.height)
            for values in value_sets:
                yield InputChoice((), size.source, dims, values)
    for size in FREE_DIM_LADDER:
        for values in value_sets:
            yield InputChoice((), LADDER, values=values, free_dim=size)


def _value_sets(model: ir.Model, inputs: Sequence[ir.Value]) -> list[dict[str, float | int]]:
    """Combinations of the implied scalar values (``[{}]`` when the model implies none)."""
    implied = implied_sizes.scalar_values(model, inputs)
    names = list(implied)
    combinations = itertools.islice(itertools.product(*implied.values()), MAX_VALUE_COMBINATIONS)
    return [{name: value.value for name, value in zip(names, combo, strict=True)} for combo in combinations]


def _value_source(model: ir.Model, inputs: Sequence[ir.Value], values: Mapping[str, float | int]) -> str:
    implied = implied_sizes.scalar_values(model, inputs)
    return "; ".join(
        next(item.source for item in implied[name] if item.value == value) for name, value in values.items()
    )


def _key(specs: Sequence[InputSpec]) -> tuple:
    return tuple((spec.name, spec.shape, spec.kind, spec.value) for spec in specs)


def sizes_hint(
    model: ir.Model,
    shapes: Mapping[str, Sequence[int]] | None,
    attempts: Sequence[InputChoice],
    stopped: str,
    seconds: float,
) -> str:
    """What was tried and the ``--shape`` options to give, for the one-line error ('' when the
    model has no dynamic dim or scalar input to choose)."""
    inputs = model_inputs(model)
    free = implied_sizes.free_dims(inputs, given=shapes or {})
    scalars = implied_sizes.scalar_values(model, inputs)
    names = [*free.image, *free.other]
    if not names and not scalars and not attempts:
        return ""
    tried = sorted(
        {size for choice in attempts for size in (*choice.dims.values(), choice.free_dim or 0) if size}
    )
    listed = ", ".join(str(size) for size in [DEFAULT_DIM, *(s for s in tried if s != DEFAULT_DIM)])
    what = f"the dynamic dims {', '.join(names)}" if names else "the dynamic dims"
    text = f"tried {len(attempts) + 1} input sets in {seconds:.1f} s for {what} (sizes {listed})"
    if scalars:
        text += f" and {', '.join(scalars)} ({implied_sizes.describe_values(_first_values(scalars))}, ...)"
    if stopped:
        text += f", {stopped}"
    guesses = _best_guesses(model, inputs, free)
    if guesses:
        text += "; give the size with " + " ".join(f"--shape {name}:{size}" for name, size in guesses.items())
    return text


def _first_values(scalars: Mapping[str, Sequence[implied_sizes.ImpliedValue]]) -> dict[str, float | int]:
    return {name: values[0].value for name, values in scalars.items()}


def _best_guesses(
    model: ir.Model, inputs: Sequence[ir.Value], free: implied_sizes.FreeDims
) -> dict[str, str]:
    """``{dim: size}`` to suggest: the first size the model implies (224 for images when it
    implies none), ``N`` where it implies nothing."""
    guesses: dict[str, str] = {}
    if free.image:
        first = implied_sizes.image_sizes(model, inputs)[0]
        guesses.update(
            (name, str(first.height if axis == -2 else first.width)) for name, axis in free.image.items()
        )
    if free.other:
        sizes = implied_sizes.sequence_sizes(model)
        guesses.update(dict.fromkeys(free.other, str(sizes[0].height) if sizes else "N"))
    return guesses
