"""The memory a run may ask for: inputs, generated feeds and ``--auto``'s reference values.

Checked from shapes and headers before anything is allocated, so a hostile ``--inputs`` file,
a ``--shape batch:100000000`` or a graph input declared ``[2**62, 4]`` is refused in one line
(``TooLargeError``, exit 17) instead of exhausting the machine. The limit is
``MPCOMPILE_MEMORY_LIMIT`` (bytes, with an optional K/M/G/T suffix, ``none`` for no limit), by
default half of the memory available when the check runs (``MemAvailable``).
"""

from __future__ import annotations

import os
import re

from mpcompile import errors

ENV_VAR = "MPCOMPILE_MEMORY_LIMIT"
DEFAULT_SHARE = 0.5  # of MemAvailable: ORT's arenas and the faithful copies need the rest
FALLBACK_BYTES = 4 << 30  # where /proc/meminfo cannot be read
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


class MemoryLimitOptionError(errors.MpcompileError):
    """``MPCOMPILE_MEMORY_LIMIT`` that is not a size."""

    exit_code = errors.ExitCode.USAGE


def memory_limit() -> int | None:
    """The byte limit in force, or None when ``MPCOMPILE_MEMORY_LIMIT=none``."""
    text = os.environ.get(ENV_VAR, "").strip()
    if not text:
        return int(_available_bytes() * DEFAULT_SHARE)
    if text.lower() == "none":
        return None
    match = _SIZE.match(text)
    if match is None:
        raise MemoryLimitOptionError(
            f"{ENV_VAR}={text!r}: expected a size such as 8G, 512M or 1000000, or none"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def check_fits(nbytes: int, what: str) -> None:
    """Raise ``TooLargeError`` when ``nbytes`` is above the limit; ``what`` names the consumer."""
    limit = memory_limit()
    if limit is not None and nbytes > limit:
        raise errors.TooLargeError(
            f"{what} would need {format_bytes(nbytes)}, above the memory limit of {format_bytes(limit)} "
            f"(set {ENV_VAR}, e.g. {ENV_VAR}=64G, to raise it)"
        )


def format_bytes(count: int) -> str:
    """``1.5 GiB`` style; huge counts stay readable (``2^66 bytes``)."""
    if count >= 1 << 60:
        return f"2^{count.bit_length() - 1} bytes"
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} bytes"


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return FALLBACK_BYTES
