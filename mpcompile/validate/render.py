"""Printing a ``ValidationResult`` as rich tables."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from mpcompile.text import markup
from mpcompile.validate.generative import JUDGE_FAITHFUL, JUDGE_NATIVE, GenerationResult, LayoutResult
from mpcompile.validate.results import ROLE_TRT_FP16_BASELINE, STATUS_SKIPPED, EpResult, ValidationResult


def render_result(result: ValidationResult, console: Console | None = None) -> None:
    """Accuracy table per EP row, a latency table, then the verdict."""
    console = console or Console(emoji=False)
    for row in result.eps:
        if row.status == STATUS_SKIPPED:
            console.print(f"[yellow]skipped[/] {row.provider}: {markup(row.reason)}")
            continue
        console.print(_accuracy_table(row))
        if row.reason:
            console.print(f"note: {markup(row.reason)}")
    latency = _latency_table(result)
    if latency.row_count:
        console.print(latency)
    for note in result.notes:
        console.print(f"note: {markup(note)}")
    verdict = "[bold green]PASSED[/]" if result.passed else "[bold red]FAILED[/]"
    console.print(
        f"{verdict} (rtol {result.rtol['default']:g}, atol {result.atol['default']:g}, {result.low_precision})"
    )


def _row_title(row: EpResult) -> str:
    what = "FP32 model, TensorRT FP16 mode" if row.role == ROLE_TRT_FP16_BASELINE else "converted model"
    mode = ", FP16/BF16-faithful CPU" if row.accuracy_mode == "fp16-faithful" else ""
    return f"{row.provider}: {what}{mode} vs FP32 reference: {row.status.upper()}"


# Two metrics stacked per column, so the table fits an 80-column terminal: numbers never fold or
# get cut (``no_wrap``); the output name and the verdict take what is left and fold.
ACCURACY_COLUMNS = (
    ("max abs", "max rel"),
    ("mean abs", "rel L2"),
    ("p99 abs", "cosine"),
    ("NaN/Inf", "top-1"),
)


def _accuracy_table(row: EpResult) -> Table:
    table = Table(title=markup(_row_title(row)), title_justify="left", show_lines=True)
    table.add_column("output", overflow="fold", ratio=1)
    for top, bottom in ACCURACY_COLUMNS:
        table.add_column(f"{top}\n{bottom}", justify="right", no_wrap=True)
    table.add_column("ok", overflow="fold", ratio=1)
    for output in row.outputs:
        nonfinite = f"{output.nan}/{output.inf}"
        if output.new_nonfinite:
            nonfinite += f" [red](+{output.new_nonfinite} new)[/]"
        top1 = "-" if output.top1_agreement is None else f"{output.top1_agreement:.2%}"
        verdict = "[green]yes[/]" if output.passed else f"[red]no[/]: {markup(output.failure)}"
        table.add_row(
            markup(output.name),
            f"{output.max_abs_err:.3g}\n{output.max_rel_err:.3g}",
            f"{output.mean_abs_err:.3g}\n{output.rel_l2_err:.3g}",
            f"{output.abs_err_percentiles.get('p99', 0.0):.3g}\n{output.cosine_similarity:.6f}",
            f"{nonfinite}\n{top1}",
            verdict,
        )
    return table


def _latency_table(result: ValidationResult) -> Table:
    table = Table(title="latency (ms, warm-up excluded)", title_justify="left")
    for column in ("EP", "model", "runs", "p50", "p90", "p99", "inf/s", "speedup"):
        table.add_column(column, justify="left" if column in ("EP", "model") else "right")
    for row in result.eps:
        if row.latency is None:
            continue
        label = "fp32 + TRT fp16 mode" if row.role == ROLE_TRT_FP16_BASELINE else "converted"
        for model, stats in (("fp32 original", row.latency.original), (label, row.latency.converted)):
            if stats is None:
                continue
            speedup = row.latency.speedup if model != "fp32 original" else None
            table.add_row(
                row.ep,
                model,
                str(stats.runs),
                f"{stats.p50_ms:.3f}",
                f"{stats.p90_ms:.3f}",
                f"{stats.p99_ms:.3f}",
                f"{stats.throughput_per_s:.1f}",
                "" if speedup is None else f"{speedup:.2f}x",
            )
    return table


def render_generation(result: GenerationResult, console: Console | None = None) -> None:
    """Per layout: a table per prompt (agreement, first diverging step, tokens) and one per step
    (worst logit cosine, top-1 and top-5 agreement over the prompts); then the verdict."""
    console = console or Console(emoji=False)
    judge = JUDGE_TITLES.get(result.judge, result.judge)
    console.print(f"prompts: {markup(result.prompts_source)}; candidate judged {judge}")
    for layout in result.layouts:
        files = " + ".join(layout.files)
        if layout.error:
            console.print(f"[red]generation failed[/] ({markup(files)}): {markup(layout.error)}")
            continue
        console.print(_prompt_table(layout, files))
        console.print(_step_table(layout))
    verdict = "[bold green]PASSED[/]" if result.passed else "[bold red]FAILED[/]"
    console.print(
        f"{verdict} generation: token agreement {_worst(result):.0%}, needed "
        f"{result.min_token_agreement:.0%} of {result.new_tokens} greedy steps on every prompt"
    )


JUDGE_TITLES = {
    JUDGE_FAITHFUL: "FP16-faithful (GPU rounding of FP16/BF16 outputs, CPU)",
    JUDGE_NATIVE: "on native ORT CPU",
}


def _worst(result: GenerationResult) -> float:
    return min((layout.token_agreement for layout in result.layouts), default=0.0)


def _prompt_table(layout: LayoutResult, files: str) -> Table:
    table = Table(title=f"greedy generation: {markup(files)}", title_justify="left")
    table.add_column("prompt", justify="right", no_wrap=True)
    table.add_column("agree", justify="right", no_wrap=True)
    table.add_column("first\ndiverging", justify="right", no_wrap=True)
    table.add_column("tokens: reference / candidate", overflow="fold", ratio=1)
    for index, prompt in enumerate(layout.prompts, start=1):
        step = prompt.first_divergence
        shown = slice(0, 8) if step is None else slice(max(0, step - 2), step + 4)
        reference = " ".join(map(str, prompt.reference_tokens[shown]))
        candidate = " ".join(map(str, prompt.candidate_tokens[shown]))
        where = "-" if step is None else f"step {step}"
        prefix = "" if shown.start == 0 else "… "
        table.add_row(
            f"{index} ({len(prompt.prompt)} ids)",
            f"{prompt.token_agreement:.0%}",
            where,
            f"{prefix}{markup(reference)} …\n{prefix}{markup(candidate)} …",
        )
    return table


def _step_table(layout: LayoutResult) -> Table:
    """Steps side by side in two halves, so 20 steps take 10 lines."""
    table = Table(title="logits per step (same context), worst over prompts", title_justify="left")
    half = (len(layout.steps) + 1) // 2
    for _ in range(2 if len(layout.steps) > 1 else 1):
        for column in ("step", "cosine", "top-1", "top-5"):
            table.add_column(column, justify="right", no_wrap=True)
    for row in range(half):
        cells: list[str] = []
        for step in (layout.steps[row], *layout.steps[row + half : row + half + 1]):
            cosine = "nan" if step.min_cosine is None else f"{step.min_cosine:.6f}"
            cells += [str(step.step), cosine, f"{step.top1_agreement:.0%}", f"{step.top5_agreement:.0%}"]
        table.add_row(*cells, *[""] * (len(table.columns) - len(cells)))
    return table
