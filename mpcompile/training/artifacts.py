"""ORT training artifact folders: find the files, read their structure, rewrite them to mixed precision.

A folder from ``onnxruntime.training.artifacts.generate_artifacts`` holds ``training_model.onnx``,
``eval_model.onnx``, ``optimizer_model.onnx`` and ``checkpoint`` (optionally with a prefix).
``convert_artifacts`` rewrites the training and eval graphs; the optimizer model and the checkpoint
(the FP32 master weights) are copied unchanged.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
from typing import Any

import onnx
import onnx_ir as ir

from mpcompile import errors
from mpcompile.core.plan import MODEL_PRECISION_KEY, PRECISION_KEY
from mpcompile.core.precision import Precision, low_precision_format
from mpcompile.io import model_io, overwrite_guard
from mpcompile.passes.loss_scaling import ACCUMULATION_BUFFER_SUFFIX, LOSS_SCALE_INPUT
from mpcompile.policy import training_ops
from mpcompile.training import pipeline
from mpcompile.training.pipeline import DEFAULT_SETTINGS, PipelineSettings

TRAINING_MODEL = "training_model.onnx"
EVAL_MODEL = "eval_model.onnx"
OPTIMIZER_MODEL = "optimizer_model.onnx"
CHECKPOINT = "checkpoint"
LAZY_RESET_GRAD = "lazy_reset_grad"


@dataclasses.dataclass(frozen=True)
class ArtifactPaths:
    """The files of one artifact folder (eval and optimizer models may be absent)."""

    directory: pathlib.Path
    training_model: pathlib.Path
    eval_model: pathlib.Path | None
    optimizer_model: pathlib.Path | None
    checkpoint: pathlib.Path

    @classmethod
    def find(cls, directory: str | os.PathLike, prefix: str = "") -> ArtifactPaths:
        directory = pathlib.Path(directory).absolute()
        if not directory.is_dir():
            raise errors.InputNotFoundError(f"{directory}: no such artifact folder")
        training = directory / f"{prefix}{TRAINING_MODEL}"
        checkpoint = directory / f"{prefix}{CHECKPOINT}"
        if not training.is_file():
            raise errors.TrainingError(
                f"{directory}: no {training.name} (not an ORT training artifact folder)"
            )
        if not checkpoint.exists():
            raise errors.TrainingError(
                f"{directory}: no {checkpoint.name} (not an ORT training artifact folder)"
            )
        eval_model = directory / f"{prefix}{EVAL_MODEL}"
        optimizer = directory / f"{prefix}{OPTIMIZER_MODEL}"
        return cls(
            directory,
            training,
            eval_model if eval_model.is_file() else None,
            optimizer if optimizer.is_file() else None,
            checkpoint,
        )


@dataclasses.dataclass(frozen=True)
class TrainingGraphLayout:
    """The roles of a training graph's inputs and outputs."""

    user_inputs: list[str]
    parameters: list[str]
    trainable_parameters: list[str]
    accumulation_buffers: list[str]
    loss: str
    extra_outputs: list[str]

    @classmethod
    def of(cls, graph: ir.Graph) -> TrainingGraphLayout:
        names = [value.name or "" for value in graph.inputs]
        buffers = [n for n in names if n.endswith(ACCUMULATION_BUFFER_SUFFIX)]
        trainable = [n[: -len(ACCUMULATION_BUFFER_SUFFIX)] for n in buffers]
        if not buffers or LAZY_RESET_GRAD not in names:
            raise errors.TrainingError(
                "not an ORT training graph: no gradient accumulation buffers / lazy_reset_grad"
            )
        first_parameter = min(names.index(n) for n in trainable)
        parameters = [
            n
            for n in names[first_parameter:]
            if n not in buffers and n not in (LAZY_RESET_GRAD, LOSS_SCALE_INPUT)
        ]
        user_inputs = [n for n in names[:first_parameter] if n != LOSS_SCALE_INPUT]
        outputs = [value.name or "" for value in graph.outputs]
        return cls(
            user_inputs=user_inputs,
            parameters=parameters,
            trainable_parameters=trainable,
            accumulation_buffers=buffers,
            loss=outputs[0],
            extra_outputs=[n for n in outputs[1:] if not n.endswith("_grad.accumulation.out")],
        )


def convert_training_graph(
    model: ir.Model,
    precision: str = "fp16",
    *,
    loss_scaling: bool = True,
    block_ops: tuple[str, ...] = (),
    block_nodes: tuple[str, ...] = (),
    settings: PipelineSettings = DEFAULT_SETTINGS,
    graph: str = "training",
) -> dict[str, Any]:
    """Rewrite a training (or eval) graph in place to mixed precision with the training pipeline
    (``mpcompile.training.pipeline``); return counts and pass timings for reporting."""
    low_precision_format(precision)  # an unknown precision is refused before anything changes
    _refuse_low_precision(model)
    context = pipeline.run_training_pipeline(
        model,
        precision,
        loss_scaling=loss_scaling,
        block_ops=block_ops,
        block_nodes=block_nodes,
        settings=settings,
        graph=graph,
    )
    counts = context.stats.nodes_by_precision
    return {
        "nodes": sum(counts.values()),
        "low_precision_nodes": counts[context.low.precision.value],
        "casts_added": context.stats.casts_inserted,
        "pass_seconds": {name: round(seconds, 6) for name, seconds in context.stats.pass_seconds.items()},
    }


def convert_artifacts(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    precision: str = "fp16",
    *,
    prefix: str = "",
    overwrite: bool = False,
    block_ops: tuple[str, ...] = (),
    block_nodes: tuple[str, ...] = (),
    settings: PipelineSettings = DEFAULT_SETTINGS,
) -> dict[str, dict[str, Any]]:
    """Convert an FP32 artifact folder: training graph (with loss scaling) and eval graph rewritten,
    optimizer model and checkpoint copied unchanged (FP32 master weights and optimizer state)."""
    paths = ArtifactPaths.find(source, prefix)
    destination = pathlib.Path(destination).absolute()
    if destination.resolve() == paths.directory.resolve():
        raise errors.OutputIsInputError(f"{destination}: the output folder is the input folder")
    if destination.exists() and any(destination.iterdir()) and not overwrite:
        raise errors.OutputNotWritableError(f"{destination}: output folder is not empty (use --overwrite)")
    _refuse_writing_over_sources(paths, destination)
    destination.mkdir(parents=True, exist_ok=True)
    stats: dict[str, dict[str, Any]] = {}

    training = model_io.load_model(paths.training_model)
    TrainingGraphLayout.of(training.graph)  # refuse anything that is not a training graph
    complete_buffer_shapes(training.graph)
    stats["training"] = convert_training_graph(
        training, precision, block_ops=block_ops, block_nodes=block_nodes, settings=settings
    )
    save_checked(training, destination / paths.training_model.name)
    if paths.eval_model is not None:
        evaluation = model_io.load_model(paths.eval_model)
        stats["eval"] = convert_training_graph(
            evaluation,
            precision,
            loss_scaling=False,
            block_ops=block_ops,
            block_nodes=block_nodes,
            settings=settings,
            graph="eval",
        )
        save_checked(evaluation, destination / paths.eval_model.name)
    if paths.optimizer_model is not None:
        shutil.copyfile(paths.optimizer_model, destination / paths.optimizer_model.name)
    if paths.checkpoint.is_dir():
        shutil.copytree(paths.checkpoint, destination / paths.checkpoint.name, dirs_exist_ok=True)
    else:
        shutil.copyfile(paths.checkpoint, destination / paths.checkpoint.name)
    return stats


def _refuse_writing_over_sources(paths: ArtifactPaths, destination: pathlib.Path) -> None:
    """No file the conversion writes in ``destination`` may be a source file (a hardlink or
    symlink to one, in a copied folder): ``OutputIsInputError``."""
    read: dict[pathlib.Path, str] = {}
    written: dict[pathlib.Path, str] = {}
    for model in (paths.training_model, paths.eval_model):
        if model is not None:
            read.update(overwrite_guard.model_files(model_io.files_read(model)))
            written.update(overwrite_guard.output_files(destination / model.name))
    copied = [paths.checkpoint] if paths.checkpoint.is_file() else sorted(paths.checkpoint.rglob("*"))
    if paths.optimizer_model is not None:
        copied.append(paths.optimizer_model)
    for source in copied:
        read[source] = "the source file"
        written[destination / source.relative_to(paths.directory)] = "the copy"
    overwrite_guard.refuse_overwriting_inputs(read, written)


def complete_buffer_shapes(graph: ir.Graph) -> int:
    """Give each gradient accumulation buffer without a shape its parameter's shape; return how many.

    ORT 1.19.2 writes a scalar parameter's buffer (``<p>_grad.accumulation.buffer``) without a
    shape field, which the onnx checker refuses for a graph input."""
    inputs = {value.name: value for value in graph.inputs}
    completed = 0
    for name, value in inputs.items():
        if not (name or "").endswith(ACCUMULATION_BUFFER_SUFFIX) or value.shape is not None:
            continue
        parameter = inputs.get(name[: -len(ACCUMULATION_BUFFER_SUFFIX)])
        if parameter is not None and parameter.shape is not None:
            value.shape = ir.Shape(parameter.shape)
            completed += 1
    return completed


def save_checked(model: ir.Model, path: pathlib.Path) -> None:
    """Check a training-side model with the onnx checker, then save it atomically."""
    complete_buffer_shapes(model.graph)
    check_training_model(ir.to_proto(model))
    model_io.save_model(model, path)


def check_training_model(proto: onnx.ModelProto) -> None:
    """``onnx.checker.check_model(full_check=True)``, except for ORT training ops that ORT
    registers in the ONNX domain (MaxPoolGrad, ...): onnx has no schema for them, so the
    check runs on a copy where those nodes are moved to ORT's ``com.microsoft`` domain."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    moved = False
    for node in copy.graph.node:
        if node.domain in ("", "ai.onnx") and node.op_type in training_ops.ORT_TRAINING_OPS_IN_ONNX_DOMAIN:
            if onnx.defs.has(node.op_type):
                continue
            node.domain = "com.microsoft"
            moved = True
    if moved and not any(o.domain == "com.microsoft" for o in copy.opset_import):
        copy.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    copy.ir_version = min(copy.ir_version, model_io.MAX_IR_VERSION)
    try:
        onnx.checker.check_model(copy, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise errors.TrainingError(f"the training graph fails the onnx checker: {first}") from None


def _refuse_low_precision(model: ir.Model) -> None:
    if model.metadata_props.get(MODEL_PRECISION_KEY) or any(
        PRECISION_KEY in node.metadata_props and node.metadata_props[PRECISION_KEY] != Precision.FP32.value
        for node in model.graph
    ):
        raise errors.AlreadyLowPrecisionError("the training graph was already converted by mpcompile")
