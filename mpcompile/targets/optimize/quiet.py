"""Silence ORT's Python tools while they run, then restore the caller's logging state."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


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
    """``logging_disabled`` plus stdout swallowed (the optimiser prints fusion statistics)."""
    with contextlib.redirect_stdout(None), logging_disabled():
        yield
