"""Folder mode: convert every model of an export folder with the same options (``convert_folder``).

Each ``.onnx`` file keeps its name and its external-data layout (one data file per model that
had one, named as the input's where it can be), every other file is copied byte for byte, and
the output folder appears complete or not at all (``io.export_folder.staged_folder``).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Collection, Mapping
from typing import Any

from mpcompile import errors
from mpcompile.compiler.options import ConvertOptions
from mpcompile.core.io_links import linked_io_names
from mpcompile.io.export_folder import (
    ExportFolder,
    FolderModel,
    copy_files,
    refuse_output_in_input,
    scan_folder,
    staged_folder,
)

CONVERTED, FAILED, SKIPPED = "converted", "failed", "skipped"

# (input model, output model, options for convert_file) -> a ConvertResult, or an object with
# ``convert_result`` and ``summary()`` (``--auto``'s AutoResult)
ConvertOne = Callable[[pathlib.Path, pathlib.Path, Mapping[str, Any]], Any]


@dataclasses.dataclass
class FileOutcome:
    """What became of one model of the folder."""

    file: str  # relative POSIX path, the same in input and output folder
    status: str  # converted | failed | skipped (not tried after an earlier failure)
    result: Any = None  # the ConvertResult (or AutoResult) when converted
    error: errors.MpcompileError | None = None
    bytes_before: int = 0  # model file and its external data
    bytes_after: int = 0

    @property
    def convert_result(self) -> Any:
        return getattr(self.result, "convert_result", self.result)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the file, its status, sizes, and the conversion summary or the error."""
        row: dict[str, Any] = {
            "file": self.file,
            "status": self.status,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
        }
        if self.result is not None:
            row.update(self.result.summary())
        if self.error is not None:
            row["error"] = {"message": self.error.message, "exit_code": int(self.error.exit_code)}
        return row


@dataclasses.dataclass
class FolderResult:
    """The outcome of ``convert_folder``: one ``FileOutcome`` per model and the files copied.
    Truthy when every model converted (then, and only then, ``output`` exists)."""

    source: pathlib.Path
    output: pathlib.Path
    files: list[FileOutcome]
    copied: list[str]

    @property
    def converted(self) -> bool:
        return all(outcome.status == CONVERTED for outcome in self.files)

    def __bool__(self) -> bool:
        return self.converted

    def first_failure(self) -> FileOutcome | None:
        return next((outcome for outcome in self.files if outcome.status == FAILED), None)

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (what ``mpcompile convert FOLDER --json`` prints)."""
        return {
            "input": str(self.source),
            "output": str(self.output),
            "converted": self.converted,
            "files": [outcome.summary() for outcome in self.files],
            "copied": list(self.copied),
        }


def convert_folder(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    *,
    overwrite: bool = False,
    external_data: bool | None = None,
    raise_on_error: bool = True,
    on_file_start: Callable[[str], None] | None = None,
    on_pass_start: Callable[[str], None] | None = None,
    convert_one: ConvertOne | None = None,
    options: ConvertOptions | None = None,
    **kwargs: Any,
) -> FolderResult:
    """Convert every ``.onnx`` file under ``source`` into the new folder ``destination``.

    ``options`` (a ``ConvertOptions``) and ``kwargs`` are ``convert_file``'s; a list of
    ``keep_io_types`` names also keeps FP32 their counterparts in the other files
    (``core.io_links``), and each file gets the names it has. ``overwrite`` replaces an existing
    non-empty ``destination``. Conversion stops at the first file that fails; then nothing is
    written and, with ``raise_on_error``, that file's error is raised (its message naming the
    file), else the result says which file failed and why.
    """
    from mpcompile.compiler.converter import convert_file

    # Built and resolved once (policy file read and checked): bad options fail before anything is
    # read or written, and every file converts with the same options.
    opts = ConvertOptions.build(options, **kwargs).resolved()
    root, target = pathlib.Path(source).absolute(), pathlib.Path(destination).absolute()
    folder = scan_folder(root)
    refuse_output_in_input(folder.root, target)
    keep_io = keep_io_per_file(opts.keep_io_types, folder)
    data_names = external_data_names(folder, external_data)
    convert = convert_one or (
        lambda src, dst, file_options: convert_file(src, dst, on_pass_start=on_pass_start, **file_options)
    )
    outcomes = [
        FileOutcome(model.relative, SKIPPED, bytes_before=_bytes_before(model)) for model in folder.models
    ]
    result = FolderResult(root, target, outcomes, list(folder.copied))
    try:
        with staged_folder(target, overwrite=overwrite) as temp:
            _convert_models(folder, temp, outcomes, convert, opts, keep_io, data_names, on_file_start)
            copy_files(folder, temp)
    except _FileFailed as failed:
        if raise_on_error:
            raise failed.error from None
    return result


class _FileFailed(Exception):
    """A model failed: leaves the staged folder (removing it) with the error to report."""

    def __init__(self, error: errors.MpcompileError):
        super().__init__(error.message)
        self.error = error


def _convert_models(
    folder: ExportFolder,
    temp: pathlib.Path,
    outcomes: list[FileOutcome],
    convert: ConvertOne,
    options: ConvertOptions,
    keep_io: Mapping[str, bool | tuple[str, ...] | None],
    data_names: Mapping[str, bool | str | None],
    on_file_start: Callable[[str], None] | None,
) -> None:
    """Convert each model into ``temp``, in order; raises ``_FileFailed`` at the first failure."""
    for model, outcome in zip(folder.models, outcomes, strict=True):
        if on_file_start is not None:
            on_file_start(model.relative)
        output = temp / model.relative
        output.parent.mkdir(parents=True, exist_ok=True)
        dump_dir = options.dump_dir
        if dump_dir is not None:
            dump_dir = pathlib.Path(dump_dir) / model.relative.removesuffix(".onnx")
        file_options = {
            "options": dataclasses.replace(options, keep_io_types=keep_io[model.relative], dump_dir=dump_dir),
            "external_data": data_names[model.relative],
        }
        try:
            if model.error is not None:
                raise model.error
            outcome.result = convert(model.path, output, file_options)
        except errors.MpcompileError as exc:
            outcome.status, outcome.error = FAILED, type(exc)(_naming_file(exc, model.relative, folder.root))
            raise _FileFailed(outcome.error) from None
        outcome.status = CONVERTED
        outcome.bytes_after = _bytes_written(output)


def keep_io_per_file(
    keep_io_types: bool | Collection[str] | None, folder: ExportFolder
) -> dict[str, bool | tuple[str, ...] | None]:
    """``keep_io_types`` for each model of ``folder``: a bool as given; a list of names grows
    their counterparts across files (``linked_io_names``) and each file gets those it has.
    A name no model has is refused (``UsageError``); None (not given) stays None."""
    if keep_io_types is None or isinstance(keep_io_types, bool):
        return {model.relative: keep_io_types for model in folder.models}
    given = [keep_io_types] if isinstance(keep_io_types, str) else list(keep_io_types)
    known = {
        name for model in folder.models if model.facts for name in (*model.facts.inputs, *model.facts.outputs)
    }
    unknown = sorted(set(given) - known)
    if unknown:
        raise errors.UsageError(
            f"keep_io_types: {', '.join(unknown)}: no graph input or output of that name in any model of {folder.root}"
        )
    kept = linked_io_names(given)
    per_file: dict[str, bool | tuple[str, ...] | None] = {}
    for model in folder.models:
        names = (*model.facts.inputs, *model.facts.outputs) if model.facts else ()
        per_file[model.relative] = tuple(name for name in dict.fromkeys(names) if name in kept)
    return per_file


def external_data_names(folder: ExportFolder, external_data: bool | None) -> dict[str, bool | str | None]:
    """The ``external_data`` argument saving each model gets: a model read from one data file
    beside it keeps that file's name (optimum's ``model.onnx_data``), unless another model or a
    copied file has it; ``external_data=False`` embeds every weight."""
    taken = {*folder.copied, *(model.relative for model in folder.models)}
    names: dict[str, bool | str | None] = {}
    for model in folder.models:
        names[model.relative] = external_data
        if external_data is False or model.facts is None:
            continue
        locations = model.facts.data_locations
        parent = pathlib.PurePosixPath(model.relative).parent
        if len(locations) == 1 and pathlib.PurePosixPath(locations[0]).name == locations[0]:
            wanted = (parent / locations[0]).as_posix()
            if wanted not in taken:
                taken.add(wanted)
                names[model.relative] = locations[0]
                continue
        if locations or external_data:
            default = (parent / (pathlib.PurePosixPath(model.relative).name + ".data")).as_posix()
            if default in taken:
                raise errors.OutputNotWritableError(
                    f"{folder.root / model.relative}: its external data file {default} would replace another file of the folder"
                )
            taken.add(default)
            names[model.relative] = pathlib.PurePosixPath(default).name  # staged fresh: the name is kept
    return names


def _bytes_before(model: FolderModel) -> int:
    try:
        return model.input_bytes()
    except OSError:
        return 0


def _bytes_written(output: pathlib.Path) -> int:
    """Bytes of the saved model and the data files it names."""
    from mpcompile.io import model_io

    return sum(path.stat().st_size for path in model_io.files_read(output))


def _naming_file(error: errors.MpcompileError, relative: str, root: pathlib.Path) -> str:
    """The error's message, starting with the file it is about unless it names it already."""
    if str(root / relative) in error.message:
        return error.message
    return f"{relative}: {error.message}"
