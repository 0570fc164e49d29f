"""``mpcompile validate ORIGINAL CONVERTED``: accuracy and latency on ONNX Runtime EPs."""

from __future__ import annotations

import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import click

from mpcompile.errors import ExitCode, MpcompileError


class ValidationFailedError(MpcompileError):
    """The converted model is outside tolerance: exit code 1 after the results are printed."""

    exit_code = ExitCode.VALIDATION_FAILED


@click.command("validate")
@click.argument("original", type=click.Path(path_type=pathlib.Path))
@click.argument("converted", type=click.Path(path_type=pathlib.Path))
@click.option(
    "--ep",
    "eps",
    multiple=True,
    help="Execution providers, e.g. cuda,tensorrt,cpu (default: all available; an unavailable one asked for is an error).",
)
@click.option("--rtol", multiple=True, help="Relative tolerance, or NAME:VALUE for one output (repeatable).")
@click.option("--atol", multiple=True, help="Absolute tolerance, or NAME:VALUE for one output (repeatable).")
@click.option(
    "--inputs",
    "inputs_path",
    type=click.Path(path_type=pathlib.Path),
    help="An .npz file of inputs, or a folder of .npz files (one batch each). Default: generated.",
)
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    help="Shape of an input (NAME:1x3x224x224) or a symbolic dim (NAME:128).",
)
@click.option("--seed", default=0, show_default=True, help="Seed for generated inputs.")
@click.option(
    "--batches", default=1, show_default=True, type=click.IntRange(min=1), help="Generated input batches."
)
@click.option(
    "--runs",
    default=20,
    show_default=True,
    type=click.IntRange(min=0),
    help="Timed runs per model and EP (0: no latency).",
)
@click.option(
    "--warmup", default=3, show_default=True, type=click.IntRange(min=0), help="Untimed warm-up runs."
)
@click.option(
    "--faithful/--native-cpu",
    default=None,
    help="CPU accuracy FP16-faithful (default when no GPU EP runs) or native ORT CPU.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of tables.")
@click.option(
    "--save",
    type=click.Path(dir_okay=False, path_type=pathlib.Path),
    help="Write the JSON result to this file.",
)
def validate_command(
    original: pathlib.Path,
    converted: pathlib.Path,
    eps: tuple[str, ...],
    rtol: tuple[str, ...],
    atol: tuple[str, ...],
    inputs_path: pathlib.Path | None,
    shapes: tuple[str, ...],
    seed: int,
    batches: int,
    runs: int,
    warmup: int,
    faithful: bool | None,
    as_json: bool,
    save: pathlib.Path | None,
) -> None:
    """Compare CONVERTED against the FP32 ORIGINAL: accuracy per output and latency per EP.

    Both may be folders (from `convert FOLDER`): their models are paired by name and each pair
    is validated. Exit code 0 when every output is within tolerance on every EP that ran, 1 otherwise.
    """
    validate = validate_folders if original.is_dir() or converted.is_dir() else validate_and_report
    code = validate(
        original,
        converted,
        eps=eps,
        rtol=rtol,
        atol=atol,
        inputs=inputs_path,
        shapes=shapes,
        seed=seed,
        batches=batches,
        runs=runs,
        warmup=warmup,
        faithful=faithful,
        as_json=as_json,
        save=save,
    )
    if code != ExitCode.OK:
        raise ValidationFailedError(FAILED_MESSAGE)


FAILED_MESSAGE = "validation failed: outputs outside tolerance or new NaN/Inf (see above)"


def validate_or_raise(original: str | os.PathLike, converted: str | os.PathLike, **options) -> None:
    """For ``convert --validate``: print the validation and raise ``ValidationFailedError`` (exit 1)
    when it fails. ``options`` are those of ``validate_and_report``."""
    if validate_and_report(original, converted, **options) != ExitCode.OK:
        raise ValidationFailedError(FAILED_MESSAGE)


def validate_and_report(
    original: str | os.PathLike,
    converted: str | os.PathLike,
    *,
    as_json: bool = False,
    **options: Any,
) -> ExitCode:
    """Validate, print tables (or JSON), optionally save JSON; the exit code. Used by ``convert --validate``.

    ``options`` are those of ``validation_result``.
    """
    from rich.console import Console

    from mpcompile.validate import render

    result = validation_result(original, converted, **options)
    if as_json:
        click.echo(result.to_json())
    else:
        console = Console(file=sys.stdout, emoji=False, width=None if sys.stdout.isatty() else 160)
        render.render_result(result, console)
    return ExitCode.OK if result.passed else ExitCode.VALIDATION_FAILED


def validation_result(
    original: str | os.PathLike,
    converted: str | os.PathLike,
    *,
    save: str | os.PathLike | None = None,
    **options: Any,
) -> Any:
    """Validate (progress on stderr) and optionally save the JSON; the ``ValidationResult``, unprinted
    (``convert --json --validate`` puts it inside its one JSON object). ``options``: ``_validate``'s."""
    if save is not None:
        from mpcompile.io import overwrite_guard

        overwrite_guard.refuse_writing_over(save, overwrite_guard.RESULTS, [original, converted])
    result = _validate(original, converted, **options)
    if save is not None:
        _write_json(pathlib.Path(save), result.to_json())
    return result


def _validate(
    original: str | os.PathLike,
    converted: str | os.PathLike,
    *,
    eps: Sequence[str] = (),
    rtol: Sequence[str] = (),
    atol: Sequence[str] = (),
    inputs: str | os.PathLike | None = None,
    shapes: Sequence[str] = (),
    seed: int = 0,
    batches: int = 1,
    runs: int = 20,
    warmup: int = 3,
    faithful: bool | None = None,
):
    """``api.validate`` with the CLI's option strings parsed; progress lines on stderr."""
    from mpcompile.evaluate import inputs as model_inputs
    from mpcompile.validate import api, tolerances

    return api.validate(
        original,
        converted,
        eps=list(eps) or None,
        rtol=tolerances.parse_tolerance_options(rtol, option="--rtol"),
        atol=tolerances.parse_tolerance_options(atol, option="--atol"),
        inputs=inputs,
        shapes=model_inputs.parse_shape_options(shapes),
        seed=seed,
        batches=batches,
        runs=runs,
        warmup=warmup,
        faithful=faithful,
        log=lambda line: click.echo(line, err=True),
    )


def validate_folders(
    original: str | os.PathLike,
    converted: str | os.PathLike,
    *,
    inputs: str | os.PathLike | None = None,
    as_json: bool = False,
    save: str | os.PathLike | None = None,
    into: dict[str, Any] | None = None,
    **options,
) -> ExitCode:
    """``validate`` for two folders: the models are paired by relative path (a model on one side
    only is an error), each pair is validated as ``validate_and_report`` does, and the verdicts
    are summed up; one JSON document with a ``files`` list for ``--json``/``--save`` (``into``: that
    document goes into this dict and nothing is printed)."""
    import json

    from rich.console import Console
    from rich.table import Table

    from mpcompile import errors
    from mpcompile.io.export_folder import model_paths
    from mpcompile.text import markup
    from mpcompile.validate import render

    for path in (original, converted):
        if not pathlib.Path(path).is_dir():
            raise errors.UsageError(f"{path}: not a folder; validate two folders or two model files")
    if inputs is not None:
        raise errors.UsageError(
            "--inputs with folders: each model needs its own inputs; validate the files one by one"
        )
    originals, candidates = model_paths(original), model_paths(converted)
    missing, extra = sorted(set(originals) - set(candidates)), sorted(set(candidates) - set(originals))
    if missing or extra:
        parts = [f"missing in {converted}: {', '.join(missing)}"] if missing else []
        parts += [f"not in {original}: {', '.join(extra)}"] if extra else []
        raise errors.InputNotFoundError(f"the folders hold different models ({'; '.join(parts)})")
    if save is not None:
        from mpcompile.io import overwrite_guard

        overwrite_guard.refuse_writing_over(
            save, overwrite_guard.RESULTS, [*originals.values(), *candidates.values()]
        )
    console = Console(file=sys.stdout, emoji=False, width=None if sys.stdout.isatty() else 160)
    tables = not as_json and into is None
    verdicts: dict[str, bool] = {}
    documents = []
    for name in sorted(originals):
        if tables:
            console.rule(markup(name))
        result = _validate(originals[name], candidates[name], **options)
        verdicts[name] = result.passed
        documents.append({"file": name, **result.to_dict()})
        if tables:
            render.render_result(result, console)
    passed = all(verdicts.values())
    document = {"original": str(original), "converted": str(converted), "passed": passed, "files": documents}
    text = json.dumps(document, indent=2, allow_nan=False)
    if save is not None:
        _write_json(pathlib.Path(save), text)
    if into is not None:  # convert --json --validate: inside the caller's one JSON object
        into.update(document)
    elif as_json:
        click.echo(text)
    else:
        table = Table(title="folder", title_justify="left")
        table.add_column("file")
        table.add_column("verdict")
        for name, ok in verdicts.items():
            table.add_row(markup(name), "[green]PASSED[/]" if ok else "[red]FAILED[/]")
        console.print(table)
    return ExitCode.OK if passed else ExitCode.VALIDATION_FAILED


def _write_json(path: pathlib.Path, text: str) -> None:
    from mpcompile import errors

    path = path.absolute()
    if not path.parent.is_dir():
        raise errors.OutputNotWritableError(f"{path.parent}: output folder does not exist")
    temp = path.with_name(f".{path.name}.tmp")
    try:
        temp.write_text(text + "\n", encoding="utf-8")
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise errors.OutputNotWritableError(f"{path}: not writable ({exc.strerror})") from None
