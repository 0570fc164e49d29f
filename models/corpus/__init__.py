"""A realistic corpus of exporter-produced ONNX models, built on CPU from small seeded configs.

Hugging Face ``transformers`` architectures and torchvision CNNs, exported with dynamic axes by
``torch.onnx.export`` (TorchScript and dynamo) and by optimum, KV-cache decoders included, each
with realistic inputs at two sizes. ``load_manifest`` reads a built corpus (numpy only; importing
this package imports neither torch nor transformers); ``build`` builds the missing entries in
worker processes (needs the ``[corpus]`` extra: ``bash tools/corpus_env.sh``). See docs/corpus.md.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from models.corpus.manifest import (
    DEFAULT_OUT,
    Entry,
    corpus_folder,
    load_feeds,
    load_manifest,
    manifest_path,
    save_feeds,
)

if TYPE_CHECKING:
    from collections.abc import Callable


def build(
    out: str | os.PathLike | None = None,
    only: list[str] | None = None,
    jobs: int = 1,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> list[Entry]:
    """Build the missing or stale entries into ``out`` (default ``corpus_folder()``); see ``builder.build``."""
    from models.corpus import builder

    return builder.build(out, only=only, jobs=jobs, force=force, log=log)


__all__ = [
    "DEFAULT_OUT",
    "Entry",
    "build",
    "corpus_folder",
    "load_feeds",
    "load_manifest",
    "manifest_path",
    "save_feeds",
]
