"""A realistic corpus of exporter-produced ONNX models, built on CPU from small seeded configs.

Hugging Face ``transformers`` architectures and torchvision CNNs, exported with dynamic axes by
``torch.onnx.export`` (TorchScript and dynamo) and by optimum, KV-cache decoders included, each
with realistic inputs at two sizes. ``load_manifest`` reads a built corpus (numpy only; importing
this package imports neither torch nor transformers); ``load_folders`` its whole optimum export folders;
``build`` builds the missing entries in worker processes (needs the ``[corpus]`` extra: ``bash tools/corpus_env.sh``). See docs/corpus.md.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from models.corpus.manifest import (
    DEFAULT_OUT,
    Entry,
    FolderEntry,
    corpus_folder,
    generative_corpus_folders,
    load_feeds,
    load_folders,
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
    """Build the missing or stale graph entries and export folders into ``out`` (default
    ``corpus_folder()``); see ``builder.build`` and ``folders.build_folders``. Returns the graph entries."""
    from models.corpus import builder
    from models.corpus.folders import build_folders, split_only

    graph_names, folder_names = split_only(only)
    entries: list[Entry] = []
    if graph_names is None or graph_names:
        entries = builder.build(out, only=graph_names, jobs=jobs, force=force, log=log)
    if folder_names is None or folder_names:
        build_folders(out, only=folder_names, jobs=jobs, force=force, log=log)
    return entries


__all__ = [
    "DEFAULT_OUT",
    "Entry",
    "FolderEntry",
    "build",
    "corpus_folder",
    "generative_corpus_folders",
    "load_feeds",
    "load_folders",
    "load_manifest",
    "manifest_path",
    "save_feeds",
]
