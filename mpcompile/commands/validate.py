"""``mpcompile validate ORIGINAL CONVERTED``: accuracy and latency on ONNX Runtime EPs."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import click

from mpcompile.errors import ExitCode, MpcompileError, UsageError


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
@click.option(
    "--prompts",
    "prompts_path",
    type=click.Path(path_type=pathlib.Path),
    help="Folders: token-id prompts for greedy generation, one prompt a line. Default: generated.",
)
@click.option(
    "--new-tokens",
    type=click.IntRange(min=1),
    help="Folders: greedy steps per prompt (default 20).",
)
@click.option(
    "--min-token-agreement",
    type=click.FloatRange(0.0, 1.0),
    help="Folders: least share of steps before the first diverging token, per prompt (default 1).",
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
    prompts_path: pathlib.Path | None,
    new_tokens: int | None,
    min_token_agreement: float | None,
    as_json: bool,
    save: pathlib.Path | None,
) -> None:
    """Compare CONVERTED against the FP32 ORIGINAL: accuracy per output and latency per EP.

    Both may be folders (from `convert FOLDER`): their models are paired by name and each pair
    is validated. A generative export folder (decoder-only, merged decoder, encoder-decoder) is
    judged by greedy generation instead: identical tokens for 20 steps on every prompt by default.
    Exit code 0 when everything passes, 1 otherwise.
    """
    generation_options = GenerationOptions(prompts_path, new_tokens, min_token_agreement)
    folders = original.is_dir() or converted.is_dir()
    if not folders and generation_options.given():
        raise UsageError("--prompts, --new-tokens and --min-token-agreement apply to export folders")
    extra = {"generation": generation_options} if folders else {}
    validate = validate_folders if folders else validate_and_report
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
        **extra,
    )
    if code != ExitCode.OK:
        raise ValidationFailedError(FAILED_MESSAGE)


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """The generation check's options of ``validate`` (None: the default)."""

    prompts: pathlib.Path | None = None
    new_tokens: int | None = None
    min_token_agreement: float | None = None

    def given(self) -> bool:
        """True when any option was given on the command line."""
        return any(value is not None for value in dataclasses.astuple(self))


FAILED_MESSAGE = (
    "validation failed: outputs outside tolerance, new NaN/Inf or greedy tokens that differ (see above)"
)


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
    generation: GenerationOptions | None = None,
    **options,
) -> ExitCode:
    """``validate`` for two folders: the models are paired by relative path (a model on one side
    only is an error). When the original is a generative export folder, the files its generation
    loops run are judged by greedy generation (``generative.validate_generation``); every other
    pair is validated as ``validate_and_report`` does, and the verdicts are summed up; one JSON
    document with a ``files`` list and a ``generation`` object for ``--json``/``--save``
    (``into``: that document goes into this dict and nothing is printed)."""
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
    check = _GenerationCheck(
        pathlib.Path(original), pathlib.Path(converted), generation or GenerationOptions()
    )
    verdicts: dict[str, bool] = {}
    documents = []
    for name in sorted(originals):
        if name in check.files:
            continue
        if tables:
            console.rule(markup(name))
        result = _validate(originals[name], candidates[name], **options)
        verdicts[name] = result.passed
        documents.append({"file": name, **result.to_dict()})
        if tables:
            render.render_result(result, console)
    generated = check.run(faithful=options.get("faithful"), seed=options.get("seed", 0))
    if generated is not None:
        verdicts["greedy generation"] = generated.passed
        if tables:
            console.rule("greedy generation")
            render.render_generation(generated, console)
    passed = all(verdicts.values())
    document = {
        "original": str(original),
        "converted": str(converted),
        "passed": passed,
        "files": documents,
        "generation": None if generated is None else generated.to_dict(),
        "generation_note": check.note,
    }
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
        if check.note:
            console.print(f"note: {markup(check.note)}")
    return ExitCode.OK if passed else ExitCode.VALIDATION_FAILED


class _GenerationCheck:
    """Which files of a folder pair the generation check covers, its prompts, and its run."""

    def __init__(self, original: pathlib.Path, converted: pathlib.Path, options: GenerationOptions) -> None:
        from mpcompile.validate import generation, generative

        self.original, self.converted, self.options = original, converted, options
        self.files: tuple[str, ...] = ()
        self.note = ""
        try:
            layouts = generative.generation_layouts(original)
        except generation.NotGenerativeError:
            layouts = []
        except generation.GenerationError as error:  # e.g. a decoder fed inputs_embeds
            layouts = []
            self.note = f"no generation check (files validated one by one): {error}"
        if options.given() and not layouts:
            raise UsageError(
                f"{original}: not a generative export folder, so --prompts, --new-tokens and "
                "--min-token-agreement do not apply"
            )
        self.files = tuple(sorted({name for layout in layouts for name in layout.files}))
        self.prompts = None
        if self.files and options.prompts is not None:
            self.prompts = generative.read_prompts(options.prompts)

    def run(self, *, faithful: bool | None, seed: int) -> Any:
        """The ``GenerationResult``, or None when the folder is not generative."""
        if not self.files:
            return None
        from mpcompile.validate import generative

        options = self.options
        return generative.validate_generation(
            self.original,
            self.converted,
            prompts=self.prompts,
            prompts_source=f"--prompts {options.prompts}" if options.prompts else "",
            new_tokens=options.new_tokens or generative.DEFAULT_NEW_TOKENS,
            min_token_agreement=(
                generative.DEFAULT_MIN_TOKEN_AGREEMENT
                if options.min_token_agreement is None
                else options.min_token_agreement
            ),
            faithful=faithful,
            seed=seed,
        )


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
