"""``mpcompile report MODEL``: the per-node precision audit (see docs/report.md)."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import click

# The names of mpcompile.report.view.SORTS, spelled out so that the CLI starts without importing
# the report (onnx, onnx_ir); tests/test_cli_startup.py checks that the two agree.
SORT_NAMES = ("order", "flops", "weights", "name", "op", "precision", "range", "error")

FORMAT_CHOICES = ("table", "json", "csv", "html")


@click.command("report")
@click.argument("model", type=click.Path(path_type=str))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMAT_CHOICES),
    default=None,
    help="Output format. Default: from the -o extension, else a table on the terminal.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=str),
    help="Write the report here (for a folder MODEL: a folder of reports, one per model).",
)
@click.option(
    "--compare",
    "original",
    type=click.Path(path_type=str),
    help="The FP32 original (a folder for a folder MODEL): before/after columns.",
)
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="NAME:DIMS|DIM:N",
    help="An input's shape (input_ids:1x128) or a symbolic dim's value (sequence:128); repeatable.",
)
@click.option(
    "--numerics",
    is_flag=True,
    help="Run the FP32 reference (and the converted model with --compare) per node.",
)
@click.option(
    "--inputs",
    type=click.Path(path_type=str),
    help=".npz feeds (or a folder of them: the first is used) for --numerics; default: generated.",
)
@click.option(
    "--prompts",
    "prompts_path",
    type=click.Path(path_type=pathlib.Path),
    help="A generative export folder with --numerics: token-id prompts, one a line, for the FP32 "
    "pipeline run whose feeds each file is measured on [default: generated].",
)
@click.option("--sort", type=click.Choice(SORT_NAMES), default="order", show_default=True, help="Row order.")
@click.option("--op", "ops", multiple=True, help="Only rows of this op type (repeatable).")
@click.option(
    "--precision",
    "precisions",
    multiple=True,
    help="Only rows of this precision: fp32, fp16, bf16, n/a (repeatable).",
)
@click.option("--top", type=click.IntRange(min=0), default=None, help="Only the first N rows after sorting.")
def report_command(
    model: str,
    fmt: str | None,
    output: str | None,
    original: str | None,
    shapes: tuple[str, ...],
    numerics: bool,
    inputs: str | None,
    prompts_path: pathlib.Path | None,
    sort: str,
    ops: tuple[str, ...],
    precisions: tuple[str, ...],
    top: int | None,
) -> None:
    """Audit MODEL: precision, reason and rule of every node, FLOPs, weights and Casts.

    MODEL may be a folder: each of its models is audited (see docs/folders.md).
    """
    from mpcompile.report import build_report, format_for_path, render, write_text_atomic
    from mpcompile.report.view import ReportView

    view = ReportView(ops=ops, precisions=precisions, top=top, sort=sort)
    if os.path.isdir(model):
        report_folder(
            model,
            fmt,
            output,
            original,
            shapes=shapes,
            numerics=numerics,
            inputs=inputs,
            view=view,
            prompts=prompts_path,
        )
        return
    if prompts_path is not None:
        from mpcompile import errors

        raise errors.UsageError("--prompts: only for a folder MODEL with --numerics")
    if output:
        from mpcompile.io import overwrite_guard

        audited = [path for path in (model, original) if path]
        overwrite_guard.refuse_writing_over(output, overwrite_guard.REPORT, audited)
    if fmt is None:
        fmt = format_for_path(output) if output else "table"
    audit = build_report(model, original=original, shapes=shapes, numerics=numerics, inputs=inputs)
    if output:
        write_text_atomic(output, render(audit, fmt, view))
        click.echo(f"wrote {fmt} report to {output}", err=True)
    elif fmt == "table":
        import sys

        from rich.console import Console

        from mpcompile.report.terminal import print_report

        # Piped output gets every column at full width; a terminal gets what fits.
        console = Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 240)
        print_report(audit, console, view)
    else:
        click.echo(render(audit, fmt, view), nl=False)


EXTENSIONS = {"table": ".txt", "json": ".json", "csv": ".csv", "html": ".html"}


def report_folder(
    folder: str,
    fmt: str | None,
    output: str | None,
    original: str | None,
    *,
    shapes: tuple[str, ...],
    numerics: bool,
    inputs: str | None,
    view,
    prompts: pathlib.Path | None = None,
) -> None:
    """``report FOLDER``: each model's audit, in file order. On the terminal: one table per model
    (or one JSON document with a ``files`` list); with ``-o OUT``: the folder OUT, one report per
    model named after it (``decoder_model.onnx`` -> ``decoder_model.html``; format from ``--format``,
    default html). ``--compare`` takes the FP32 folder, its models paired by name. With
    ``numerics``, the files of a generation pipeline are measured on feeds captured from a run of
    the whole pipeline (the ``--compare`` folder's, else this one's: ``validate.pipeline``)."""
    from mpcompile import errors
    from mpcompile.io.export_folder import model_paths, refuse_output_in_input
    from mpcompile.report import build_report, render, write_text_atomic

    if inputs is not None:
        raise errors.UsageError(
            "--inputs with a folder: each model needs its own inputs; report the files one by one"
        )
    models = model_paths(folder)
    if not models:
        raise errors.NotOnnxError(f"{folder}: no .onnx file in this folder (or its subfolders)")
    originals: dict[str, pathlib.Path] = {}
    if original is not None:
        if not os.path.isdir(original):
            raise errors.UsageError(
                f"--compare {original}: not a folder; a folder MODEL is compared with a folder"
            )
        originals = model_paths(original)
        missing = sorted(set(models) - set(originals))
        if missing:
            raise errors.InputNotFoundError(f"--compare {original}: no {', '.join(missing)} there")
    fmt = fmt or ("html" if output else "table")
    if output is None and fmt in ("csv", "html"):
        raise errors.UsageError(f"--format {fmt} with a folder: give -o OUT_FOLDER for the reports")
    if output is not None:
        refuse_output_in_input(pathlib.Path(folder), pathlib.Path(output))
        if os.path.exists(output) and not os.path.isdir(output):
            raise errors.OutputNotWritableError(f"{output}: exists and is not a folder")
    if prompts is not None and not numerics:
        raise errors.UsageError("--prompts: only with --numerics")
    captured = pipeline_feeds(models, originals, prompts) if numerics else {}
    documents = []
    for name, path in models.items():
        feeds, label = captured.get(name, (None, None))
        audit = build_report(
            path,
            original=originals.get(name),
            shapes=shapes,
            numerics=numerics,
            name=name,
            feeds=feeds,
            inputs_label=label,
        )
        if output is not None:
            target = pathlib.Path(output) / (name.removesuffix(".onnx") + EXTENSIONS[fmt])
            target.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(target, render(audit, fmt, view))
            click.echo(f"wrote {fmt} report to {target}", err=True)
        elif fmt == "table":
            console = _console()
            console.rule(name)
            from mpcompile.report.terminal import print_report

            print_report(audit, console, view)
        else:
            documents.append({"file": name, "report": json.loads(render(audit, "json", view))})
    if output is None and fmt == "json":
        click.echo(json.dumps({"folder": folder, "files": documents}, indent=2))


def pipeline_feeds(
    models: dict[str, pathlib.Path], originals: dict[str, pathlib.Path], prompts: pathlib.Path | None
) -> dict[str, tuple[dict[str, Any], str]]:
    """Per model of a generation pipeline: its feeds from the pipeline's run (the latest run of
    the last prompt: a decoder with past gets the longest real KV cache) and their label. The
    pipeline runs in the ``--compare`` folder when given (FP32), else in the reported one."""
    from mpcompile.validate import generation, generative, pipeline

    given = generative.read_prompts(prompts) if prompts is not None else None
    source = originals or models
    captured: dict[str, tuple[dict[str, Any], str]] = {}
    directories = dict.fromkeys(path.parent for path in source.values())
    for directory in directories:
        try:
            capture = pipeline.capture_pipeline(
                directory, prompts=given, prompts_source=f"--prompts {prompts}" if prompts else ""
            )
        except generation.NotGenerativeError:
            continue
        except generation.GenerationError:
            continue  # the files are measured one by one, on generated inputs
        for name, path in source.items():
            batches = capture.feeds.get(path.name) if path.parent == directory else None
            if batches:
                captured[name] = (
                    batches[-1],
                    f"{capture.label(path.name)}, run of {directory}; the last batch",
                )
    if prompts is not None and not captured:
        from mpcompile import errors

        raise errors.UsageError(f"--prompts: no generative export folder in {next(iter(directories))}")
    return captured


def _console():
    import sys

    from rich.console import Console

    # Piped output gets every column at full width; a terminal gets what fits.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 240)
