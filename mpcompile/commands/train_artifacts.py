"""``mpcompile train-artifacts``: mixed-precision ORT training artifacts for a forward model."""

from __future__ import annotations

import json
import pathlib

import click

from mpcompile.commands.conversion_options import node_selection_options, precision_option, target_option


@click.command("train-artifacts")
@click.argument("model", type=click.Path(dir_okay=False, path_type=pathlib.Path))
@click.option(
    "-o",
    "--output",
    "output_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    help="Artifact folder to write.",
)
@click.option(
    "--requires-grad",
    "requires_grad",
    multiple=True,
    metavar="NAME",
    help="Trainable parameter (repeat). Default: every FP32 initializer with more than one element, "
    "or used as a weight/bias, not frozen (the exporter's scalar constants stay constants).",
)
@click.option("--frozen", multiple=True, metavar="NAME", help="Frozen parameter (repeat).")
@click.option(
    "--loss",
    type=click.Choice(["crossentropy", "mse", "bcewithlogits", "l1"]),
    default="crossentropy",
    show_default=True,
)
@click.option(
    "--loss-input",
    metavar="OUTPUT",
    default=None,
    help="Graph output the loss is computed on. Default: the first output.",
)
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True)
@precision_option(["fp16", "bf16", "fp32"], help="fp32: plain ORT artifacts, no conversion.")
@target_option("any", choices=None)
@node_selection_options
@click.option("--no-loss-scaling", is_flag=True, help="Do not add the loss_scale input / all_finite output.")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def train_artifacts_command(
    model: pathlib.Path,
    output_dir: pathlib.Path,
    requires_grad: tuple[str, ...],
    frozen: tuple[str, ...],
    loss: str,
    loss_input: str | None,
    optimizer: str,
    precision: str,
    target: str,
    allow_ops: tuple[str, ...],
    block_ops: tuple[str, ...],
    block_nodes: tuple[str, ...],
    policy: pathlib.Path | None,
    no_loss_scaling: bool,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Generate ORT training artifacts for MODEL with FP16/BF16 compute and FP32 master weights.

    Needs onnxruntime-training (see tools/training_env.sh).
    """
    from mpcompile.training.generate import generate_training_artifacts

    core_options = {
        "target": target,
        "block_ops": block_ops,
        "allow_ops": allow_ops,
        "block_nodes": block_nodes,
    }
    if policy is not None:
        core_options["policy"] = policy
    stats = generate_training_artifacts(
        model,
        output_dir,
        requires_grad=list(requires_grad) or None,
        frozen=frozen,
        loss=loss,
        loss_input=loss_input,
        optimizer=optimizer,
        precision=None if precision == "fp32" else precision,
        loss_scaling=not no_loss_scaling,
        overwrite=overwrite,
        **core_options,
    )
    summary = {"model": str(model), "artifacts": str(output_dir), "precision": precision, **stats}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        forward = stats.get("forward", {})
        counts = ", ".join(f"{k}={v}" for k, v in forward.items())
        click.echo(f"{model} -> {output_dir}/ ({precision}{'; forward ' + counts if counts else ''})")


def convert_training_folder(
    artifacts_dir: pathlib.Path,
    output_dir: pathlib.Path | None,
    *,
    precision: str = "fp16",
    block_ops: tuple[str, ...] = (),
    block_nodes: tuple[str, ...] = (),
    overwrite: bool = False,
    as_json: bool = False,
    quiet: bool = False,
    check_invariants: bool = False,
    dump_dir: pathlib.Path | None = None,
) -> None:
    """``mpcompile convert --training ARTIFACTS_DIR -o OUT_DIR``: rewrite existing FP32 artifacts.

    The training graph (forward and backward) gets FP16/BF16 compute and loss scaling, the eval
    graph the same forward conversion; optimizer model and checkpoint are copied (FP32).
    ``check_invariants``/``dump_dir`` work as for ``convert``: checks and IR dumps after each pass
    (dumps under ``dump_dir/training`` and ``dump_dir/eval``).
    """
    from mpcompile.errors import TrainingError
    from mpcompile.training.artifacts import convert_artifacts
    from mpcompile.training.pipeline import PipelineSettings

    if output_dir is None:
        raise TrainingError("--training needs -o OUT_DIR (the converted artifact folder)")
    stats = convert_artifacts(
        artifacts_dir,
        output_dir,
        precision,
        overwrite=overwrite,
        block_ops=block_ops,
        block_nodes=block_nodes,
        settings=PipelineSettings(check_invariants=check_invariants, dump_dir=dump_dir),
    )
    if as_json:
        click.echo(
            json.dumps({"artifacts": str(artifacts_dir), "output": str(output_dir), **stats}, indent=2)
        )
    elif not quiet:
        for model, counts in stats.items():
            click.echo(
                f"{model}: {counts['low_precision_nodes']}/{counts['nodes']} nodes in {precision}, "
                f"{counts['casts_added']} Casts added"
            )
        click.echo(f"{artifacts_dir} -> {output_dir}/ (optimizer model and checkpoint copied, FP32)")
