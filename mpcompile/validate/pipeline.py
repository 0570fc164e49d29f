"""Feeds captured from an FP32 run of an export folder's whole generation pipeline, and the judge
of a partly converted folder's greedy generation (``--auto`` and ``report --numerics`` on folders).

``capture_pipeline(folder)`` runs greedy generation on every layout of the folder
(``generation.detect_layouts``) with plain ONNX Runtime on the FP32 files and records what each
file is fed: the encoder its prompt; the decoder the encoder's real ``last_hidden_state``; the
decoder-with-past and the merged decoder real ``past_key_values`` from a prefix. Per prompt and
file the first and the last run are kept (the last has the longest past), so a file gets at most
two batches a prompt.

``GenerationJudge`` holds each file at its current best (FP32 until its search accepted a
conversion) and tells whether the folder, with one file replaced by a candidate, still generates
FP32's greedy tokens on the captured prompts (candidates run FP16-faithfully; it stops at the first
differing token).
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mpcompile.validate import generation, generative

Feeds = dict[str, np.ndarray]
DEFAULT_SEED = 1  # validate generates its prompts with seed 0: --auto searches on other prompts
DEFAULT_NEW_TOKENS = generative.DEFAULT_NEW_TOKENS


@dataclass
class PipelineCapture:
    """An FP32 run of a folder's generation loops: the prompts, FP32's tokens, each file's feeds."""

    folder: pathlib.Path
    layouts: tuple[generation.ExportLayout, ...]
    prompts: tuple[tuple[int, ...], ...]
    prompts_source: str
    new_tokens: int
    tokens: dict[tuple[str, ...], list[tuple[int, ...]]] = field(default_factory=dict)  # per layout.files
    feeds: dict[str, list[Feeds]] = field(default_factory=dict)  # file name -> batches
    sessions: dict[str, Any] = field(default_factory=dict)  # the FP32 files' plain sessions

    @property
    def files(self) -> tuple[str, ...]:
        """Every file a loop runs."""
        return tuple(dict.fromkeys(name for layout in self.layouts for name in layout.files))

    def label(self, file: str) -> str:
        """Where ``file``'s feeds came from, for the ``--auto`` record and the report."""
        batches = len(self.feeds.get(file, ()))
        return (
            f"captured from the FP32 pipeline ({batches} batch(es) of {file}: greedy generation of "
            f"{self.new_tokens} tokens on {self.prompts_source})"
        )


def capture_pipeline(
    folder: str | pathlib.Path,
    *,
    prompts: Sequence[Sequence[int]] | None = None,
    prompts_source: str = "",
    new_tokens: int = DEFAULT_NEW_TOKENS,
    seed: int = DEFAULT_SEED,
) -> PipelineCapture:
    """Run the FP32 ``folder``'s generation loops on ``prompts`` (generated in-vocabulary from
    ``seed`` when None) and record FP32's tokens and every file's feeds (see the module docstring).
    Raises ``NotGenerativeError``/``GenerationError`` like ``generation.detect_layouts``."""
    folder = pathlib.Path(folder)
    layouts = tuple(generation.detect_layouts(folder))
    files = dict.fromkeys(name for layout in layouts for name in layout.files)
    sessions = {name: generation.open_session(folder / name) for name in files}
    first = generation.Generator.from_sessions(folder, layouts[0], sessions)
    vocab = generative.vocabulary_size(folder, first)
    if prompts is None:
        prompts = generative.generated_prompts(vocab, seed)
        prompts_source = f"{len(prompts)} generated prompts (seed {seed}, ids 3..{vocab - 1})"
    else:
        generative.check_prompts_in_vocabulary(prompts, vocab, prompts_source or "prompts")
        prompts_source = prompts_source or f"{len(prompts)} prompts"
    capture = PipelineCapture(
        folder, layouts, tuple(tuple(p) for p in prompts), prompts_source, new_tokens, sessions=sessions
    )
    for layout in layouts:
        runner = generation.Generator.from_sessions(folder, layout, sessions)
        new_files = [name for name in layout.files if name not in capture.feeds]
        tokens = capture.tokens.setdefault(layout.files, [])
        for prompt in capture.prompts:
            runs: dict[str, list[Feeds]] = {}

            def record(file: str, step: int, feeds: Mapping[str, np.ndarray], runs=runs) -> None:
                kept = runs.setdefault(file, [])
                if len(kept) == 2:
                    kept.pop()  # keep the first run and the latest
                kept.append(dict(feeds))

            tokens.append(runner.generate(prompt, new_tokens, record=record).tokens)
            for name in new_files:
                capture.feeds.setdefault(name, []).extend(runs.get(name, ()))
    return capture


class GenerationJudge:
    """Greedy generation of the folder with each file at its current best, against FP32's tokens."""

    def __init__(self, capture: PipelineCapture) -> None:
        self.capture = capture
        self.current: dict[str, Any] = {name: _Adapting(s) for name, s in capture.sessions.items()}
        self.checks = 0
        self.failures = 0

    def accept(self, file: str, model: pathlib.Path | Any) -> None:
        """``file`` is now ``model`` (a converted file, run FP16-faithfully) in every later check."""
        self.current[file] = _Adapting(generation.open_session(model, faithful=True))

    def check(self, file: str, candidate: Any) -> str:
        """ "" when the folder with ``file`` replaced by ``candidate`` (an ``ir.Model``) generates
        FP32's greedy tokens on every prompt of every layout running ``file``; else why not."""
        self.checks += 1
        sessions = {**self.current, file: _Adapting(generation.open_session(candidate, faithful=True))}
        for layout in self.capture.layouts:
            if file not in layout.files:
                continue
            runner = generation.Generator.from_sessions(self.capture.folder, layout, sessions)
            expected_runs = self.capture.tokens[layout.files]
            for index, (prompt, expected) in enumerate(zip(self.capture.prompts, expected_runs, strict=True)):
                try:
                    got = runner.generate(prompt, len(expected), expected=expected)
                except generation.GenerationError as error:
                    self.failures += 1
                    return f"greedy generation cannot run ({error})"
                if got.tokens != expected:
                    self.failures += 1
                    return (
                        f"greedy generation ({' + '.join(layout.files)}) differs from FP32's at step "
                        f"{len(got.tokens) - 1} of prompt {index + 1}"
                    )
        return ""


_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class _Adapting:
    """A session whose float feeds are cast to the dtypes its graph declares: a folder whose
    files are searched one by one mixes FP32 and FP16 interfaces (``--no-keep-io-types``)."""

    casts_feeds = True  # the loop hands it chained values of any float dtype

    def __init__(self, session: Any) -> None:
        self._session = session
        self._inputs = session.get_inputs()
        self._types = {value.name: _FLOAT_TYPES.get(value.type) for value in self._inputs}

    def get_inputs(self) -> list[Any]:
        return self._inputs

    def get_outputs(self) -> list[Any]:
        return self._session.get_outputs()

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        cast = {}
        for name, array in feeds.items():
            dtype = self._types.get(name)
            floating = dtype is not None and np.issubdtype(array.dtype, np.floating)
            cast[name] = array.astype(dtype, copy=False) if floating else array
        return self._session.run(names, cast)
