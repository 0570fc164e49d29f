"""Silence ORT (its Python tools, its C++ logger) while it runs, then restore the caller's logging state."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from mpcompile.evaluate.ort_session import onnxruntime_log_severity


@contextlib.contextmanager
def logging_disabled(level: int = logging.WARNING) -> Iterator[None]:
    """Disable log records up to ``level`` (ORT's optimiser warns per unmatched pattern), then put
    back whatever ``logging.disable`` level was in force before."""
    previous = logging.root.manager.disable
    logging.disable(level)
    try:
        yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """``logging_disabled`` plus stdout swallowed (the optimiser prints fusion statistics) and
    ORT's own logger at fatal only (its sessions would log E-level lines on stderr)."""
    with contextlib.redirect_stdout(None), logging_disabled(), onnxruntime_log_severity(4):
        yield
