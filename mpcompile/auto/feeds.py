"""Inputs for the search: the user's (.npz file, folder of them, or arrays) or generated ones."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from mpcompile.evaluate import inputs as inputs_module
from mpcompile.evaluate import memory_limit
from mpcompile.evaluate.inputs import InputSpec
from mpcompile.evaluate.run_memory import run_bytes

Feeds = dict[str, np.ndarray]
GENERATED = "generated"
InputsLike = str | os.PathLike | Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]] | None


def resolve_feeds(
    model: ir.Model,
    inputs: InputsLike,
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> tuple[list[Feeds], str, list[InputSpec] | None]:
    """Batches of checked feeds in the model's dtypes, a label saying where they came from, and
    how they were generated (None for the user's own).

    ``inputs``: None or ``"generated"`` (seeded, from the signature: ``mpcompile.evaluate.inputs``), a
    path to an ``.npz`` file or a folder of them, one feed dict, or a list of feed dicts.
    """
    if inputs is not None and not (isinstance(inputs, str) and inputs == GENERATED):
        feeds, label = inputs_module.given_inputs(model, inputs, given_label="given arrays")
        _check_reference_run(model, {name: np.shape(array) for name, array in feeds[0].items()}, len(feeds))
        return feeds, label, None
    specs = inputs_module.input_specs(model, shapes)
    _check_reference_run(model, {spec.name: spec.shape for spec in specs}, 1)  # before generating
    batch = inputs_module.generate_from_specs(specs, seed=seed)
    return (
        [inputs_module.cast_feeds(model, batch)],
        inputs_module.generated_label(seed),
        specs,
    )


def _check_reference_run(model: ir.Model, shapes: Mapping[str, Sequence[int]], batches: int) -> None:
    """The reference run keeps every intermediate of every batch: refused above the memory limit."""
    if memory_limit.memory_limit() is None:
        return
    needed = run_bytes(model, shapes) * batches
    memory_limit.check_fits(needed, "the FP32 reference run (every intermediate kept)")
