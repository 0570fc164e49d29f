"""Attention masks without ``torch.vmap``, for the TorchScript exporter.

transformers 4.57 builds its 4-D attention masks by vmapping a per-element mask function
(``masking_utils.sdpa_mask_recent_torch``); the TorchScript tracer cannot trace vmap (it fails
with ``RuntimeError: unordered_map::at``). The mask functions themselves are plain comparisons
and indexing, so calling them once on broadcast index grids gives the same mask. ``vmap_free_masks``
registers that evaluation for the "sdpa" and "eager" implementations through transformers' public
``ALL_MASK_ATTENTION_FUNCTIONS`` and restores the originals afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def broadcast_mask(
    batch_size: int,
    cache_position: Any,
    kv_length: int,
    kv_offset: int = 0,
    mask_function: Callable[..., Any] | None = None,
    attention_mask: Any = None,
    **_: Any,
) -> Any:
    """Boolean mask ``(batch, 1, query, kv)``: True where a query position may attend a key position."""
    import torch
    from transformers import masking_utils

    mask_function = mask_function or masking_utils.causal_mask_function
    device = cache_position.device
    kv_index = torch.arange(kv_length, device=device) + kv_offset
    if attention_mask is not None:
        padding = masking_utils.prepare_padding_mask(attention_mask, kv_length, kv_offset, _slice=False)
        mask_function = masking_utils.and_masks(mask_function, masking_utils.padding_mask_function(padding))
    batch_index = torch.arange(batch_size, device=device).view(-1, 1, 1, 1)
    head_index = torch.zeros(1, dtype=torch.long, device=device).view(1, -1, 1, 1)
    query_index = cache_position.view(1, 1, -1, 1)
    mask = mask_function(batch_index, head_index, query_index, kv_index.view(1, 1, 1, -1))
    return mask.expand(batch_size, 1, cache_position.shape[0], kv_length)


def broadcast_float_mask(*args: Any, dtype: Any = None, **kwargs: Any) -> Any:
    """The eager implementation's additive mask: 0 where attended, the dtype's minimum elsewhere."""
    import torch

    dtype = dtype or torch.float32
    kwargs.pop("allow_is_causal_skip", None)
    allowed = broadcast_mask(*args, **kwargs)
    zero = torch.tensor(0.0, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


@contextmanager
def vmap_free_masks() -> Iterator[None]:
    """Within the block, transformers builds "sdpa" and "eager" masks without vmap."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    saved = {name: ALL_MASK_ATTENTION_FUNCTIONS[name] for name in ("sdpa", "eager")}
    ALL_MASK_ATTENTION_FUNCTIONS.register("sdpa", broadcast_mask)
    ALL_MASK_ATTENTION_FUNCTIONS.register("eager", broadcast_float_mask)
    try:
        yield
    finally:
        for name, function in saved.items():
            ALL_MASK_ATTENTION_FUNCTIONS.register(name, function)
