"""Our thin pass manager: runs passes in order with timing, invariant checks and debug dumps."""

from __future__ import annotations

import logging
import os
import pathlib
import time
from collections.abc import Callable, Sequence

import onnx_ir as ir

from mpcompile.errors import MpcompileError

logger = logging.getLogger(__name__)


class Pipeline:
    """Run passes in order; time each; optionally check invariants and dump the IR after each.

    A ``Sequential`` among the passes (ApplyPrecisionPass) is run step by step, so each of its
    passes is timed, checked and dumped on its own. A pass's ``requires`` that refuses the model
    with an ``MpcompileError`` (a user error) raises that error itself, not onnx-ir's wrapper."""

    def __init__(
        self,
        passes: Sequence[ir.passes.PassBase],
        *,
        check_invariants: Callable[[ir.Model], None] | None = None,
        dump_dir: str | os.PathLike | None = None,
        on_pass_start: Callable[[str], None] | None = None,
    ):
        self.passes = list(_steps(passes))
        self.check_invariants = check_invariants
        self.dump_dir = pathlib.Path(dump_dir) if dump_dir else None
        self.on_pass_start = on_pass_start
        self.seconds: dict[str, float] = {}

    def __call__(self, model: ir.Model) -> ir.Model:
        if self.dump_dir:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
        for step, pass_ in enumerate(self.passes):
            name = type(pass_).__name__
            if self.on_pass_start:
                self.on_pass_start(name)
            start = time.perf_counter()
            try:
                result = pass_(model)
            except ir.passes.PreconditionError as error:
                if isinstance(error.__cause__, MpcompileError):  # a pass's requires refused the input
                    raise error.__cause__ from None
                raise
            model = result.model
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            logger.debug("%s: modified=%s in %.3fs", name, result.modified, self.seconds[name])
            if self.check_invariants is not None:
                self.check_invariants(model)
            if self.dump_dir:
                text = ir.to_onnx_text(model, exclude_initializers=True)
                (self.dump_dir / f"{step:02d}_{name}.txt").write_text(text)
        return model

    def close(self) -> None:
        """Let every pass release what it still holds (``RangeRunPass``: its worker thread)."""
        for pass_ in self.passes:
            close = getattr(pass_, "close", None)
            if callable(close):
                close()


def _steps(passes: Sequence[ir.passes.PassBase]) -> list[ir.passes.PassBase]:
    """``passes`` with every ``Sequential`` replaced by its own passes, in order."""
    steps: list[ir.passes.PassBase] = []
    for pass_ in passes:
        if isinstance(pass_, ir.passes.Sequential):
            steps.extend(_steps(pass_.passes))
        else:
            steps.append(pass_)
    return steps
