"""``mpcompile train-artifacts``: forward conversion with the training policy, ORT's
``generate_artifacts``, then the loss-scaling pass.

Training policy for the forward graph: parameters (trainable and frozen) stay FP32 — they are
ORT's master weights — and each is cast to low precision once, shared by its low-precision uses;
graph outputs stay FP32, so the loss subgraph ORT appends computes in FP32. ORT's gradient builder
then emits, for each parameter's Cast, a Cast of the gradient back to FP32, so accumulation and
the optimizer stay FP32 (the tests check this).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import Any

import onnx_ir as ir

from mpcompile import errors
from mpcompile.core.plan import read_decision
from mpcompile.evaluate.ort_session import is_onnxruntime_error, onnxruntime_log_severity
from mpcompile.io import model_io
from mpcompile.irtools.names import NameAuthority
from mpcompile.policy import training_ops
from mpcompile.training.artifacts import ArtifactPaths, save_checked
from mpcompile.training.forward_model import (
    check_loss_input,
    loss_input_name,
    prepare_forward_model,
    training_proto,
)
from mpcompile.training.loss_blocks import classes_last_cross_entropy
from mpcompile.training.native_logs import native_info_logs_dropped
from mpcompile.training.parameters import default_trainable_parameters
from mpcompile.training.pipeline import finish_generated_graph

LOSSES = {
    "crossentropy": "CrossEntropyLoss",
    "mse": "MSELoss",
    "bcewithlogits": "BCEWithLogitsLoss",
    "l1": "L1Loss",
}
OPTIMIZERS = {"adamw": "AdamW", "sgd": "SGD"}


def convert_forward_for_training(
    model: ir.Model, parameters: Sequence[str], precision: str = "fp16", **core_options: Any
) -> tuple[ir.Model, dict[str, int]]:
    """Convert a forward graph with the training policy (see module docstring) using the core
    converter; ``core_options`` are ``mpcompile.convert`` options (block_ops, policy, target, ...).

    Returns the converted model (a new one) and counts for reporting.
    """
    from mpcompile.compiler.converter import convert

    graph = model.graph
    missing = [name for name in parameters if name not in graph.initializers]
    if missing:
        raise errors.TrainingError(
            f"parameters not found among the model's initializers: {', '.join(missing)}"
        )
    # The core keeps graph inputs FP32 (keep_io_types) and casts each once, shared by its
    # low-precision uses: lifting the parameters to inputs gives exactly the master-weight layout.
    tensors = {name: graph.initializers[name].const_value for name in parameters}
    core_options["block_ops"] = (*training_ops.FORWARD_BLOCK_OPS, *core_options.get("block_ops", ()))
    for name in parameters:
        graph.inputs.append(graph.initializers.pop(name))
    try:
        result = convert(model, precision=precision, keep_io_types=True, **core_options)
    finally:
        for name in parameters:
            value = next(v for v in graph.inputs if v.name == name)
            graph.inputs.remove(value)
            graph.register_initializer(value)
    converted = result.model
    for name in parameters:
        value = next(v for v in converted.graph.inputs if v.name == name)
        if value.dtype != ir.DataType.FLOAT:
            raise errors.TrainingError(f"parameter {name!r} did not stay FP32 (keep_io_types)")
        converted.graph.inputs.remove(value)
        value.const_value = tensors[name]
        converted.graph.register_initializer(value)
    expose_layer_norm_statistics(converted)
    converted.graph.sort()
    counts = dict(result.stats.nodes_by_precision)
    return converted, {
        **{f"nodes_{k}": v for k, v in counts.items()},
        "casts_added": result.stats.casts_added,
    }


def expose_layer_norm_statistics(model: ir.Model) -> int:
    """Give every LayerNormalization named Mean/InvStdDev outputs (ORT 1.19.2's gradient needs them)."""
    added = 0
    names = NameAuthority(model)
    for node in model.graph:
        if node.op_type != "LayerNormalization" or node.domain not in ("", "ai.onnx"):
            continue
        if len(node.outputs) >= 3 and all(out.name for out in node.outputs):
            continue
        base = node.outputs[0].name or node.name or "layer_norm"
        new_node = ir.node(
            "LayerNormalization",
            inputs=list(node.inputs),
            attributes=dict(node.attributes),
            name=node.name,
            outputs=[
                ir.Value(
                    name=names.unique(f"{base}.normalized"),
                    type=node.outputs[0].type,
                    shape=node.outputs[0].shape,
                ),
                ir.Value(name=names.unique(f"{base}.mean")),
                ir.Value(name=names.unique(f"{base}.inv_std_dev")),
            ],
            metadata_props=dict(node.metadata_props),
        )
        model.graph.insert_before(node, new_node)
        old = node.outputs[0]
        if old.is_graph_output():
            position = next(i for i, out in enumerate(model.graph.outputs) if out is old)
            model.graph.outputs[position] = new_node.outputs[0]
            new_name = old.name
            old.name = names.unique(f"{new_name}.replaced")
            new_node.outputs[0].name = new_name
        old.replace_all_uses_with(new_node.outputs[0])
        model.graph.remove(node, safe=True)
        added += 1
    return added


def generate_training_artifacts(
    model_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    requires_grad: Sequence[str] | None = None,
    frozen: Sequence[str] = (),
    loss: str = "crossentropy",
    optimizer: str = "adamw",
    precision: str | None = "fp16",
    loss_scaling: bool = True,
    overwrite: bool = False,
    loss_input: str | None = None,
    **core_options: Any,
) -> dict[str, dict[str, int]]:
    """Mixed-precision ORT training artifacts for a forward model (``precision=None``: plain FP32).

    ``requires_grad=None`` trains the parameters ``default_trainable_parameters`` finds (not the
    exporter's scalar constants). The loss is computed on ``loss_input`` (default: the first
    graph output). ``core_options`` go to the forward conversion (``mpcompile.convert`` options
    except ``precision`` and ``keep_io_types``, which the training policy fixes)."""
    artifacts_api = _artifacts_api()
    model = model_io.load_model(model_path)
    ir.external_data.load_to_model(model)
    model = prepare_forward_model(model)
    loss_input = loss_input_name(model, loss_input)
    frozen = list(frozen)
    if requires_grad is None:
        requires_grad = default_trainable_parameters(model.graph, frozen, loss_input)
    requires_grad = list(requires_grad)
    overlap = sorted(set(requires_grad) & set(frozen))
    if overlap:
        raise errors.TrainingError(f"parameters both trainable and frozen: {', '.join(overlap)}")
    if not requires_grad:
        raise errors.TrainingError("no trainable parameters (no FP32 initializers, or all frozen)")
    if loss not in LOSSES:
        raise errors.TrainingError(f"unknown loss {loss!r}; expected one of {sorted(LOSSES)}")
    if optimizer not in OPTIMIZERS:
        raise errors.TrainingError(f"unknown optimizer {optimizer!r}; expected one of {sorted(OPTIMIZERS)}")
    output_dir = pathlib.Path(output_dir).absolute()
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise errors.OutputNotWritableError(f"{output_dir}: output folder is not empty (use --overwrite)")
    output_dir.mkdir(parents=True, exist_ok=True)  # generate_artifacts 1.19.2 needs it to exist

    stats: dict[str, dict[str, int]] = {}
    if precision is not None:
        model, stats["forward"] = convert_forward_for_training(
            model, [*requires_grad, *frozen], precision, **core_options
        )
    else:
        expose_layer_norm_statistics(model)
    proto = training_proto(model)
    scores_rank = check_loss_input(proto, loss_input, loss)
    loss_block = getattr(artifacts_api.LossType, LOSSES[loss])
    if scores_rank is not None and scores_rank >= 3:
        loss_block = classes_last_cross_entropy(scores_rank)
    try:
        with onnxruntime_log_severity(3), native_info_logs_dropped():
            artifacts_api.generate_artifacts(
                proto,
                requires_grad=requires_grad,
                frozen_params=frozen,
                loss=loss_block,
                optimizer=getattr(artifacts_api.OptimType, OPTIMIZERS[optimizer]),
                artifact_directory=str(output_dir),
                loss_input_names=[loss_input],
            )
    except Exception as exc:  # onnx's checker, called by onnxruntime.training, counts as onnxruntime's
        if not is_onnxruntime_error(exc):
            raise
        raise errors.TrainingError(
            f"onnxruntime could not build the training graph: {_first_line(exc)}"
        ) from None
    paths = ArtifactPaths.find(output_dir)
    if precision is not None:
        forward_decisions = {
            node.outputs[0].name: decision
            for node in model.graph
            if node.outputs and (decision := read_decision(node)) is not None
        }
        for graph, path, scale in (
            ("training", paths.training_model, loss_scaling),
            ("eval", paths.eval_model, False),
        ):
            if path is None:
                continue
            generated = model_io.load_model(path)
            context = finish_generated_graph(
                generated, precision, forward_decisions, loss_scaling=scale, graph=graph
            )
            stats[graph] = {"pass_seconds": context.stats.pass_seconds}
            save_checked(generated, path)
    return stats


def _artifacts_api():
    try:
        from onnxruntime.training import artifacts
    except ImportError:
        raise errors.RuntimeMissingError(
            "onnxruntime-training is not installed; create the training environment with tools/training_env.sh"
        ) from None
    return artifacts


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
