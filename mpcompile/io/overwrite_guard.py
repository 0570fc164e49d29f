"""The one guard against data loss: nothing a command writes may be a file it reads.

Files are compared with ``os.path.samefile``, so a hardlink or a symlink to an input counts as the
input. The files written are the output model, the data files a save there may replace or remove
(``output_commit.replaceable_files``) and any report or results file (temporary files are always
new: ``tempfile`` creates them). ``--overwrite`` lets a conversion replace its input model and that model's own weights files, and only after the weights
were read into memory (``refuse_overwriting_inputs`` returns True when the caller must do that).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Collection, Iterable, Mapping

from mpcompile import errors

INPUT_MODEL = "the input model"
INPUT_WEIGHTS = "the input's external-data file"
OUTPUT_MODEL = "the output"
OUTPUT_WEIGHTS = "the output's external-data file"
REPORT = "the report"
RESULTS = "the results file"

Files = Mapping[pathlib.Path, str]  # path -> its role, as the message names it


def model_files(paths: Iterable[pathlib.Path]) -> dict[pathlib.Path, str]:
    """The roles of the files a model was read from: the model file first, then its weights."""
    files: dict[pathlib.Path, str] = {}
    for index, path in enumerate(paths):
        files.setdefault(path, INPUT_MODEL if index == 0 else INPUT_WEIGHTS)
    return files


def output_files(path: str | os.PathLike, *, data_name: str | None = None) -> dict[pathlib.Path, str]:
    """The files saving a model at ``path`` may write, replace or remove: the model, the data
    file named ``data_name`` if one is asked for, and the data files of that output
    (``output_commit.replaceable_files``; a new content-named data file's name is only known
    once written, and it only ever replaces a file of that name, content included)."""
    from mpcompile.io import output_commit

    path = pathlib.Path(path).absolute()
    files = {path: OUTPUT_MODEL}
    for data in output_commit.replaceable_files(path):
        files[data] = OUTPUT_WEIGHTS
    if data_name is not None:
        files[path.with_name(data_name)] = OUTPUT_WEIGHTS
    return files


def refuse_overwriting_inputs(
    read: Files, written: Files, *, may_replace: Collection[pathlib.Path] = ()
) -> bool:
    """Raise ``OutputIsInputError`` (naming both paths) when a file in ``written`` is a file in
    ``read``, unless that read file is in ``may_replace``; returns whether one of those will be
    replaced, so that the caller reads what it needs from it first."""
    replaced = False
    for target, target_role in written.items():
        for source, source_role in read.items():
            if not same_file(target, source):
                continue
            if source in may_replace:
                replaced = True
                continue
            if (target_role, source_role) == (OUTPUT_MODEL, INPUT_MODEL):
                raise errors.OutputIsInputError(
                    f"{target}: output path is the input ({source}); pass --overwrite to replace it"
                )
            raise errors.OutputIsInputError(
                f"{target_role} {target} is {source_role} {source} (the same file); choose another path"
            )
    return replaced


def refuse_writing_over(
    path: str | os.PathLike, role: str, models: Iterable[str | os.PathLike], others: Files | None = None
) -> None:
    """Refuse writing ``path`` (a report, a results file) over a file of ``models`` (each model
    file and its weights) or over one of ``others``."""
    from mpcompile.io import model_io

    protected = dict(others or {})
    for model in models:
        protected.update(model_files(model_io.files_read(model)))
    refuse_overwriting_inputs(protected, {pathlib.Path(path).absolute(): role})


def same_file(first: pathlib.Path, second: pathlib.Path) -> bool:
    """Whether both paths exist and are one file (through hardlinks and symlinks too)."""
    try:
        return os.path.samefile(first, second)
    except (OSError, ValueError):  # missing, unreadable or an impossible name: not the same file
        return False
