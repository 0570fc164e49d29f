"""The ``--auto`` option set of ``mpcompile convert`` and the code it runs.

Wiring (in ``mpcompile/commands/convert.py``)::

    from mpcompile.commands.auto_options import auto_options, auto_settings, run_auto_from_cli

    @click.command("convert")
    ...                      # the existing options
    @auto_options            # adds --auto --inputs --shape --rtol --atol --metric --budget
    def convert_command(model, output, precision, ...):
        settings = auto_settings()
        if settings is not None:
            run_auto_from_cli(
                model, output, settings, overwrite=overwrite, external_data=external_data,
                as_json=as_json, quiet=quiet, report_path=report_path,
                options=options,  # the one ConvertOptions the command built
            )
            return
        ...                  # the plain conversion

The options do not change the command's signature (``expose_value=False``); ``auto_settings()``
reads them from the click context and refuses ``--inputs``/``--rtol``/... without ``--auto``.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from mpcompile.auto import DEFAULT_BUDGET

if TYPE_CHECKING:
    from mpcompile.compiler.options import ConvertOptions

_META_KEY = "mpcompile.auto.options"


@dataclasses.dataclass(frozen=True)
class AutoSettings:
    """What the user asked of ``--auto``."""

    inputs: pathlib.Path | None = None  # None: generated
    shapes: tuple[str, ...] = ()
    rtol: float | None = None
    atol: float | None = None
    metric: str | None = None
    budget: int = DEFAULT_BUDGET
    static_blocks: bool = False  # keep the core's whole block list FP32 (no measured ops)
    prompts: pathlib.Path | None = None  # folders: the search's generation prompts (None: generated)
    new_tokens: int | None = None  # folders: greedy tokens per prompt the search checks


def _store(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta.setdefault(_META_KEY, {})[param.name] = value
    return value


def auto_options(command: Callable) -> Callable:
    """Add ``--auto --inputs --shape --rtol --atol --metric --budget --keep-static-blocks`` to a
    click command."""
    options = [
        click.option(
            "--auto",
            "auto",
            is_flag=True,
            help="Search for the most FP16 that keeps the outputs within tolerance (FP16-faithful runs).",
        ),
        click.option(
            "--inputs",
            "auto_inputs",
            metavar="PATH|generated",
            help="--auto: an .npz of inputs or a folder of them (one batch each) [default: generated].",
        ),
        click.option(
            "--shape",
            "auto_shapes",
            multiple=True,
            metavar="NAME:DIMS",
            help="--auto: shape of a generated input (NAME:1x128) or symbolic dim (NAME:128).",
        ),
        click.option(
            "--rtol",
            "auto_rtol",
            type=float,
            help="--auto: per-element relative tolerance (with --atol) [default: a measure per output, see --metric].",
        ),
        click.option(
            "--atol",
            "auto_atol",
            type=float,
            help="--auto: per-element absolute tolerance (with --rtol; 1e-2 when only --rtol is given).",
        ),
        click.option(
            "--metric",
            "auto_metric",
            metavar="NAME:VALUE",
            help="--auto: cosine:0.9999, rel-l2:1e-3 or max-abs:0.05 for every output. Default: logits "
            "cosine >= 0.999 with top-1 in top-5, other outputs rel-l2 <= 1e-2 (docs/auto.md).",
        ),
        click.option(
            "--budget",
            "auto_budget",
            type=click.IntRange(min=2),
            default=DEFAULT_BUDGET,
            show_default=True,
            help="--auto: most model evaluations (runs of the reference or a candidate), reference included.",
        ),
        click.option(
            "--keep-static-blocks",
            "auto_static_blocks",
            is_flag=True,
            help="--auto: keep the default policy's whole block list FP32. Without it, overflow-prone "
            "ops (Exp, Pow, Log, ...) and reductions (ReduceSum, CumSum, ...) are converted unless the "
            "reference run's range rules or the search keep them FP32. Give representative --inputs: "
            "the overflow rule leaves values 2x headroom over the largest measured, which for Exp "
            "means inputs only ~0.69 larger.",
        ),
        click.option(
            "--prompts",
            "auto_prompts",
            type=click.Path(path_type=pathlib.Path),
            help="--auto on an export folder: token-id prompts, one a line, for the FP32 pipeline run "
            "that feeds each file and for the greedy-generation check of candidates [default: generated].",
        ),
        click.option(
            "--new-tokens",
            "auto_new_tokens",
            type=click.IntRange(min=1),
            help="--auto on an export folder: greedy tokens per prompt a candidate must reproduce [default: 20].",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    # click.option appends to f.__click_params__ (a function) or command.params (a Command).
    params = command.params if isinstance(command, click.Command) else command.__click_params__
    for param in params[-len(options) :]:
        param.expose_value = False
        param.callback = _store
    return command


def auto_settings(ctx: click.Context | None = None) -> AutoSettings | None:
    """The ``--auto`` settings of the running command, or None without ``--auto``."""
    ctx = ctx or click.get_current_context()
    values = ctx.meta.get(_META_KEY, {})
    if not values.get("auto"):
        given = [
            f"--{name.removeprefix('auto_').replace('_', '-')}"
            for name in (
                "auto_inputs",
                "auto_rtol",
                "auto_atol",
                "auto_metric",
                "auto_prompts",
                "auto_new_tokens",
            )
            if values.get(name) is not None
        ]
        if values.get("auto_shapes"):
            given.append("--shape")
        if values.get("auto_static_blocks"):
            given.append("--keep-static-blocks")
        if values.get("auto_budget", DEFAULT_BUDGET) != DEFAULT_BUDGET:
            given.append("--budget")
        if given:
            raise click.UsageError(f"{', '.join(given)}: only with --auto")
        return None
    inputs = values.get("auto_inputs")
    return AutoSettings(
        inputs=None if inputs in (None, "generated") else pathlib.Path(inputs),
        shapes=tuple(values.get("auto_shapes") or ()),
        rtol=values.get("auto_rtol"),
        atol=values.get("auto_atol"),
        metric=values.get("auto_metric"),
        budget=values.get("auto_budget", DEFAULT_BUDGET),
        static_blocks=bool(values.get("auto_static_blocks")),
        prompts=values.get("auto_prompts"),
        new_tokens=values.get("auto_new_tokens"),
    )


def run_auto_from_cli(
    model: pathlib.Path,
    output: pathlib.Path,
    settings: AutoSettings,
    *,
    overwrite: bool = False,
    external_data: bool | None = None,
    as_json: bool = False,
    quiet: bool = False,
    report_path: pathlib.Path | None = None,
    options: ConvertOptions | None = None,
    progress: bool = True,
) -> Any:
    """Run ``auto_convert`` on ``model`` with the conversion ``options``, save the result
    atomically at ``output`` and print it (``report_path``: also write ``mpcompile report``'s
    audit of the result there). ``progress``: a transient progress bar on stderr while the
    search runs, when stderr is a terminal."""
    from mpcompile.auto.api import auto_convert_file
    from mpcompile.auto.progress import ProgressBar
    from mpcompile.evaluate.inputs import parse_shape_options

    if settings.prompts is not None or settings.new_tokens is not None:
        raise click.UsageError("--prompts and --new-tokens: only for --auto on an export folder")
    if report_path is not None:
        from mpcompile.report import format_for_path

        format_for_path(report_path)  # fail on a bad extension before the search
    source, target = pathlib.Path(model).absolute(), pathlib.Path(output).absolute()
    with ProgressBar(disabled=not progress) as on_evaluation:
        result = auto_convert_file(
            source,
            target,
            overwrite=overwrite,
            external_data=external_data,
            inputs=settings.inputs,
            shapes=parse_shape_options(settings.shapes),
            rtol=settings.rtol,
            atol=settings.atol,
            metric=settings.metric,
            budget=settings.budget,
            static_blocks=settings.static_blocks,
            options=options,
            progress=on_evaluation,
        )
    if report_path is not None:
        from mpcompile.report import write_report

        write_report(target, report_path, original=source)
    if as_json:
        click.echo(json.dumps({"input": str(model), "output": str(output), **result.summary()}, indent=2))
    elif not quiet:
        print_auto_summary(result, model, output)
    return result


SHOWN_KEPT = 3  # node names in the summary's kept-FP32 row; the rest are in --json / --report


def print_auto_summary(result: Any, source: pathlib.Path | str = "", output: pathlib.Path | str = "") -> None:
    """The search as one table (verdict, shares, evaluations, kept-FP32 counts, conversion
    facts), then its notes and warnings; node lists and the trace are left to --json/--report."""
    from rich.console import Console
    from rich.table import Table

    from mpcompile.analysis.flop_share import heavy_flops
    from mpcompile.text import markup

    console = Console(emoji=False)  # :name: in a model string stays text
    convert_result = result.convert_result
    stats = convert_result.stats
    title = f"{markup(source)} -> {markup(output)} ({convert_result.precision}, target {convert_result.target}, --auto)"
    table = Table(title=title if source else None, show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("")
    verdict = "[green]meets[/]" if result.passed else "[red]does not meet[/]"
    table.add_row(
        "accuracy",
        f"{verdict} {markup(result.criterion.describe())} (error {result.error:.3g}, limit {result.criterion.limit:.3g})",
    )
    heavy = heavy_flops(convert_result.model)
    table.add_row(
        "low-precision FLOPs",
        f"{result.fp16_flop_share:.1%} of all; heavy (MatMul/Gemm/Conv) FP32 {heavy.fp32_share:.1%}",
    )
    table.add_row(
        "evaluations",
        f"{result.evaluations} (budget {result.budget}) in {result.sessions} ONNX Runtime session(s), "
        f"{len(result.trace)} trace step(s)",
    )
    table.add_row("inputs", markup(result.inputs))
    nodes = ", ".join(f"{precision} {count}" for precision, count in sorted(stats.nodes_by_precision.items()))
    table.add_row("nodes", nodes)
    table.add_row("kept FP32 by --auto", markup(_kept_summary(result)))
    table.add_row(
        "Casts in the model", f"{stats.casts_before} -> {stats.casts_after} ({stats.casts_added:+d})"
    )
    table.add_row("time", f"{result.seconds:.1f} s")
    table.add_row("details", "search trace and node lists: --json or --report FILE")
    console.print(table)
    for note in result.notes:
        console.print(f"note: {markup(note)}")
    for warning in getattr(result, "warnings", ()):
        console.print(f"[yellow]warning:[/] {markup(warning)}")


def _kept_summary(result: Any) -> str:
    """``auto:range 2, auto:sensitivity 1: a, b, c (and 1 more)``, or ``none``."""
    names = [*sorted(result.range_blocked), *sorted(result.sensitivity_blocked)]
    if not names:
        return "none"
    counts = ", ".join(
        f"{reason} {len(kept)}"
        for reason, kept in (
            ("auto:range", result.range_blocked),
            ("auto:sensitivity", result.sensitivity_blocked),
        )
        if kept
    )
    shown = ", ".join(names[:SHOWN_KEPT])
    more = f" (and {len(names) - SHOWN_KEPT} more)" if len(names) > SHOWN_KEPT else ""
    return f"{counts}: {shown}{more}"
