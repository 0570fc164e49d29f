"""``mpcompile convert``: FP32 model in, mixed-precision model out."""

from __future__ import annotations

import json
import pathlib
import sys

import click

from mpcompile.commands.auto_options import auto_options, auto_settings, run_auto_from_cli
from mpcompile.commands.choices import DEFAULT_PRECISION, OPTIMIZE_LEVELS, PRECISIONS, TARGET_NAMES
from mpcompile.commands.conversion_options import node_selection_options, precision_option, target_option
from mpcompile.errors import UsageError


def default_output_path(input_path: pathlib.Path, precision: str) -> pathlib.Path:
    """model.onnx -> model.fp16.onnx"""
    return input_path.with_name(f"{input_path.stem}.{precision}.onnx")


@click.command("convert")
@click.argument("model", type=click.Path(dir_okay=True, path_type=pathlib.Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=pathlib.Path),
    help="Output path [default: MODEL.<precision>.onnx; for a folder MODEL, the folder MODEL.<precision>].",
)
@precision_option(PRECISIONS, help="Low-precision type [default: fp16, or the policy file's].", default=None)
@target_option(None, choices=TARGET_NAMES)
@click.option(
    "--optimize",
    type=click.Choice(OPTIMIZE_LEVELS),
    help="Run ONNX Runtime's graph optimisation (fusions) for the target before converting.",
)
@click.option(
    "--keep-io-types/--no-keep-io-types",
    default=None,
    help="Keep FP32 graph inputs/outputs, or make every float one low precision "
    "[default: keep, or the policy file's].",
)
@click.option(
    "--keep-io",
    "keep_io_names",
    multiple=True,
    metavar="NAME",
    help="Keep this graph input/output FP32 and make the other float ones low precision (repeatable).",
)
@node_selection_options
@click.option("--allow-qdq", is_flag=True, help="Convert the float parts of a QDQ-quantized model.")
@click.option(
    "--static",
    is_flag=True,
    help="Static rules only: skip the range run (one FP32 run of generated inputs with onnxruntime that "
    "keeps FP32 the nodes whose values leave the low-precision range).",
)
@click.option(
    "--allow-custom-ops",
    is_flag=True,
    help="Convert a model with ops only a custom-op library defines (they stay FP32).",
)
@click.option(
    "--training",
    is_flag=True,
    help="MODEL is an ORT training-artifact folder (training/eval/optimizer models, checkpoint); -o is the output folder.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Allow the output path to be the input path (for a folder MODEL: replace an existing output folder).",
)
@click.option(
    "--external-data/--no-external-data", default=None, help="Force weights into/out of a .data file."
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    help="Also write a precision report (.html, .json, .csv or .txt).",
)
@click.option(
    "--validate",
    "run_validation",
    is_flag=True,
    help="Validate the result against the input (see `validate`).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
@click.option(
    "--check-invariants", is_flag=True, help="Check invariants after every pass (slow; for debugging)."
)
@click.option(
    "--dump-dir",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    help="Write the IR after each pass here.",
)
@auto_options
def convert_command(
    model: pathlib.Path,
    output: pathlib.Path | None,
    precision: str | None,
    target: str | None,
    optimize: str | None,
    keep_io_types: bool | None,
    keep_io_names: tuple[str, ...],
    allow_ops: tuple[str, ...],
    block_ops: tuple[str, ...],
    block_nodes: tuple[str, ...],
    policy: pathlib.Path | None,
    allow_qdq: bool,
    static: bool,
    allow_custom_ops: bool,
    training: bool,
    overwrite: bool,
    external_data: bool | None,
    report_path: pathlib.Path | None,
    run_validation: bool,
    as_json: bool,
    quiet: bool,
    check_invariants: bool,
    dump_dir: pathlib.Path | None,
) -> None:
    """Convert an FP32 ONNX MODEL to mixed precision.

    MODEL may be an export folder (optimum's layout): every .onnx file in it is converted with the
    same options into the output folder, other files are copied, and nothing is written unless
    every model converts.
    """
    if training:
        from mpcompile.commands.train_artifacts import convert_training_folder

        convert_training_folder(
            model,
            output,
            precision=precision or DEFAULT_PRECISION,
            block_ops=block_ops,
            block_nodes=block_nodes,
            overwrite=overwrite,
            as_json=as_json,
            quiet=quiet,
            check_invariants=check_invariants,
            dump_dir=dump_dir,
        )
        return
    from mpcompile.compiler.options import ConvertOptions

    options = ConvertOptions(
        precision=precision,
        target=target,
        optimize=optimize,
        keep_io_types=_keep_io_types(keep_io_types, keep_io_names),
        allow_ops=allow_ops,
        block_ops=block_ops,
        block_nodes=block_nodes,
        policy=policy,
        allow_qdq=allow_qdq,
        static=static,
        allow_custom_ops=allow_custom_ops,
        check_invariants=check_invariants,
        dump_dir=dump_dir,
    ).resolved()  # the policy file is read (and checked) here, once
    if model.is_dir():
        from mpcompile.commands.convert_folder import convert_folder_from_cli

        convert_folder_from_cli(
            model,
            output,
            options,
            auto=auto_settings(),
            overwrite=overwrite,
            external_data=external_data,
            report_path=report_path,
            run_validation=run_validation,
            as_json=as_json,
            quiet=quiet,
        )
        return
    output = output or default_output_path(model, str(options.precision))
    if report_path is not None:
        from mpcompile.report import format_for_path

        format_for_path(report_path)  # fail on a bad extension before converting
        from mpcompile.io import overwrite_guard

        output_files = overwrite_guard.output_files(output)
        overwrite_guard.refuse_writing_over(report_path, overwrite_guard.REPORT, [model], output_files)
    settings = auto_settings()
    if settings is not None:
        auto_result = run_auto_from_cli(
            model,
            output,
            settings,
            overwrite=overwrite,
            external_data=external_data,
            as_json=False,
            quiet=quiet or as_json,
            report_path=report_path,
            options=options,
            progress=not quiet,
        )
        if as_json:
            print_json_summary(auto_result.summary(), model, output, run_validation)
        elif run_validation:
            from mpcompile.commands.validate import validate_or_raise

            validate_or_raise(model, output)
        return
    from mpcompile.compiler.converter import convert_file

    with _progress(quiet or as_json) as on_pass_start:
        result = convert_file(
            model,
            output,
            overwrite=overwrite,
            external_data=external_data,
            on_pass_start=on_pass_start,
            options=options,
        )
    if not (quiet or as_json):
        print_summary(result, model, output)
    if report_path is not None:
        from mpcompile.report import write_report

        write_report(output, report_path, original=model)
    if as_json:
        print_json_summary(result.summary(), model, output, run_validation)
    elif run_validation:
        from mpcompile.commands.validate import validate_or_raise

        validate_or_raise(model, output)


def _keep_io_types(keep_io_types: bool | None, names: tuple[str, ...]) -> bool | frozenset[str] | None:
    """``--keep-io-types/--no-keep-io-types`` and ``--keep-io NAME`` as one ``keep_io_types``."""
    if not names:
        return keep_io_types
    if keep_io_types:
        raise UsageError("--keep-io NAME keeps only the named inputs/outputs FP32; drop --keep-io-types")
    return frozenset(names)


class _progress:
    """A transient progress line over the passes, shown on terminals only."""

    def __init__(self, disabled: bool):
        self.disabled = disabled or not sys.stderr.isatty()
        self._progress = None

    def __enter__(self):
        if self.disabled:
            return None
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._progress.start()
        task = self._progress.add_task("loading")

        def on_pass_start(name: str) -> None:
            self._progress.update(task, description=name)

        return on_pass_start

    def __exit__(self, *exc_info) -> None:
        if self._progress is not None:
            self._progress.stop()


def print_json_summary(
    summary: dict, source: pathlib.Path, output: pathlib.Path, run_validation: bool
) -> None:
    """``--json``: stdout is this one JSON object, the validation (``--validate``) inside it.

    A failed validation then exits 1 with its ``error:`` line, after the object is printed."""
    document = {"input": str(source), "output": str(output), **summary}
    validation = None
    if run_validation:
        from mpcompile.commands.validate import validation_result

        validation = validation_result(source, output)
        document["validation"] = validation.to_dict()
    click.echo(json.dumps(document, indent=2))
    if validation is not None and not validation.passed:
        from mpcompile.commands.validate import FAILED_MESSAGE, ValidationFailedError

        raise ValidationFailedError(FAILED_MESSAGE)


def print_summary(result, source: pathlib.Path, output: pathlib.Path) -> None:
    """The human summary of a conversion, printed with rich."""
    from rich.console import Console
    from rich.table import Table

    from mpcompile.text import markup

    stats = result.stats
    console = Console(emoji=False)  # :name: in a model string stays text
    console.print(
        f"[bold]{markup(source)}[/] -> [bold]{markup(output)}[/] ({result.precision}, target {result.target})"
    )
    table = Table(show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("value", justify="right")
    for precision, count in sorted(stats.nodes_by_precision.items()):
        table.add_row(f"nodes {precision}", str(count))
    table.add_row("Casts inserted", str(stats.casts_inserted))
    table.add_row("Casts folded away", str(stats.casts_folded))
    table.add_row(
        "Casts in the model", f"{stats.casts_before} -> {stats.casts_after} ({stats.casts_added:+d})"
    )
    table.add_row("weights", f"{_mb(stats.weight_bytes_before)} -> {_mb(stats.weight_bytes_after)}")
    table.add_row(
        "initializers converted / copied", f"{stats.initializers_converted} / {stats.initializers_duplicated}"
    )
    table.add_row(
        "values clamped / flushed to zero", f"{stats.values_clamped} / {stats.values_flushed_to_zero}"
    )
    table.add_row(
        "time",
        ", ".join(
            f"{name.removesuffix('Pass')} {sec * 1000:.0f} ms" for name, sec in stats.pass_seconds.items()
        ),
    )
    console.print(table)
    for note in result.notes:
        console.print(f"note: {markup(note)}")


def _mb(count: int) -> str:
    return f"{count / 2**20:.2f} MiB"
