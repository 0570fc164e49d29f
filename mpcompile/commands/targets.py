"""``mpcompile targets``: the execution targets, where their kernel data comes from, live differences."""

from __future__ import annotations

import json

import click


def targets_summary(live: bool = True) -> dict:
    """Targets, their data sources, and counts of ops with low-precision kernels (JSON-ready)."""
    from mpcompile.targets import get_target
    from mpcompile.targets import live as live_registry
    from mpcompile.targets.kernel_table import shipped_source
    from mpcompile.targets.registry import target_names

    rows = []
    for name in target_names():
        target = get_target(name, live=live)
        row = {"name": name, "provider": target.provider, "source": target.source, "live": False}
        row.update(target.describe())
        rows.append(row)
    return {
        "targets": rows,
        "shipped": shipped_source(),
        "live_runtime": live_registry.live_runtime_version(),
        "live_providers": live_registry.live_providers(),
    }


def live_differences() -> dict[str, list[dict]]:
    """For each provider with both live kernels and a shipped table: the differences as dicts."""
    from mpcompile.targets import compare_with_live
    from mpcompile.targets import live as live_registry
    from mpcompile.targets.kernel_table import shipped_providers

    providers = [p for p in live_registry.live_providers() if p in shipped_providers()]
    if not providers:
        # compare_with_live raises the right one-line error (no onnxruntime, or no such provider)
        compare_with_live("CPUExecutionProvider")
    return {provider: [d.to_dict() for d in compare_with_live(provider)] for provider in providers}


@click.command("targets")
@click.option(
    "--compare-live",
    is_flag=True,
    help="Compare the installed onnxruntime's kernels with the shipped tables.",
)
@click.option(
    "--no-live", is_flag=True, help="Describe the shipped tables only, ignoring the installed onnxruntime."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def targets_command(compare_live: bool, no_live: bool, as_json: bool) -> None:
    """List execution targets and the kernel data each answers from."""
    summary = targets_summary(live=not no_live)
    if compare_live:
        summary["differences"] = live_differences()
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    _print_summary(summary)


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 140))
    shipped = summary["shipped"]
    table = Table(title="mpcompile targets")
    for column in ("target", "provider", "answers from", "ops", "float16 ops", "bfloat16 ops"):
        table.add_column(column)
    for row in summary["targets"]:
        table.add_row(
            row["name"],
            row["provider"] or "-",
            row["source"],
            str(row.get("ops", "-")),
            str(row.get("ops_with_float16", "-")),
            str(row.get("ops_with_bfloat16", "-")),
        )
    console.print(table)
    console.print(
        f"shipped tables: {shipped['upstream']} @ {shipped['upstream_commit'][:12]} "
        f"(ORT {shipped['ort_version']}, sha256 {shipped['sha256'][:12]})"
    )
    runtime = summary["live_runtime"]
    providers = ", ".join(summary["live_providers"]) or "none"
    console.print(f"installed onnxruntime: {runtime or 'not installed'}; live kernels for: {providers}")
    for provider, differences in summary.get("differences", {}).items():
        diff_table = Table(title=f"{provider}: installed onnxruntime {runtime} vs shipped tables")
        for column in ("domain", "op", "versions", "difference", "only shipped", "only live"):
            diff_table.add_column(column)
        for row in differences:
            diff_table.add_row(
                row["domain"],
                row["op_type"],
                row["version_range"],
                row["kind"],
                _types(row["only_shipped"]),
                _types(row["only_live"]),
            )
        console.print(diff_table)
        console.print(f"{len(differences)} differences; mpcompile follows the installed build for {provider}")


def _types(by_parameter: dict[str, list[str]]) -> str:
    return "; ".join(f"{name}: {', '.join(types)}" for name, types in by_parameter.items())
