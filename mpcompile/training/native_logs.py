"""Silence the info lines onnxruntime-training's native gradient builder writes to stderr.

``generate_artifacts`` builds the gradient graph with a C++ logger of its own at info severity
(about 40 ``[I:onnxruntime:...]`` lines per model); ``onnxruntime.set_default_logger_severity``
does not reach it. So, around the call, file descriptor 2 is redirected to a temporary file;
afterwards every line except the info/verbose ones is written back to stderr.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

_INFO_LINE = re.compile(r"\[[IV]:onnxruntime:")


@contextlib.contextmanager
def native_info_logs_dropped() -> Iterator[None]:
    """Drop onnxruntime's native info/verbose lines written to stderr inside the block."""
    try:
        stderr_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (captured): nothing to redirect
        yield
        return
    sys.stderr.flush()
    saved = os.dup(stderr_fd)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), stderr_fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, stderr_fd)
            os.close(saved)
            capture.seek(0)
            kept = [
                line
                for line in capture.read().decode(errors="replace").splitlines(keepends=True)
                if not _INFO_LINE.search(line)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
