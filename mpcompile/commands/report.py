"""``mpcompile report MODEL``: the per-node precision audit (see docs/report.md)."""

from __future__ import annotations

import click

# The names of mpcompile.report.view.SORTS, spelled out so that the CLI starts without importing
# the report (onnx, onnx_ir); tests/test_cli_startup.py checks that the two agree.
SORT_NAMES = ("order", "flops", "weights", "name", "op", "precision", "range", "error")

FORMAT_CHOICES = ("table", "json", "csv", "html")


@click.command("report")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMAT_CHOICES),
    default=None,
    help="Output format. Default: from the -o extension, else a table on the terminal.",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=str), help="Write the report here.")
@click.option(
    "--compare",
    "original",
    type=click.Path(dir_okay=False, path_type=str),
    help="The FP32 original: before/after columns.",
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
    sort: str,
    ops: tuple[str, ...],
    precisions: tuple[str, ...],
    top: int | None,
) -> None:
    """Audit MODEL: precision, reason and rule of every node, FLOPs, weights and Casts."""
    from mpcompile.report import build_report, format_for_path, render, write_text_atomic
    from mpcompile.report.view import ReportView

    view = ReportView(ops=ops, precisions=precisions, top=top, sort=sort)
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
        console = Console(highlight=False, width=None if sys.stdout.isatty() else 240)
        print_report(audit, console, view)
    else:
        click.echo(render(audit, fmt, view), nl=False)
