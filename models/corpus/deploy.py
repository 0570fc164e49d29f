"""Converting the corpus's export folders and comparing what they generate (tests and tools share it).

``MODES`` are the conversion modes the deploy acceptance names; ``convert_export_folder``
converts a whole folder with ``mpcompile.convert_folder``;
``compare_generations`` says where a converted folder's greedy tokens leave the FP32 folder's,
with the logits' cosine and the FP32 top-2 margin at that step; ``encoder_error`` compares an
encoder's ``last_hidden_state``; ``optimum_models`` / ``optimum_generate`` load and run a folder
with optimum's ORTModel classes. Needs onnxruntime; optimum and torch only for the last two.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Encoders (last_hidden_state vs FP32): max |error| / max |FP32| and cosine, per precision.
ENCODER_TOLERANCE = {"fp16": (1e-2, 0.9999), "bf16": (4e-2, 0.999)}

# mode -> (convert_file keyword options, the same as CLI flags)
MODES: dict[str, tuple[Mapping[str, Any], tuple[str, ...]]] = {
    "plain": ({}, ()),
    "no-keep-io": ({"keep_io_types": False}, ("--no-keep-io-types",)),
    "cpu": ({"target": "cpu"}, ("--target", "cpu")),
    "bf16-cpu": ({"precision": "bf16", "target": "cpu"}, ("--precision", "bf16", "--target", "cpu")),
}


def convert_export_folder(source: pathlib.Path, destination: pathlib.Path, **options: Any) -> Any:
    """Convert the export folder ``source`` into the new folder ``destination`` with ``options``
    (``convert_file``'s): ``mpcompile.convert_folder``, which copies the other files byte for byte."""
    import mpcompile

    return mpcompile.convert_folder(source, destination, **options)


class ConvertedFolders:
    """Export folders converted under ``root`` once per (folder, mode) of ``MODES`` and reused;
    the mode ``"fp32"`` is the export folder itself."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self._done: dict[tuple[str, str], pathlib.Path] = {}

    def __call__(self, entry: Any, mode: str) -> pathlib.Path:
        if mode == "fp32":
            return entry.path
        if (entry.name, mode) not in self._done:
            destination = self.root / f"{entry.name}-{mode}"
            convert_export_folder(entry.path, destination, **MODES[mode][0])
            self._done[entry.name, mode] = destination
        return self._done[entry.name, mode]


def low_precision_share(folder: pathlib.Path) -> tuple[int, int]:
    """(nodes stamped fp16/bf16, nodes stamped) over the folder's .onnx files, subgraphs included."""
    import onnx

    low = total = 0
    for path in sorted(folder.glob("*.onnx")):
        model = onnx.load(str(path), load_external_data=False)
        for node in _all_nodes(model.graph):
            stamps = {prop.key: prop.value for prop in node.metadata_props}
            precision = stamps.get("mpcompile.precision")
            if precision is not None:
                total += 1
                low += precision in ("fp16", "bf16")
    return low, total


def _all_nodes(graph: Any) -> list[Any]:
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attribute in node.attribute:
            if attribute.g.node:
                nodes.extend(_all_nodes(attribute.g))
            for subgraph in attribute.graphs:
                nodes.extend(_all_nodes(subgraph))
    return nodes


@dataclass(frozen=True)
class Divergence:
    """Where a converted folder's greedy tokens first leave the reference's."""

    prompt: int
    step: int
    expected: int
    got: int
    cosine: float  # of the two last-position logit vectors at that step (same prefix up to it)
    margin: float  # reference top-1 minus top-2 logit at that step (small: a near tie)

    def __str__(self) -> str:
        return (
            f"prompt {self.prompt}: step {self.step} gives {self.got} instead of {self.expected} "
            f"(logit cosine {self.cosine:.6f}, FP32 top-2 margin {self.margin:.4f})"
        )


def compare_generations(reference: Sequence[Any], candidate: Sequence[Any]) -> list[Divergence]:
    """The first divergence of each prompt (``Generation`` pairs); empty when every token agrees."""
    found = []
    for index, (expected, got) in enumerate(zip(reference, candidate, strict=True)):
        for step, (a, b) in enumerate(zip(expected.tokens, got.tokens, strict=True)):
            if a != b:
                ref_logits, got_logits = expected.step_logits[step], got.step_logits[step]
                top = np.sort(ref_logits)[-2:]
                found.append(
                    Divergence(index, step, a, b, _cosine(ref_logits, got_logits), float(top[1] - top[0]))
                )
                break
    return found


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def mode_precision(mode: str) -> str:
    """The low precision a mode converts to."""
    return str(MODES[mode][0].get("precision", "fp16"))


def encoder_error(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """(max |candidate - reference| / max |reference|, cosine) of two ``last_hidden_state`` arrays."""
    ref, got = reference.astype(np.float64), candidate.astype(np.float64)
    return float(np.abs(got - ref).max() / np.abs(ref).max()), _cosine(ref.ravel(), got.ravel())


def optimum_models(entry: Any, folder: pathlib.Path) -> dict[str, Any]:
    """Every way optimum's ORTModel classes load ``folder`` (CPU): name -> model. A decoder-only
    folder: ``ORTModelForCausalLM``; an encoder-decoder: ``ORTModelForSeq2SeqLM`` with the merged
    decoder and with the decoder-with-past pair, where the folder has them; an encoder:
    ``ORTModelForFeatureExtraction``."""
    from optimum.onnxruntime import ORTModelForCausalLM, ORTModelForFeatureExtraction, ORTModelForSeq2SeqLM

    if not entry.generates:
        return {"feature-extraction": ORTModelForFeatureExtraction.from_pretrained(folder)}
    if entry.variant == "decoder-only-with-past":
        return {"causal-lm": ORTModelForCausalLM.from_pretrained(folder, use_cache=True)}
    models = {}
    if (folder / "decoder_model_merged.onnx").is_file():
        models["seq2seq-merged"] = ORTModelForSeq2SeqLM.from_pretrained(folder, use_merged=True)
    if (folder / "decoder_with_past_model.onnx").is_file():
        models["seq2seq-with-past"] = ORTModelForSeq2SeqLM.from_pretrained(folder, use_merged=False)
    return models


def optimum_generate(model: Any, prompt: Sequence[int], new_tokens: int) -> tuple[int, ...]:
    """optimum's greedy ``generate`` (end of sequence suppressed by ``min_new_tokens``): the new tokens."""
    import torch

    ids = torch.tensor([list(prompt)], dtype=torch.long)
    with torch.no_grad():
        output = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            num_beams=1,
        )
    tokens = [int(token) for token in output[0]]
    return tuple(tokens[1:] if model.config.is_encoder_decoder else tokens[len(prompt) :])


def optimum_hidden_state(model: Any, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    """``last_hidden_state`` of optimum's ``ORTModelForFeatureExtraction`` as float32 numpy."""
    import torch

    with torch.no_grad():
        output = model(**{name: torch.from_numpy(array) for name, array in feeds.items()})
    return output.last_hidden_state.float().numpy()
