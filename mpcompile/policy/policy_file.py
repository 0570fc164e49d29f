"""Reading a TOML policy file safely: a regular, size-capped UTF-8 file with typed fields.

A policy file is an auxiliary input like any other: it is checked before it is parsed (a FIFO
would block, ``/dev/zero`` would read without end) and every field is checked for its type,
so each bad file is one ``PolicyError`` line (exit 13), never an internal error.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import sys

from mpcompile.core.precision import LOW_PRECISION_FORMATS
from mpcompile.errors import PolicyError
from mpcompile.policy.policy import Policy
from mpcompile.targets.registry import target_names

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MAX_POLICY_BYTES = 1 << 20  # 1 MiB: a policy file lists ops and node names, never megabytes
OP_LIST_KEYS = ("allow_ops", "block_ops", "block_nodes")
POLICY_FILE_KEYS = frozenset({*OP_LIST_KEYS, "precision", "target", "keep_io_types"})


@dataclasses.dataclass(frozen=True)
class PolicyFile:
    """What a policy file says: op overrides, and the conversion options it sets (None: not set)."""

    policy: Policy
    precision: str | None = None
    target: str | None = None
    keep_io_types: bool | tuple[str, ...] | None = None


def read_policy_file(path: str | os.PathLike) -> PolicyFile:
    """Read and check the TOML policy file at ``path`` (``PolicyError`` on any problem)."""
    data = _parse(path, _read_text(path))
    unknown = set(data) - POLICY_FILE_KEYS
    if unknown:
        raise PolicyError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(POLICY_FILE_KEYS)}")
    for key in OP_LIST_KEYS:
        if not _is_list_of_strings(data.get(key, [])):
            raise PolicyError(f"{path}: {key} must be a list of strings")
    try:
        policy = Policy.from_options(*(data.get(key, []) for key in OP_LIST_KEYS))
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc.message}") from None
    return PolicyFile(
        policy,
        precision=_choice(path, data, "precision", tuple(LOW_PRECISION_FORMATS)),
        target=_choice(path, data, "target", target_names()),
        keep_io_types=_keep_io_types(path, data),
    )


def _read_text(path: str | os.PathLike) -> str:
    """The file's text: a regular file of at most ``MAX_POLICY_BYTES``, UTF-8."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not block; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise PolicyError(f"{path}: policy file not found") from None
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy file ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise PolicyError(f"{path}: a policy file must be a regular file")
        if info.st_size > MAX_POLICY_BYTES:
            raise PolicyError(f"{path}: policy file larger than {MAX_POLICY_BYTES} bytes")
        raw = handle.read(MAX_POLICY_BYTES + 1)
    if len(raw) > MAX_POLICY_BYTES:  # it grew while being read
        raise PolicyError(f"{path}: policy file larger than {MAX_POLICY_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path}: policy file is not UTF-8 (byte {exc.start})") from None


def _parse(path: str | os.PathLike, text: str) -> dict[str, object]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: invalid TOML ({exc})") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise PolicyError(f"{path}: invalid TOML (arrays or tables nested too deeply)") from None


def _is_list_of_strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _choice(
    path: str | os.PathLike, data: dict[str, object], key: str, choices: tuple[str, ...]
) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or value.lower() not in choices:
        raise PolicyError(f"{path}: {key} must be one of {', '.join(choices)}, not {_shown(value)}")
    return value.lower()


def _keep_io_types(path: str | os.PathLike, data: dict[str, object]) -> bool | tuple[str, ...] | None:
    value = data.get("keep_io_types")
    if value is None or isinstance(value, bool):
        return value
    if _is_list_of_strings(value):
        return tuple(value)
    raise PolicyError(
        f"{path}: keep_io_types must be true, false or a list of input/output names, not {_shown(value)}"
    )


def _shown(value: object, limit: int = 40) -> str:
    """A value for a one-line message: its repr, shortened."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
