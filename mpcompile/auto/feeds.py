"""Inputs for the search: the user's (.npz file, folder of them, or arrays) or generated ones."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

Feeds = dict[str, np.ndarray]
GENERATED = "generated"
InputsLike = str | os.PathLike | Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]] | None


def resolve_feeds(
    model: ir.Model,
    inputs: InputsLike,
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> tuple[list[Feeds], str]:
    """Batches of checked feeds in the model's dtypes, and a label saying where they came from.

    ``inputs``: None or ``"generated"`` (seeded, from the signature: ``mpcompile.inputs``), a
    path to an ``.npz`` file or a folder of them, one feed dict, or a list of feed dicts.
    """
    from mpcompile import inputs as inputs_module

    if inputs is not None and not (isinstance(inputs, str) and inputs == GENERATED):
        return inputs_module.given_inputs(model, inputs, given_label="given arrays")
    batches = inputs_module.generate_inputs(model, shapes=shapes, seed=seed)
    return [
        inputs_module.cast_feeds(model, batch) for batch in batches
    ], f"generated (mpcompile.inputs, seed {seed})"
