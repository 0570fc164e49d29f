"""Model folders (optimum's export layout): which files are models, which are copied, and how an
output folder appears complete or not at all.

An export folder holds ``.onnx`` models (``model.onnx``, or ``encoder_model.onnx`` +
``decoder_model.onnx`` + ``decoder_with_past_model.onnx`` / ``decoder_model_merged.onnx``), their
external data (``model.onnx_data``) and other files (``config.json``, tokenizer files), subfolders
included. Symbolic links are refused unless they name a regular file inside the folder (then the
file is read through them): nothing outside the folder is read or copied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

from mpcompile import errors
from mpcompile.io import model_io

MODEL_SUFFIX = ".onnx"


@dataclasses.dataclass(frozen=True)
class FolderModel:
    """One ``.onnx`` file of a folder, with what it reads (or why it cannot be read)."""

    relative: str  # POSIX path inside the folder: "encoder_model.onnx", "onnx/model.onnx"
    path: pathlib.Path  # absolute
    facts: model_io.ModelFileFacts | None  # None when ``error`` says why
    error: errors.MpcompileError | None = None

    @property
    def data_files(self) -> tuple[pathlib.Path, ...]:
        return self.facts.files[1:] if self.facts is not None else ()

    def input_bytes(self) -> int:
        """Bytes of the model file and its external data."""
        files = self.facts.files if self.facts is not None else (self.path,)
        return sum(file.stat().st_size for file in files)


@dataclasses.dataclass(frozen=True)
class ExportFolder:
    """The models of a folder and every other file, as paths relative to ``root``."""

    root: pathlib.Path  # absolute, resolved
    models: tuple[FolderModel, ...]
    copied: tuple[str, ...]  # every file that is neither a model nor a model's external data
    folders: tuple[str, ...]  # every subfolder, empty ones included


def model_paths(root: str | os.PathLike) -> dict[str, pathlib.Path]:
    """The ``.onnx`` files under the folder ``root`` by relative POSIX path, sorted; refuses a
    path that is not a folder and symbolic links that leave it (see the module docstring)."""
    base = _folder(root)
    files, _ = _walk(base)
    return {relative: base / relative for relative in files if _is_model(relative)}


def scan_folder(root: str | os.PathLike) -> ExportFolder:
    """Read a folder's layout: its models (each with its external data, checked as ``load_model``
    checks it; a model that cannot be read carries its error) and the files to copy.
    Refuses a folder without any ``.onnx`` file (``NotOnnxError``)."""
    base = _folder(root)
    files, folders = _walk(base)
    models = []
    for relative in files:
        if not _is_model(relative):
            continue
        path = base / relative
        try:
            models.append(FolderModel(relative, path, model_io.inspect_model_file(path)))
        except errors.MpcompileError as exc:
            models.append(FolderModel(relative, path, None, exc))
    if not models:
        raise errors.NotOnnxError(f"{base}: no .onnx file in this folder (or its subfolders)")
    read = {file for model in models for file in model.data_files}
    copied = tuple(
        relative for relative in files if not _is_model(relative) and (base / relative).resolve() not in read
    )
    return ExportFolder(base, tuple(models), copied, tuple(folders))


def copy_files(folder: ExportFolder, destination: pathlib.Path) -> None:
    """Copy the folder's subfolders and other files into ``destination``, byte for byte."""
    for relative in folder.folders:
        (destination / relative).mkdir(parents=True, exist_ok=True)
    for relative in folder.copied:
        shutil.copyfile(folder.root / relative, destination / relative)
        shutil.copymode(folder.root / relative, destination / relative)


def refuse_output_in_input(source: pathlib.Path, destination: pathlib.Path) -> None:
    """Refuse an output folder that is the input folder, lies inside it, or holds it."""
    source, target = source.resolve(), destination.resolve()
    if target == source or target.is_relative_to(source):
        raise errors.OutputIsInputError(
            f"{destination}: the output folder is (inside) the input folder {source}; choose a folder outside it"
        )
    if source.is_relative_to(target):
        raise errors.OutputIsInputError(
            f"{destination}: the output folder holds the input folder {source}; choose another folder"
        )


@contextlib.contextmanager
def staged_folder(destination: str | os.PathLike, *, overwrite: bool = False) -> Iterator[pathlib.Path]:
    """A new temporary folder ``.NAME.<random>.tmp`` beside ``destination`` to write into; when the
    block ends without an exception it is moved to ``destination`` (an existing folder there,
    allowed only with ``overwrite`` unless it is empty, is renamed aside, replaced, then removed).
    On any exception (KeyboardInterrupt included) the temporary folder is removed and an existing
    ``destination`` is left as it was."""
    target = pathlib.Path(destination).absolute()
    _check_destination(target, overwrite=overwrite)
    try:
        temp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise errors.OutputNotWritableError(f"{target.parent}: not writable ({exc.strerror})") from None
    try:
        yield temp
        _set_default_folder_mode(temp)
        _move_into_place(temp, target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _check_destination(target: pathlib.Path, *, overwrite: bool) -> None:
    if not target.parent.is_dir():
        raise errors.OutputNotWritableError(f"{target.parent}: output folder's parent does not exist")
    if not os.access(target.parent, os.W_OK):
        raise errors.OutputNotWritableError(f"{target.parent}: not writable")
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise errors.OutputNotWritableError(f"{target}: exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise errors.OutputNotWritableError(f"{target}: output folder exists; pass --overwrite to replace it")


def _move_into_place(temp: pathlib.Path, target: pathlib.Path) -> None:
    if not target.is_dir() or not any(target.iterdir()):
        os.replace(temp, target)  # a rename over an empty folder is allowed
        return
    aside = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    try:
        os.replace(target, aside / target.name)
        try:
            os.replace(temp, target)
        except BaseException:
            os.replace(aside / target.name, target)
            raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _set_default_folder_mode(path: pathlib.Path) -> None:
    """``mkdtemp`` makes a 0700 folder; give it the mode ``mkdir`` would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)


def _folder(root: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(root).absolute()
    if not path.exists():
        raise errors.InputNotFoundError(f"{path}: no such folder")
    if not path.is_dir():
        raise errors.InputNotFoundError(f"{path}: not a folder")
    return path.resolve()


def _is_model(relative: str) -> bool:
    return relative.lower().endswith(MODEL_SUFFIX)


def _walk(base: pathlib.Path) -> tuple[list[str], list[str]]:
    """Every file and subfolder under ``base`` (relative POSIX paths, sorted); refuses symbolic
    links to folders, and links to anything but a regular file inside ``base``."""
    files, folders = [], []
    for current, dirnames, filenames in os.walk(base, followlinks=False):
        here = pathlib.Path(current)
        for name in dirnames:
            if (here / name).is_symlink():
                raise errors.ExternalDataError(
                    f"{here / name}: a symbolic link to a folder; refused (copy the folder with `cp -rL` first)"
                )
            folders.append((here / name).relative_to(base).as_posix())
        for name in filenames:
            path = here / name
            if path.is_symlink():
                _check_link(path, base)
            elif not path.is_file():
                raise errors.ExternalDataError(f"{path}: not a regular file; refused")
            files.append(path.relative_to(base).as_posix())
    return sorted(files), sorted(folders)


def _check_link(path: pathlib.Path, base: pathlib.Path) -> None:
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise errors.ExternalDataError(f"{path}: a broken symbolic link; refused") from None
    if not target.is_relative_to(base):
        raise errors.ExternalDataError(
            f"{path}: a symbolic link to {target}, outside the folder; refused "
            "(copy the folder with `cp -rL` first)"
        )
    if not target.is_file():
        raise errors.ExternalDataError(f"{path}: a symbolic link to something not a regular file; refused")
