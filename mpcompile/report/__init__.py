"""``mpcompile report``: the per-node precision audit of any ONNX model.

Typical use::

    from mpcompile.report import build_report, render, write_report
    audit = build_report("model_fp16.onnx", original="model.onnx", numerics=True)
    print(render(audit, "json"))
    write_report(converted_model, "report.html")   # format from the extension
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from mpcompile.analysis.audit import ModelAudit, ModelLike, NodeAudit, audit_model
from mpcompile.evaluate.shapes import ReportOptionError, ShapeSpec
from mpcompile.report.view import ReportView

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "FORMATS",
    "ModelAudit",
    "NodeAudit",
    "ReportOptionError",
    "ReportView",
    "ShapeSpec",
    "audit_model",
    "build_report",
    "format_for_path",
    "render",
    "write_report",
]

FORMATS = ("table", "json", "csv", "html")
_EXTENSIONS = {".json": "json", ".csv": "csv", ".html": "html", ".htm": "html", ".txt": "table"}


def build_report(
    model: ModelLike,
    *,
    original: ModelLike | None = None,
    shapes: ShapeSpec | list[str] | tuple[str, ...] | None = None,
    numerics: bool = False,
    inputs: str | os.PathLike | None = None,
    name: str | None = None,
    feeds: Mapping[str, np.ndarray] | None = None,
    inputs_label: str | None = None,
) -> ModelAudit:
    """Audit ``model``; with ``original``, add before/after columns; with ``numerics``, run both.

    ``model``/``original``: path, ``onnx.ModelProto`` or ``ir.Model`` (never modified).
    ``shapes``: ``["input:1x128", "seq=256"]`` for symbolic dims (see ``mpcompile.evaluate.shapes``).
    ``inputs``: an .npz of feeds for ``numerics``; generated when None. ``feeds``: the arrays
    themselves instead (a folder's captured pipeline feeds), described by ``inputs_label``.
    """
    spec = shapes if isinstance(shapes, ShapeSpec) else ShapeSpec.parse(shapes)
    if numerics and feeds is not None:
        spec.feed_shapes = {name: tuple(array.shape) for name, array in feeds.items()}
    elif numerics and inputs is not None:  # the arrays are read only once the run is known to fit
        from mpcompile.evaluate.inputs import input_shapes

        spec.feed_shapes = input_shapes(inputs)
    audit = audit_model(model, shapes=spec, name=name)
    original_audit = None
    if original is not None:
        from mpcompile.report.compare import attach_comparison

        original_audit = audit_model(original, shapes=spec)
        attach_comparison(audit, original_audit)
    if numerics:
        from mpcompile.report.numerics import attach_numerics

        assert audit.model is not None
        attach_numerics(
            audit,
            audit.model,
            original=original_audit.model if original_audit else None,
            original_audit=original_audit,
            feeds=feeds,
            inputs=inputs,
            inputs_label=inputs_label or (os.fspath(inputs) if inputs is not None else None),
        )
    return audit


def render(audit: ModelAudit, fmt: str = "table", view: ReportView | None = None) -> str:
    """The report as text in one of ``FORMATS`` (``table`` is plain text without colors)."""
    if fmt == "json":
        from mpcompile.report.json_format import render_json

        return render_json(audit, view)
    if fmt == "csv":
        from mpcompile.report.csv_format import render_csv

        return render_csv(audit, view)
    if fmt == "html":
        from mpcompile.report.html_format import render_html

        return render_html(audit, view)
    if fmt == "table":
        from mpcompile.report.terminal import render_text

        return render_text(audit, view)
    raise ReportOptionError(f"unknown report format {fmt!r}; choose one of {', '.join(FORMATS)}")


def format_for_path(path: str | os.PathLike) -> str:
    """The format a report path asks for by its extension (.json, .csv, .html/.htm, .txt)."""
    suffix = pathlib.Path(path).suffix.lower()
    try:
        return _EXTENSIONS[suffix]
    except KeyError:
        raise ReportOptionError(
            f"{path}: cannot tell the report format from the extension; use .json, .csv, .html or .txt"
        ) from None


def write_report(
    model: ModelLike,
    path: str | os.PathLike,
    fmt: str | None = None,
    *,
    original: ModelLike | None = None,
    view: ReportView | None = None,
    **options,
) -> ModelAudit:
    """Audit ``model`` and write the report to ``path`` atomically; format from the extension.

    This is what ``mpcompile convert --report PATH`` calls with the converted model and the
    original. ``options`` go to :func:`build_report` (``shapes``, ``numerics``, ``inputs``, ``name``).
    """
    fmt = fmt or format_for_path(path)
    if "name" not in options and isinstance(model, (str, os.PathLike)):
        options["name"] = os.path.basename(os.fspath(model))
    audit = build_report(model, original=original, **options)
    write_text_atomic(path, render(audit, fmt, view))
    return audit


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename."""
    import contextlib
    import errno
    import tempfile

    from mpcompile.errors import DiskFullError, OutputNotWritableError
    from mpcompile.io.model_io import set_default_permissions

    target = pathlib.Path(path).absolute()
    if not target.parent.is_dir():
        raise OutputNotWritableError(f"{target.parent}: output folder does not exist")
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise OutputNotWritableError(f"{target}: not writable ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
        set_default_permissions(temp)
        os.replace(temp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"{target}: no space left on device while writing") from None
        raise OutputNotWritableError(f"{target}: not writable ({exc.strerror})") from None
