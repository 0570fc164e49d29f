"""Committing a saved model in place by one rename: at every instant the output is the complete
old model (with its data file) or the complete new one.

The external data is written under a name unique to its content (``OUT.onnx.<12 hex>.data``,
the first 12 hex digits of its SHA-256, so a conversion stays deterministic), moved into place,
then the model that names it is renamed over ``OUT.onnx``: that rename is the commit. Only then
is the data file the old model named removed. Commits to one folder are serialised by an
exclusive ``flock`` on the folder itself (no lock file is left), and SIGINT/SIGTERM/SIGHUP are
held during the commit and delivered after it. A SIGKILL can only leave a data file no model
names, or a temporary folder; the next save to that output removes both.

Test hook: ``MPCOMPILE_TEST_COMMIT_PAUSE=<point>:<file>[:<seconds>]`` makes the save create
``<file>`` and sleep (``PAUSE_SECONDS`` unless given) at ``<point>``, one of ``PAUSE_POINTS``, so a
test can kill it there (``tests/test_atomic_save.py``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pathlib
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator

import onnx

from mpcompile import errors
from mpcompile.io.mapped_load import load_mapped
from mpcompile.io.proto_tensors import all_tensor_protos

try:
    import fcntl
except ImportError:  # not POSIX: commits are not serialised
    fcntl = None  # type: ignore[assignment]

DIGEST_HEX_CHARS = 12
LEGACY_DATA_SUFFIX = ".data"  # OUT.onnx.data: the name versions before content naming wrote
# A temporary folder whose owner is alive is only removed after this long.
STALE_TEMP_SECONDS = 24 * 3600
HELD_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
PAUSE_ENV = "MPCOMPILE_TEST_COMMIT_PAUSE"
# before-commit: checked and ready, nothing moved; before-model: the data file is in place;
# after-model: the new model is in place, the old data file not yet removed.
PAUSE_POINTS = ("before-commit", "before-model", "after-model")
PAUSE_SECONDS = 4.0
_MARK = "mpcompile"


def content_name(output: pathlib.Path, data_file: pathlib.Path) -> str:
    """The content name of ``data_file`` as the external data of ``output``: ``OUT.onnx.<hex>.data``."""
    digest = hashlib.sha256()
    with open(data_file, "rb") as handle:
        while block := handle.read(2**22):
            digest.update(block)
    return f"{output.name}.{digest.hexdigest()[:DIGEST_HEX_CHARS]}.data"


def _owned_data(output: pathlib.Path) -> re.Pattern[str]:
    """Data file names that belong to ``output``: the content names and the legacy ``OUT.onnx.data``."""
    return re.compile(re.escape(output.name) + rf"(\.[0-9a-f]{{{DIGEST_HEX_CHARS}}})?\.data")


def replaceable_files(output: pathlib.Path) -> list[pathlib.Path]:
    """Data files a save at ``output`` may remove or replace: the legacy ``OUT.onnx.data`` (removed
    when the old model names it) and every content-named data file of ``output`` in its folder."""
    output = output.absolute()
    return [output.with_name(output.name + LEGACY_DATA_SUFFIX), *_content_named_files(output)]


def _content_named_files(output: pathlib.Path) -> list[pathlib.Path]:
    pattern = _owned_data(output)
    legacy = output.name + LEGACY_DATA_SUFFIX
    with contextlib.suppress(OSError), os.scandir(output.parent) as entries:
        return sorted(
            output.parent / entry.name
            for entry in entries
            if entry.name != legacy and pattern.fullmatch(entry.name)
        )
    return []


def name_by_content(folder: pathlib.Path, output: pathlib.Path, scratch_name: str) -> str:
    """Rename the data file ``scratch_name`` of the model ``folder/output.name`` to its content
    name (``content_name``) and point the model at it; returns the name."""
    final = content_name(output, folder / scratch_name)
    model_file = folder / output.name
    proto = onnx.load(str(model_file), load_external_data=False)
    for tensor, _ in all_tensor_protos(proto):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == scratch_name:
                entry.value = final
    model_file.write_bytes(proto.SerializeToString())
    os.replace(folder / scratch_name, folder / final)
    return final


def make_temp_folder(output: pathlib.Path) -> pathlib.Path:
    """A new private folder beside ``output``, named for this process (see ``remove_stale_temp_folders``)."""
    prefix = f".{output.name}.{_MARK}-{os.getpid()}-"
    return pathlib.Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=output.parent))


def remove_stale_temp_folders(output: pathlib.Path) -> list[pathlib.Path]:
    """Remove the temporary folders earlier saves to ``output`` left (killed by SIGKILL, say):
    those whose owner process is gone, or older than ``STALE_TEMP_SECONDS``. Returns them."""
    name = re.escape(output.name)
    pattern = re.compile(rf"\.{name}\.{_MARK}-([0-9]{{1,10}})-[A-Za-z0-9_]+\.tmp")
    # Earlier versions named them without the owner; only their age tells they are stale.
    unowned = re.compile(rf"\.{name}\.[a-z0-9_]{{8}}\.tmp")
    removed = []
    with contextlib.suppress(OSError), os.scandir(output.parent) as entries:
        for entry in entries:
            match = pattern.fullmatch(entry.name)
            if (match is None and not unowned.fullmatch(entry.name)) or not entry.is_dir(
                follow_symlinks=False
            ):
                continue
            with contextlib.suppress(OSError):
                age = time.time() - entry.stat(follow_symlinks=False).st_mtime
                if age > STALE_TEMP_SECONDS or (match is not None and not _alive(int(match.group(1)))):
                    shutil.rmtree(entry.path)
                    removed.append(pathlib.Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process: alive
    return True


def commit(folder: pathlib.Path, output: pathlib.Path, data_name: str | None, *, fresh: bool = False) -> None:
    """Move ``folder``'s model (named as ``output``) and its data file ``data_name`` (if any)
    into place, the model last, remove the data files of ``output`` the new model does not name,
    then ``folder``. ``fresh``: refuse when ``output`` or the data file exists by now.
    Serialised per folder; SIGINT/SIGTERM/SIGHUP are delivered after it, not during it."""
    with locked_folder(output.parent), signals_held():
        if fresh and (output.exists() or (data_name is not None and output.with_name(data_name).exists())):
            raise errors.OutputNotWritableError(f"{output}: another process wrote it while this one saved")
        previous = _named_data_files(output)
        placed = None
        try:
            if data_name is not None:
                placed = output.with_name(data_name)
                os.replace(folder / data_name, placed)
            pause("before-model")
            os.replace(folder / output.name, output)
        except BaseException:
            if placed is not None and data_name not in previous:
                placed.unlink(missing_ok=True)
            raise
        pause("after-model")
        for name in sorted((previous | {p.name for p in _content_named_files(output)}) - {data_name}):
            _remove_file(output.with_name(name))
        shutil.rmtree(folder, ignore_errors=True)


def _named_data_files(output: pathlib.Path) -> set[str]:
    """Names of ``output``'s own data files (see ``_owned_data``) that the model now at ``output``
    names; none when there is no model there or it cannot be read, or when no data file of
    ``output``'s exists beside it (then the model is not parsed: seconds on many-node graphs)."""
    pattern = _owned_data(output)
    with contextlib.suppress(OSError), os.scandir(output.parent) as entries:
        if not any(pattern.fullmatch(entry.name) for entry in entries):
            return set()
    try:
        if os.path.getsize(output) >= 2**26:
            proto = load_mapped(output)  # its embedded weights mapped, not parsed
        else:
            proto = onnx.load(str(output), load_external_data=False)
    except Exception:  # a missing or foreign file names nothing of ours
        return set()
    names = set()
    for tensor, _ in all_tensor_protos(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location" and pattern.fullmatch(entry.value):
                    names.add(entry.value)
    return names


def _remove_file(path: pathlib.Path) -> None:
    """Unlink ``path`` if it is a file or a symlink (never a folder)."""
    with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
        if not path.is_dir() or path.is_symlink():
            path.unlink()


@contextlib.contextmanager
def locked_folder(folder: pathlib.Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder`` for the block (none where the folder cannot be
    opened for reading or flock is missing: then commits are not serialised)."""
    descriptor = None
    if fcntl is not None:
        with contextlib.suppress(OSError):
            descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if descriptor is not None:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX)
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
                    raise
        yield
    finally:
        if descriptor is not None:
            os.close(descriptor)  # releases the lock


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP received in the block are delivered when it ends, to the
    handlers installed before it. Outside the main thread (where Python cannot install
    handlers) the block is not protected."""
    received: list[int] = []
    previous = {}
    try:
        for number in HELD_SIGNALS:
            previous[number] = signal.signal(number, lambda number, _frame: received.append(number))
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(received):
            signal.raise_signal(number)


def pause(point: str) -> None:
    """The test hook (see the module docstring): create the file and sleep at ``point``."""
    setting = os.environ.get(PAUSE_ENV)
    if not setting:
        return
    wanted, _, rest = setting.partition(":")
    marker, _, seconds = rest.partition(":")
    if wanted == point and marker:
        pathlib.Path(marker).touch()
        time.sleep(float(seconds) if seconds else PAUSE_SECONDS)
