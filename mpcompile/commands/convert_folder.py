"""``mpcompile convert EXPORT_DIR -o OUT_DIR``: every model of a folder, one summary row each."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import TYPE_CHECKING, Any

import click

from mpcompile import errors

if TYPE_CHECKING:
    from mpcompile.compiler.options import ConvertOptions


def default_output_folder(folder: pathlib.Path, precision: str) -> pathlib.Path:
    """llama-onnx -> llama-onnx.fp16, beside it."""
    folder = folder.absolute()
    return folder.with_name(f"{folder.name}.{precision}")


def convert_folder_from_cli(
    folder: pathlib.Path,
    output: pathlib.Path | None,
    options: ConvertOptions,
    *,
    auto: Any = None,
    overwrite: bool,
    external_data: bool | None,
    report_path: pathlib.Path | None,
    run_validation: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Convert ``folder`` (``auto``: the ``--auto`` settings, run per file), print one row per
    model (or JSON), and raise the first failing model's error after the summary."""
    from mpcompile.commands.convert import _progress
    from mpcompile.compiler.folder import convert_folder

    if report_path is not None:
        raise errors.UsageError(
            "--report with a folder: convert first, then `mpcompile report OUT_DIR -o REPORTS_DIR` "
            "writes one report per model"
        )
    if auto is not None and auto.inputs is not None:
        raise errors.UsageError(
            "--inputs with a folder: each model needs its own inputs; --auto generates them per model"
        )
    output = output or default_output_folder(folder, str(options.resolved().precision))
    with _progress(quiet or as_json) as on_pass_start:
        current = {"file": ""}

        def on_file_start(name: str) -> None:
            current["file"] = name
            if on_pass_start is not None:
                on_pass_start(f"{name}: loading")

        def on_pass(name: str) -> None:
            if on_pass_start is not None:
                on_pass_start(f"{current['file']}: {name}")

        result = convert_folder(
            folder,
            output,
            overwrite=overwrite,
            external_data=external_data,
            raise_on_error=False,
            on_file_start=on_file_start,
            on_pass_start=on_pass,
            convert_one=_auto_converter(auto) if auto is not None else None,
            options=options,
        )
    if not as_json and (not quiet or not result):
        print_folder_summary(result)
    failure = result.first_failure()
    validated = errors.ExitCode.OK
    document = result.summary()
    if run_validation and failure is None:
        from mpcompile.commands.validate import validate_folders

        # Under --json the validation goes inside the one JSON object stdout carries.
        validation: dict[str, Any] = {}
        validated = validate_folders(folder, output, into=validation if as_json else None)
        document["validation"] = validation
    if as_json:
        click.echo(json.dumps(document, indent=2))
    if failure is not None:
        assert failure.error is not None
        raise failure.error
    if validated != errors.ExitCode.OK:
        from mpcompile.commands.validate import ValidationFailedError

        raise ValidationFailedError("validation failed: a model is outside tolerance (see above)")


def _auto_converter(settings: Any):
    """``convert_folder``'s ``convert_one`` for ``--auto``: the per-file search on feeds captured
    from the FP32 pipeline, accepted only where greedy generation holds (``commands.auto_folder``)."""
    from mpcompile.commands.auto_folder import FolderAuto, GenerationSettings, prompts_from_file
    from mpcompile.evaluate.inputs import parse_shape_options

    generation = GenerationSettings()
    if settings.prompts is not None:
        prompts = prompts_from_file(settings.prompts)
        generation = dataclasses.replace(
            generation, prompts=prompts, prompts_source=f"--prompts {settings.prompts}"
        )
    if settings.new_tokens is not None:
        generation = dataclasses.replace(generation, new_tokens=settings.new_tokens)
    auto_options = {
        "shapes": parse_shape_options(settings.shapes),
        "rtol": settings.rtol,
        "atol": settings.atol,
        "metric": settings.metric,
        "budget": settings.budget,
        "static_blocks": settings.static_blocks,
    }
    return FolderAuto(auto_options, generation)


def print_folder_summary(result) -> None:
    """One rich table row per model: nodes low/FP32, Casts inserted and folded, size before/after, status."""
    import sys

    from rich.console import Console
    from rich.table import Table

    # Piped output gets full file names; a terminal gets what fits.
    from mpcompile.text import markup

    console = Console(emoji=False, width=None if sys.stdout.isatty() else 160)
    console.print(f"[bold]{markup(result.source)}[/] -> [bold]{markup(result.output)}[/]")
    table = Table(show_header=True, header_style="bold")
    for column, justify in (
        ("file", "left"),
        ("nodes low/FP32", "right"),
        ("Casts", "right"),
        ("size before", "right"),
        ("size after", "right"),
        ("status", "left"),
    ):
        table.add_column(column, justify=justify)
    for outcome in result.files:
        converted = outcome.convert_result
        if converted is not None:
            counts = converted.stats.nodes_by_precision
            low = sum(count for precision, count in counts.items() if precision in ("fp16", "bf16"))
            stats = converted.stats
            nodes, casts = f"{low}/{counts.get('fp32', 0)}", f"+{stats.casts_inserted} -{stats.casts_folded}"
        else:
            nodes = casts = ""
        status = {
            "converted": "[green]converted[/]",
            "failed": f"[red]failed[/] (exit {int(outcome.error.exit_code)})" if outcome.error else "failed",
            "skipped": "[yellow]skipped[/] (after a failure)",
        }[outcome.status]
        after = _size(outcome.bytes_after) if outcome.status == "converted" else ""
        table.add_row(markup(outcome.file), nodes, casts, _size(outcome.bytes_before), after, status)
    console.print(table)
    if result:
        console.print(f"{len(result.copied)} other file(s) copied")
    else:
        console.print("nothing written")
    for outcome in result.files:
        converted = outcome.convert_result
        for note in converted.notes if converted is not None else ():
            console.print(f"note: {markup(outcome.file)}: {markup(note)}")


def _size(count: int) -> str:
    """1536 -> '1.5 KiB'."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"
