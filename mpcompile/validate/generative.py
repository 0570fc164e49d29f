"""Generation-aware validation of two export folders: greedy tokens of REF and CAND compared.

For each generation layout of the folder (``generation.detect_layouts``), both folders generate
``new_tokens`` greedy tokens per prompt with their KV caches (plain ONNX Runtime; the candidate
on the FP16-faithful evaluation when it holds FP16/BF16 values, unless told otherwise). A prompt's
*token agreement* is the share of steps before the first diverging one (1.0: identical tokens).
Per step, the candidate's logits are compared with the reference's on the same context: when
the candidate diverges, it is run again fed the reference's tokens (teacher forcing), so every
step compares like with like. The result passes when every prompt of every layout reaches
``min_token_agreement``.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mpcompile import errors
from mpcompile.validate import generation

DEFAULT_NEW_TOKENS = 20
DEFAULT_MIN_TOKEN_AGREEMENT = 1.0
GENERATED_PROMPT_LENGTHS = (4, 7, 11)
FIRST_ORDINARY_ID = 3  # ids 0-2 are pad / eos / unk (or bos) in most vocabularies
TOP_K = 5
JUDGE_FAITHFUL = "fp16-faithful"
JUDGE_NATIVE = "native-ort-cpu"


class PromptsError(errors.MpcompileError):
    """A ``--prompts`` file that cannot be read as token-id prompts."""

    exit_code = errors.ExitCode.USAGE


@dataclass(frozen=True)
class PromptResult:
    """One prompt: both runs' tokens and the candidate's logits against the reference's, per step."""

    prompt: tuple[int, ...]
    reference_tokens: tuple[int, ...]
    candidate_tokens: tuple[int, ...]
    first_divergence: int | None  # the first step whose tokens differ; None when all agree
    token_agreement: float  # steps before the first divergence / steps
    cosine: tuple[float | None, ...]  # per step; None where the candidate's logits are not finite
    top1: tuple[bool, ...]  # per step: the same argmax on the same context
    top5: tuple[float, ...]  # per step: share of the reference's top 5 ids in the candidate's


@dataclass(frozen=True)
class StepSummary:
    """One step over every prompt: the worst cosine, top-1 and mean top-5 agreement."""

    step: int
    min_cosine: float | None
    top1_agreement: float
    top5_agreement: float


@dataclass(frozen=True)
class LayoutResult:
    """The generation check of one layout (the files a loop runs)."""

    kind: str
    files: tuple[str, ...]
    prompts: tuple[PromptResult, ...] = ()
    steps: tuple[StepSummary, ...] = ()
    error: str = ""  # the loop could not run (e.g. dtypes that do not chain): a failure

    @property
    def token_agreement(self) -> float:
        """The worst prompt's token agreement (0 when the loop failed)."""
        return min((result.token_agreement for result in self.prompts), default=0.0)


@dataclass(frozen=True)
class GenerationResult:
    """Generation-aware validation of a candidate folder against the reference folder."""

    reference: str
    candidate: str
    judge: str  # JUDGE_FAITHFUL or JUDGE_NATIVE: how the candidate ran on the CPU
    new_tokens: int
    min_token_agreement: float
    prompts_source: str
    layouts: tuple[LayoutResult, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        """True when every prompt of every layout agrees at least ``min_token_agreement``."""
        return all(
            not layout.error and layout.token_agreement >= self.min_token_agreement for layout in self.layouts
        )

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite numbers become None)."""
        document = asdict(self)
        document["passed"] = self.passed
        for layout, data in zip(self.layouts, document["layouts"], strict=True):
            data["token_agreement"] = layout.token_agreement
        return document


def read_prompts(path: str | pathlib.Path) -> list[tuple[int, ...]]:
    """Token-id prompts from a text file: one prompt a line, ids separated by whitespace; blank
    lines and lines starting with ``#`` are skipped. Raises ``PromptsError`` (or
    ``InputNotFoundError``) with the line at fault."""
    path = pathlib.Path(path)
    if not path.exists():
        raise errors.InputNotFoundError(f"--prompts {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PromptsError(f"--prompts {path}: not a readable UTF-8 text file ({error})") from None
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        bad = next((word for word in words if not word.isdecimal()), None)
        if bad is not None:
            raise PromptsError(f"--prompts {path} line {number}: {bad!r} is not a token id (an integer ≥ 0)")
        prompts.append(tuple(int(word) for word in words))
    if not prompts:
        raise PromptsError(f"--prompts {path}: no prompts (one line of token ids per prompt)")
    return prompts


def check_prompts_in_vocabulary(prompts: Sequence[Sequence[int]], vocab: int, source: str) -> None:
    """Raise ``PromptsError`` for an id the vocabulary does not hold."""
    for index, prompt in enumerate(prompts):
        outside = [token for token in prompt if token >= vocab]
        if outside:
            raise PromptsError(
                f"{source}: prompt {index + 1} has id {outside[0]}, outside the vocabulary ({vocab})"
            )


def generated_prompts(vocab: int, seed: int) -> list[tuple[int, ...]]:
    """Seeded in-vocabulary prompts of ``GENERATED_PROMPT_LENGTHS`` ids, clear of ids 0-2."""
    if vocab <= FIRST_ORDINARY_ID:
        raise generation.GenerationError(f"a vocabulary of {vocab} ids leaves none to generate prompts from")
    generator = np.random.default_rng(seed)
    return [
        tuple(int(token) for token in generator.integers(FIRST_ORDINARY_ID, vocab, size=length))
        for length in GENERATED_PROMPT_LENGTHS
    ]


def vocabulary_size(folder: pathlib.Path, generator: generation.Generator) -> int:
    """``vocab_size`` from config.json, else the last dim of the logits (declared, else one step run)."""
    config = folder / "config.json"
    if config.is_file():
        try:
            value = json.loads(config.read_text()).get("vocab_size")
        except ValueError:
            value = None
        if isinstance(value, int) and value > 0:
            return value
    for output in generator.sessions[generator.layout.first].get_outputs():
        if output.name == "logits" and output.shape and isinstance(output.shape[-1], int):
            return int(output.shape[-1])
    return int(generator.generate([FIRST_ORDINARY_ID], 1).step_logits[0].shape[-1])


def holds_low_precision(folder: pathlib.Path, files: Sequence[str]) -> bool:
    """True when any of ``files`` holds FP16/BF16 values (initializers, Casts, declared types)."""
    import onnx

    low = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    for name in files:
        model = onnx.load(str(folder / name), load_external_data=False)
        if _graph_holds(model.graph, low):
            return True
    return False


def _graph_holds(graph: Any, low: set[int]) -> bool:
    values = (*graph.input, *graph.output, *graph.value_info)
    if any(value.type.tensor_type.elem_type in low for value in values):
        return True
    if any(tensor.data_type in low for tensor in graph.initializer):
        return True
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i in low:
                return True
            if attribute.t.data_type in low:
                return True
            if attribute.HasField("g") and _graph_holds(attribute.g, low):
                return True
            if any(_graph_holds(graph, low) for graph in attribute.graphs):
                return True
    return False


def generation_layouts(folder: str | pathlib.Path) -> list[generation.ExportLayout]:
    """The layouts a greedy loop runs on ``folder``, each tried for two steps on a one-id prompt.

    Raises ``NotGenerativeError`` for a folder without a decoder with logits, ``GenerationError``
    for one the loop cannot feed (e.g. a decoder taking ``inputs_embeds``)."""
    layouts = generation.detect_layouts(folder)
    for layout in layouts:
        generation.Generator(folder, merged=_merged(layout)).generate([FIRST_ORDINARY_ID], 2)
    return layouts


def validate_generation(
    reference: str | pathlib.Path,
    candidate: str | pathlib.Path,
    *,
    prompts: Sequence[Sequence[int]] | None = None,
    prompts_source: str = "",
    new_tokens: int = DEFAULT_NEW_TOKENS,
    min_token_agreement: float = DEFAULT_MIN_TOKEN_AGREEMENT,
    faithful: bool | None = None,
    seed: int = 0,
) -> GenerationResult:
    """Generate greedily in both folders on every layout and compare (see the module docstring).

    ``prompts``: token-id prompts, else generated (``seed``); ``faithful``: None runs the candidate
    FP16-faithfully when it holds FP16/BF16 values, True always, False never (native ORT CPU).
    Raises ``NotGenerativeError`` when the reference folder is not generative.
    """
    reference, candidate = pathlib.Path(reference), pathlib.Path(candidate)
    layouts = generation.detect_layouts(reference)
    first = generation.Generator(reference, merged=_merged(layouts[0]))
    vocab = vocabulary_size(reference, first)
    if prompts is None:
        prompts = generated_prompts(vocab, seed)
        prompts_source = f"generated: {len(prompts)} prompts, seed {seed}, ids 3..{vocab - 1}"
    else:
        check_prompts_in_vocabulary(prompts, vocab, prompts_source or "prompts")
    files = sorted({name for layout in layouts for name in layout.files})
    if faithful is None:
        faithful = holds_low_precision(candidate, files)
    results = []
    for layout in layouts:
        try:
            results.append(_compare_layout(reference, candidate, layout, prompts, new_tokens, faithful))
        except generation.GenerationError as error:
            results.append(LayoutResult(layout.kind, layout.files, error=str(error)))
    return GenerationResult(
        str(reference),
        str(candidate),
        JUDGE_FAITHFUL if faithful else JUDGE_NATIVE,
        new_tokens,
        min_token_agreement,
        prompts_source,
        tuple(results),
    )


def _merged(layout: generation.ExportLayout) -> bool | None:
    if layout.first == "decoder_model_merged.onnx":
        return True
    return False if layout.first == "decoder_model.onnx" else None


def _compare_layout(
    reference: pathlib.Path,
    candidate: pathlib.Path,
    layout: generation.ExportLayout,
    prompts: Sequence[Sequence[int]],
    new_tokens: int,
    faithful: bool,
) -> LayoutResult:
    merged = _merged(layout)
    expected_runner = generation.Generator(reference, merged=merged)
    candidate_runner = generation.Generator(candidate, merged=merged, faithful=faithful)
    results = []
    for prompt in prompts:
        expected = expected_runner.generate(prompt, new_tokens)
        got = candidate_runner.generate(prompt, new_tokens)
        divergence = next(
            (step for step, (a, b) in enumerate(zip(expected.tokens, got.tokens, strict=True)) if a != b),
            None,
        )
        logits = got.step_logits
        if divergence is not None:  # the candidate's logits on the reference's context
            logits = candidate_runner.generate(prompt, new_tokens, forced=expected.tokens).step_logits
        pairs = list(zip(expected.step_logits, logits, strict=True))
        results.append(
            PromptResult(
                tuple(prompt),
                expected.tokens,
                got.tokens,
                divergence,
                (new_tokens if divergence is None else divergence) / new_tokens,
                tuple(_cosine(a, b) for a, b in pairs),
                tuple(bool(np.argmax(a) == np.argmax(b)) for a, b in pairs),
                tuple(_top_k_overlap(a, b) for a, b in pairs),
            )
        )
    return LayoutResult(layout.kind, layout.files, tuple(results), _step_summaries(results, new_tokens))


def _step_summaries(results: Sequence[PromptResult], new_tokens: int) -> tuple[StepSummary, ...]:
    summaries = []
    for step in range(new_tokens):
        cosines = [result.cosine[step] for result in results]
        finite = None if any(value is None for value in cosines) else min(cosines)  # type: ignore[type-var]
        summaries.append(
            StepSummary(
                step,
                finite,
                float(np.mean([result.top1[step] for result in results])),
                float(np.mean([result.top5[step] for result in results])),
            )
        )
    return tuple(summaries)


def _cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = a.astype(np.float64), b.astype(np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms else float(np.array_equal(a, b))


def _top_k_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Share of ``a``'s top-k ids among ``b``'s top-k (NaN logits sort last in numpy, as unknowns)."""
    k = min(TOP_K, a.shape[-1])
    top_a = set(np.argsort(-a, kind="stable")[:k].tolist())
    top_b = set(np.argsort(-np.nan_to_num(b, nan=-np.inf), kind="stable")[:k].tolist())
    return len(top_a & top_b) / k
