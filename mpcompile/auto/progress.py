"""What ``--auto`` reports while it runs: one event per evaluation, and the terminal's progress bar.

``auto_convert(..., progress=callback)`` calls ``callback(Evaluation(...))`` after the reference
run, after every candidate that ran and after the answer's confirmation, and while generated
inputs are being fitted to the model (``phase="inputs"``). ``ProgressBar`` draws them with rich
on stderr, transient (gone once the search ends), only when stderr is a terminal.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from typing import Any

REFERENCE = "reference"
CANDIDATE = "candidate"
CONFIRM = "confirm"
INPUTS = "inputs"


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The search's state after one model run."""

    phase: str  # REFERENCE | CANDIDATE | CONFIRM | INPUTS
    evaluations: int
    budget: int
    low_share: float | None = None  # the low-precision FLOP share of the candidate just run
    best_error: float | None = None  # the smallest error of any candidate so far
    limit: float | None = None


ProgressCallback = Callable[[Evaluation], None]


class ProgressBar:
    """``with ProgressBar() as callback:`` a transient rich bar over the budget on stderr (the
    callback is None when stderr is not a terminal or ``disabled``)."""

    def __init__(self, disabled: bool = False, console: Any = None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        # a console given (tests) decides alone; by default stderr must be a terminal
        self.disabled = (
            disabled or not self.console.is_terminal or (console is None and not sys.stderr.isatty())
        )
        self._progress = None
        self._task = None

    def __enter__(self) -> ProgressCallback | None:
        if self.disabled:
            return None
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("--auto"),
            BarColumn(bar_width=20),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("reference run", total=None)
        return self.update

    def update(self, event: Evaluation) -> None:
        """Show ``event`` (the callback handed to ``auto_convert``)."""
        if self._progress is None:
            return
        self._progress.update(
            self._task, description=describe(event), completed=event.evaluations, total=event.budget
        )

    def __exit__(self, *exc_info: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def describe(event: Evaluation) -> str:
    """``candidate 3 of 16 · FP16 87.5% · best error 0.012 (limit 0.01)``."""
    if event.phase == INPUTS:
        return "fitting generated inputs to the model (it rejected the default sizes)"
    parts = [f"{event.phase} {event.evaluations} of {event.budget}"]
    if event.low_share is not None:
        parts.append(f"low precision {event.low_share:.1%} of FLOPs")
    if event.best_error is not None and event.limit is not None and math.isfinite(event.best_error):
        parts.append(f"best error {event.best_error:.3g} (limit {event.limit:.3g})")
    return " · ".join(parts)
