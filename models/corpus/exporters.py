"""The exporters: ``torch.onnx.export`` (TorchScript and dynamo), optimum's ``main_export`` and
ultralytics' own ``YOLO.export``.

Each ``export_*`` function writes the ONNX graphs of one job into its folder and returns their
file names. This module imports torch: only the build worker imports it. The torch exports wrap the model in a module whose
positional inputs carry the same names optimum uses (``input_ids``, ``attention_mask``,
``position_ids``, ``past_key_values.{i}.key`` / ``.value``; outputs ``logits``,
``present.{i}.key`` / ``.value``), so inputs and tests treat every exporter alike.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.corpus import architectures as arch_kinds
from models.corpus.architectures import Architecture

TORCHSCRIPT_OPSET = 17
DYNAMO_OPSET = 18

# Example sizes used only to trace or export (distinct, so the exporters do not tie dims together).
_EXAMPLE_BATCH = 2
_EXAMPLE_SEQUENCE = 5
_EXAMPLE_PAST = 3


class ExportError(RuntimeError):
    """An exporter failed; the message is the one-line cause recorded in the manifest."""


@dataclass(frozen=True)
class TorchSignature:
    """What a torch export takes: named example inputs and the symbolic axes of inputs and outputs."""

    input_names: tuple[str, ...]
    examples: tuple[Any, ...]
    input_axes: Mapping[str, Mapping[int, str]]
    output_names: tuple[str, ...]
    output_axes: Mapping[str, Mapping[int, str]]


def export_torchscript(arch: Architecture, model: Any, folder: Path, with_past: bool) -> list[str]:
    """``torch.onnx.export(dynamo=False)`` of ``model`` to ``folder/model.onnx``."""

    from models.corpus.masks import vmap_free_masks

    module, signature = _wrap(arch, model, with_past)
    path = folder / "model.onnx"
    with vmap_free_masks(), torch.no_grad():
        torch.onnx.export(
            module,
            signature.examples,
            str(path),
            input_names=list(signature.input_names),
            output_names=list(signature.output_names),
            dynamic_axes={**signature.input_axes, **signature.output_axes},
            opset_version=TORCHSCRIPT_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return [path.name]


def export_dynamo(arch: Architecture, model: Any, folder: Path, with_past: bool) -> list[str]:
    """``torch.onnx.export(dynamo=True)`` with ``torch.export.Dim`` dynamic shapes, weights embedded."""

    module, signature = _wrap(arch, model, with_past)
    dims: dict[str, Any] = {}

    def dim(name: str) -> Any:
        # The total (past + current) length is derived by the exporter: it may not be a free Dim.
        if name == "total_sequence":
            return torch.export.Dim.DYNAMIC
        return dims.setdefault(name, torch.export.Dim(name))

    dynamic_shapes = tuple(
        {axis: dim(label) for axis, label in signature.input_axes.get(name, {}).items()} or None
        for name in signature.input_names
    )
    path = folder / "model.onnx"
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            signature.examples,
            input_names=list(signature.input_names),
            output_names=list(signature.output_names),
            dynamic_shapes=(dynamic_shapes,),
            opset_version=DYNAMO_OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    if program is None:
        raise ExportError("torch.onnx.export(dynamo=True) returned no program")
    program.save(str(path), external_data=False)
    return [path.name]


def export_optimum(arch: Architecture, model: Any, folder: Path, with_past: bool) -> list[str]:
    """optimum's ``main_export`` from a ``save_pretrained`` folder (offline); returns the .onnx files."""
    if arch.optimum_task is None:
        raise ExportError(f"optimum has no task for {arch.name}")
    os.environ["HF_HUB_OFFLINE"] = "1"
    from optimum.exporters.onnx import main_export

    pretrained = folder / "_pretrained"
    model.save_pretrained(pretrained)
    task = arch.optimum_task + ("-with-past" if with_past else "")
    shapes = {"nb_max_frames": arch.audio_frames} if arch.audio_frames else {}
    try:
        main_export(
            str(pretrained),
            output=str(folder),
            task=task,
            device="cpu",
            do_validation=False,
            library_name="transformers",
            **shapes,
        )
    finally:
        shutil.rmtree(pretrained, ignore_errors=True)
    return sorted(path.name for path in folder.glob("*.onnx"))


def export_ultralytics(arch: Architecture, model: Any, folder: Path, with_past: bool) -> list[str]:
    """ultralytics' own ``YOLO.export(format="onnx")``: dynamic batch and image size, no onnxslim
    (``simplify=False``: nothing to install at export time), written as ``folder/model.onnx``."""
    if with_past:
        raise ExportError("ultralytics exports no KV cache")
    saved = Path.cwd()
    os.chdir(folder)  # ultralytics writes the .onnx beside the model, here the working directory
    try:
        written = model.export(
            format="onnx", imgsz=arch.image_size, dynamic=True, simplify=False, opset=TORCHSCRIPT_OPSET
        )
    finally:
        os.chdir(saved)
    if not written:
        raise ExportError("ultralytics' exporter returned no file")
    path = folder / "model.onnx"
    (folder / Path(written).name).replace(path)
    return [path.name]


EXPORTERS = {
    "torchscript": export_torchscript,
    "dynamo": export_dynamo,
    "optimum": export_optimum,
    "ultralytics": export_ultralytics,
}
# Libraries whose models take positional tensors and return one (no transformers ModelOutput).
POSITIONAL_LIBRARIES = ("torchvision", "timm", "torch")


def _wrap(arch: Architecture, model: Any, with_past: bool) -> tuple[Any, TorchSignature]:
    """A module with named positional inputs for the torch exporters, and its signature."""
    from models.corpus import inputs

    profile = inputs.Profile(
        batch=_EXAMPLE_BATCH,
        sequence=_EXAMPLE_SEQUENCE,
        past=_EXAMPLE_PAST,
        new_tokens=2,
        image=(arch.image_size, arch.image_size),
        audio_samples=1600,
        seed=99,
    )
    if arch.kind == arch_kinds.CAUSAL_LM:
        return _wrap_causal_lm(arch, model, profile, with_past)
    if with_past:
        raise ExportError(f"no torch export with past for {arch.kind} models")
    feeds = inputs.torch_example_feeds(arch, profile)
    names = tuple(feeds)
    axes = {name: inputs.symbolic_axes(arch, name, feeds[name].ndim) for name in names}
    examples = tuple(_tensor(feeds[name]) for name in names)
    if arch.library in POSITIONAL_LIBRARIES:
        outputs = tuple(arch.extra.get("output_names", (arch.extra.get("output_name", "logits"),)))
        output_axes = {name: {0: "batch"} for name in outputs} | dict(arch.extra.get("output_axes", {}))
        signature = TorchSignature(names, examples, axes, outputs, output_axes)
        if isinstance(model, torch.jit.ScriptModule):  # exported as scripted: its branches stay If nodes
            return model, signature
        return _PositionalModule(model), signature
    extra = {"return_dict": True}
    if arch.kind in (arch_kinds.SEQ2SEQ, arch_kinds.SPEECH_SEQ2SEQ):
        extra["use_cache"] = False
    outputs = _tensor_outputs(model, names, examples, extra)
    output_axes = {name: {0: "batch"} for name in outputs}
    for name in ("logits", "last_hidden_state", "encoder_last_hidden_state"):
        if name in output_axes and arch.kind not in (arch_kinds.VISION, arch_kinds.DETECTION):
            output_axes[name] = {0: "batch", 1: "decoder_sequence" if name == "logits" else "sequence"}
    if arch.kind == arch_kinds.TEXT_ENCODER:
        output_axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    module = _KeywordModule(model, names, outputs, extra)
    return module, TorchSignature(names, examples, axes, outputs, output_axes)


def _wrap_causal_lm(
    arch: Architecture, model: Any, profile: Any, with_past: bool
) -> tuple[Any, TorchSignature]:

    from models.corpus import inputs

    layers = model.config.num_hidden_layers
    if not with_past:
        feeds = inputs.torch_example_feeds(arch, profile)
        names = tuple(feeds)
        examples = tuple(_tensor(feeds[name]) for name in names)
        axes = {name: {0: "batch", 1: "sequence"} for name in names}
        module = _KeywordModule(model, names, ("logits",), {"return_dict": True, "use_cache": False})
        output_axes = {"logits": {0: "batch", 1: "sequence"}}
        return module, TorchSignature(names, examples, axes, ("logits",), output_axes)
    prefix = inputs.torch_example_feeds(arch, profile, length=profile.past)
    with torch.no_grad():
        cache = model(**{k: _tensor(v) for k, v in prefix.items()}, use_cache=True).past_key_values
    past = [tensor for layer in cache.layers for tensor in (layer.keys, layer.values)]
    feeds = inputs.torch_example_feeds(arch, profile, past=profile.past)
    names = tuple(feeds)
    past_names = tuple(f"past_key_values.{i}.{part}" for i in range(layers) for part in ("key", "value"))
    present_names = tuple(name.replace("past_key_values", "present") for name in past_names)
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["attention_mask"] = {0: "batch", 1: "total_sequence"}
    axes.update({name: {0: "batch", 2: "past_sequence"} for name in past_names})
    output_axes = {"logits": {0: "batch", 1: "sequence"}}
    output_axes.update({name: {0: "batch", 2: "total_sequence"} for name in present_names})
    module = _CausalLMWithPast(model, names, layers)
    examples = (*(_tensor(feeds[name]) for name in names), *(t.detach().clone() for t in past))
    signature = TorchSignature((*names, *past_names), examples, axes, ("logits", *present_names), output_axes)
    return module, signature


def _tensor(array: np.ndarray) -> Any:

    return torch.from_numpy(np.ascontiguousarray(array))


def _tensor_outputs(
    model: Any, names: Sequence[str], examples: Sequence[Any], extra: dict
) -> tuple[str, ...]:
    """The top-level tensor outputs of one eager run, in order (nested outputs are left out)."""

    with torch.no_grad():
        result = model(**dict(zip(names, examples, strict=True)), **extra)
    return tuple(key for key, value in result.items() if isinstance(value, torch.Tensor))


class _KeywordModule(torch.nn.Module):
    """Calls ``model(**dict(zip(names, args)), **extra)`` and returns the chosen outputs."""

    def __init__(self, model: Any, names: Sequence[str], outputs: Sequence[str], extra: dict) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)
        self.outputs = tuple(outputs)
        self.extra = dict(extra)

    def forward(self, *args: Any) -> tuple[Any, ...]:
        result = self.model(**dict(zip(self.names, args, strict=True)), **self.extra)
        return tuple(result[name] for name in self.outputs)


class _PositionalModule(torch.nn.Module):
    """Calls ``model(*args)`` and returns its tensors as a tuple (one for torchvision classifiers)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any) -> tuple[Any, ...]:
        result = self.model(*args)
        return tuple(result) if isinstance(result, tuple) else (result,)


class _CausalLMWithPast(torch.nn.Module):
    """A causal LM step: named inputs, then 2 * layers past tensors; returns logits and the presents."""

    def __init__(self, model: Any, names: Sequence[str], layers: int) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)
        self.layers = layers

    def forward(self, *args: Any) -> tuple[Any, ...]:
        from transformers import DynamicCache

        count = len(self.names)
        flat = args[count:]
        pairs = [(flat[2 * i], flat[2 * i + 1]) for i in range(self.layers)]
        cache = DynamicCache(ddp_cache_data=pairs, config=self.model.config)
        kwargs = dict(zip(self.names, args[:count], strict=True))
        result = self.model(**kwargs, past_key_values=cache, use_cache=True, return_dict=True)
        present = [tensor for layer in result.past_key_values.layers for tensor in (layer.keys, layer.values)]
        return (result.logits, *present)
