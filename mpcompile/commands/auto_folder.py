"""``--auto`` on an export folder: each file searched on feeds captured from the FP32 pipeline, and a
candidate accepted only if the folder still generates FP32's greedy tokens.

For every directory of the folder holding a generation layout (``validate.generation``), one FP32
run of the whole pipeline (``validate.pipeline.capture_pipeline``) gives each file its feeds (the
encoder's real outputs for the decoder, real KV caches from a prefix) and FP32's greedy tokens on
the search prompts. The files are then searched one at a time, in the folder's order; a candidate
of the file being searched that meets the per-file criterion is also run in the assembled folder
(the other files at their current best: accepted conversions, or FP32 before their turn) and passes
only if its greedy tokens equal FP32's. The generation check runs only at those acceptance points
(at most one per evaluation, each at most ``prompts x new_tokens`` decoder steps, stopping at the
first differing token), so its cost grows with the budget, not with the square of the files.
It lives above ``auto`` and ``validate`` (peers that do not import each other), as the CLI
command that joins them. Files outside any layout are searched on generated inputs, as alone. Without ``--rtol``,
``--atol`` or ``--metric``, the files generation judges are held to ``PIPELINE_METRIC``.

A merged decoder holds the whole decoder inside an ``If`` whose branches the search cannot measure
(it searches main-graph nodes only), so alone it either converts the branches as plain convert does
or falls back to FP32. Its branches are the decoder and the decoder-with-past graphs, node names
included: when the folder has both, they are searched first (their results kept for their own turn)
and the nodes their searches kept FP32 are kept FP32 in the merged decoder's branches too
(``node_overrides``, with the pair's reasons), before the merged decoder's own search and check.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from mpcompile import errors
from mpcompile.validate import generation, pipeline

# The per-file criterion of a file the generation check judges, when none is given: greedy
# tokens judge the task, the cosine of every output (logits, KV caches, hidden states) guards the
# values; an elementwise tolerance would keep FP32 whatever large logits round beyond 1e-2.
PIPELINE_METRIC = "cosine:0.999"
MERGED = "decoder_model_merged.onnx"
MERGED_BRANCHES = ("decoder_model.onnx", "decoder_with_past_model.onnx")  # searched before MERGED


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """The prompts the search generates on (None: generated from ``seed``) and how many tokens."""

    prompts: tuple[tuple[int, ...], ...] | None = None
    prompts_source: str = ""
    new_tokens: int = pipeline.DEFAULT_NEW_TOKENS
    seed: int = pipeline.DEFAULT_SEED


class FolderAuto:
    """``convert_folder``'s ``convert_one`` for ``--auto`` (see the module docstring).

    ``auto_options``: ``auto_convert_file``'s keyword arguments, the same for every file."""

    def __init__(self, auto_options: Mapping[str, Any], settings: GenerationSettings | None = None) -> None:
        self.auto_options = dict(auto_options)
        self.settings = settings or GenerationSettings()
        self._pipelines: dict[
            pathlib.Path, tuple[pipeline.PipelineCapture, pipeline.GenerationJudge] | None
        ] = {}
        self.notes: dict[pathlib.Path, str] = {}  # directory -> why it gets no generation check
        # a merged decoder's branch files searched before it: source -> (file options, output, result)
        self._ahead: dict[pathlib.Path, tuple[dict[str, Any], pathlib.Path, Any]] = {}
        self._results: dict[pathlib.Path, Any] = {}  # every pipeline file searched so far
        self._scratch: tempfile.TemporaryDirectory[str] | None = None

    def __call__(self, source: pathlib.Path, target: pathlib.Path, file_options: Mapping[str, Any]) -> Any:
        from mpcompile.auto.api import auto_convert_file

        found = self._pipeline(source.parent)
        if found is None or source.name not in found[0].feeds:
            result = auto_convert_file(source, target, **self.auto_options, **file_options)
            if source.parent in self.notes:
                result.convert_result.notes.append(self.notes[source.parent])
            return result
        ahead = self._ahead.pop(source, None)
        if ahead is not None and ahead[0] == file_options:
            for path in ahead[1].parent.iterdir():  # the file and its external data
                shutil.copy2(path, target.parent / path.name)
            return ahead[2]
        options = dict(file_options)
        transferred = 0
        if source.name == MERGED and all(name in found[0].feeds for name in MERGED_BRANCHES):
            options["options"] = self._with_branch_decisions(source.parent, file_options)
            transferred = len(options["options"].node_overrides) - len(file_options["options"].node_overrides)
        result = self._search(found, source, target, options)
        if transferred:
            note = (
                f"{transferred} node(s) of the If branches kept FP32 as the searches of "
                f"{' and '.join(MERGED_BRANCHES)} kept them"
            )
            result.notes.append(note)
            result.convert_result.notes.append(note)
        return result

    def _search(
        self,
        found: tuple[pipeline.PipelineCapture, pipeline.GenerationJudge],
        source: pathlib.Path,
        target: pathlib.Path,
        file_options: Mapping[str, Any],
    ) -> Any:
        """Search ``source`` on its captured feeds, accepted only where generation holds."""
        from mpcompile.auto.api import auto_convert_file

        capture, judge = found
        file = source.name
        options = dict(self.auto_options)
        if all(options.get(name) is None for name in ("rtol", "atol", "metric")):
            options["metric"] = PIPELINE_METRIC
        result = auto_convert_file(
            source,
            target,
            **options,
            **file_options,
            inputs=capture.feeds[file],
            inputs_label=capture.label(file),
            acceptance=lambda candidate: judge.check(file, candidate),
        )
        checks, failures = judge.checks, judge.failures
        judge.checks = judge.failures = 0
        note = (
            f"greedy generation checked on {checks} candidate(s) that met the criterion "
            f"({len(capture.prompts)} prompt(s) x {capture.new_tokens} tokens); {failures} refused"
        )
        result.notes.append(note)
        result.convert_result.notes.append(note)
        if result.passed:  # a failed search leaves the file FP32 for the later files' checks
            judge.accept(file, target)
        self._results[source] = result
        return result

    def _with_branch_decisions(self, directory: pathlib.Path, file_options: Mapping[str, Any]) -> Any:
        """The merged decoder's ``ConvertOptions``: the decoder and decoder-with-past searched first
        (kept for their own turn), the nodes they kept FP32 kept FP32 in its branches."""
        from mpcompile.auto.reasons import AUTO_RANGE, AUTO_SENSITIVITY
        from mpcompile.core.plan import Decision
        from mpcompile.core.precision import Precision

        found = self._pipelines[directory]
        assert found is not None
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="mpcompile-auto-folder-")
        overrides: dict[str, Decision] = {}
        searched_names = _names_after_naming(directory / MERGED)
        for name in MERGED_BRANCHES:
            source = directory / name
            if source not in self._results:
                scratch = pathlib.Path(self._scratch.name) / str(len(self._ahead))
                scratch.mkdir()
                try:
                    result = self._search(found, source, scratch / name, file_options)
                except errors.MpcompileError:
                    continue  # its own turn reports it, under its own name
                self._ahead[source] = (dict(file_options), scratch / name, result)
            result = self._results[source]
            if not result.passed:
                continue
            for reason, blocked in (
                (AUTO_SENSITIVITY, result.sensitivity_blocked),
                (AUTO_RANGE, result.range_blocked),
            ):
                for node, why in blocked.items():
                    for renamed in searched_names.get(node, ()):
                        overrides[renamed] = Decision(Precision.FP32, reason, f"{name}: {why}")
        options = file_options["options"]
        return dataclasses.replace(options, node_overrides={**overrides, **options.node_overrides})

    def _pipeline(
        self, directory: pathlib.Path
    ) -> tuple[pipeline.PipelineCapture, pipeline.GenerationJudge] | None:
        """The FP32 capture and judge of ``directory`` (captured once); None when not generative."""
        if directory not in self._pipelines:
            self._pipelines[directory] = None
            try:
                capture = pipeline.capture_pipeline(
                    directory,
                    prompts=self.settings.prompts,
                    prompts_source=self.settings.prompts_source,
                    new_tokens=self.settings.new_tokens,
                    seed=self.settings.seed,
                )
            except generation.NotGenerativeError:
                return None
            except errors.MpcompileError:  # --prompts the vocabulary does not hold
                raise
            except Exception as error:  # e.g. ORT refusing a file: its own search reports it
                first_line = (
                    str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                )
                self.notes[directory] = f"no generation check, files searched alone ({first_line})"
                return None
            self._pipelines[directory] = (capture, pipeline.GenerationJudge(capture))
        return self._pipelines[directory]


def _names_after_naming(path: pathlib.Path) -> dict[str, list[str]]:
    """Each node name of the model at ``path`` -> the names the search gives those nodes
    (``auto.graph.name_nodes``: the second branch's copy of a name gets a suffix)."""
    import onnx_ir as ir

    from mpcompile.auto.graph import name_nodes
    from mpcompile.irtools.graphs import all_graphs

    model = ir.load(path)
    nodes = [node for graph, _ in all_graphs(model, every_function=True) for node in graph]
    before = [node.name for node in nodes]
    name_nodes(model)
    names: dict[str, list[str]] = {}
    for original, node in zip(before, nodes, strict=True):
        if original:
            names.setdefault(original, []).append(node.name)
    return names


def prompts_from_file(path: str | pathlib.Path) -> tuple[tuple[int, ...], ...]:
    """``--prompts FILE``: token-id prompts, one a line (``validate``'s format)."""
    from mpcompile.validate.generative import read_prompts

    prompts: Sequence[tuple[int, ...]] = read_prompts(path)
    return tuple(prompts)
