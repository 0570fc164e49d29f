"""``optimize_model``: the optimisation level asked for, or the nearest one that gives a usable model.

Each level is tried as a *rung*; a rung's result is checked (``checks``) and either kept or, when a
fused op is to blame, rerun with that fusion switched off; otherwise the next rung down is tried:

- ``transformer``: ORT's basic level, then its Python fusions with the model type read from the
  graph; again with common-subexpression elimination off in the basic pass (ORT's Python fusions
  break on some shared subexpressions, e.g. GPT-2's "Graph is not a DAG"); again with the ``bert``
  optimiser; then ``extended``;
- ``extended``: ORT's ``ORT_ENABLE_EXTENDED``; then ``basic``;
- ``basic``: ORT's ``ORT_ENABLE_BASIC``; then the model unchanged.

ORT-internal ai.onnx ops the fusions leave (``SimplifiedLayerNormalization``) are lowered to
standard ONNX first (``lowering``). Every fallback, disabled fusion and lowering is recorded in the
result's ``mpcompile.optimize`` metadata.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import tempfile

import onnx
import onnx_ir as ir

from mpcompile import errors
from mpcompile.core.precision import low_precision_format
from mpcompile.evaluate.ort_session import is_onnxruntime_error
from mpcompile.targets.base import Target, get_target
from mpcompile.targets.optimize import ort_session
from mpcompile.targets.optimize.checks import (
    CheckContext,
    Problem,
    check_candidate,
    first_line,
    io_signature,
    model_ops,
)
from mpcompile.targets.optimize.lowering import lower_internal_ops
from mpcompile.targets.optimize.model_type import detect_model_type
from mpcompile.targets.optimize.symbolic_types import annotate_types, complete_types
from mpcompile.targets.optimize.transformer import FusionFailed, FusionSettings, fuse_transformer
from mpcompile.targets.optimize.unsqueeze import split_multi_axis_unsqueeze

OPTIMIZE_LEVELS = ("basic", "extended", "transformer")
OPTIMIZE_METADATA_KEY = "mpcompile.optimize"
_MAX_ROUNDS = 6  # reruns of one rung with more fusions disabled
_CSE = "CommonSubexpressionElimination"
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "DmlExecutionProvider")
_TARGET_OF = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda", "DmlExecutionProvider": "dml"}

ModelInput = str | os.PathLike | onnx.ModelProto | ir.Model


class OptimizeLevelError(errors.MpcompileError, ValueError):
    """An optimisation level that is not one of ``OPTIMIZE_LEVELS``."""

    exit_code = errors.ExitCode.USAGE


@dataclasses.dataclass(frozen=True)
class Rung:
    """One way of optimising: an ORT level, and for ``transformer`` the optimiser settings."""

    level: str  # basic | extended | transformer | none
    model_type: str = ""
    shared_subexpressions: bool = True  # CommonSubexpressionElimination in the basic pass

    def describe(self) -> str:
        if self.level != "transformer":
            return self.level
        cse = "" if self.shared_subexpressions else ", without common-subexpression elimination"
        return f"transformer (model type {self.model_type}{cse})"


@dataclasses.dataclass
class OptimizeRecord:
    """What one ``optimize_model`` call did, for the model's metadata and the conversion notes."""

    level: str
    provider: str
    target_provider: str | None
    onnxruntime_version: str
    applied: Rung | None = None
    fallbacks: list[str] = dataclasses.field(default_factory=list)
    disabled: list[str] = dataclasses.field(default_factory=list)
    lowered: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    unchecked: list[str] = dataclasses.field(default_factory=list)
    typed: bool = True

    def note(self) -> str:
        parts = [f"{self.level} ({self.provider}, onnxruntime {self.onnxruntime_version})"]
        if self.applied is not None and self.applied.level == "transformer":
            parts.append(f"model type {self.applied.model_type}")
        if self.fallbacks:
            used = self.applied.describe() if self.applied else "none"
            parts.append(f"fell back to {used} after: {'; '.join(self.fallbacks)}")
        if self.disabled:
            parts.append(f"disabled for {self.target_provider}: {', '.join(self.disabled)}")
        if self.lowered:
            lowered = ", ".join(f"{what} x{count}" for what, count in sorted(self.lowered.items()))
            parts.append(f"ORT-internal ops lowered to standard ONNX: {lowered}")
        parts.extend(self.unchecked)
        if not self.typed:
            parts.append("symbolic shape inference incomplete: some values may stay untyped (FP32)")
        return "; ".join(parts)


def optimize_model(
    model: ModelInput,
    level: str,
    target: str | Target | None = "cpu",
    *,
    model_type: str | None = None,
    num_heads: int = 0,
    hidden_size: int = 0,
    precision: str = "fp16",
) -> onnx.ModelProto:
    """Run ONNX Runtime's offline graph optimisation at ``level`` and return the optimised model.

    ``target`` (a name such as ``"cuda"`` or a ``Target``) picks the provider the optimising
    session runs on when the installed onnxruntime has it (else CPU); fused ops the target has no
    kernel for are switched off and the optimisation rerun, and so are those it runs only in FP32
    where it runs the heavy op they replace in ``precision`` (``"fp16"`` or ``"bf16"``, the
    conversion that follows: ``FusedConv`` for ``cuda``). ``model_type`` (default: read from the
    graph), ``num_heads`` and ``hidden_size`` (0: detect) go to the transformer optimiser. When a
    level cannot give a model that passes onnx's full check and loads in ORT, the next lower level
    is used. The input is never modified. The result records ``mpcompile.optimize`` in its metadata.
    """
    if level not in OPTIMIZE_LEVELS:
        raise OptimizeLevelError(
            f"unknown optimisation level {level!r}; expected one of {', '.join(OPTIMIZE_LEVELS)}"
        )
    onnxruntime = ort_session.import_onnxruntime()
    resolved = get_target(target or "any") if isinstance(target, (str, type(None))) else target
    provider = ort_session.session_provider(resolved, onnxruntime.get_available_providers())
    record = OptimizeRecord(level, provider, resolved.provider, onnxruntime.__version__)
    with tempfile.TemporaryDirectory(prefix="mpcompile-optimize-") as scratch:
        folder = pathlib.Path(scratch)
        input_path = ort_session.materialize(model, folder)
        reference = onnx.load_model(input_path, load_external_data=False)
        context = CheckContext(
            reference_io=io_signature(reference),
            input_ops=model_ops(reference),
            target=resolved,
            session_provider=provider,
            session_target=resolved if provider == resolved.provider else get_target(_TARGET_OF[provider]),
            onnxruntime=onnxruntime,
            folder=folder,
            low_dtype=low_precision_format(precision).precision.dtype,
        )
        del reference
        climber = _Climber(onnxruntime, input_path, context, record, model_type, num_heads, hidden_size)
        optimized = climber.run(level)
    _drop_unused_opset_imports(optimized)
    optimized, record.typed = annotate_types(optimized)
    if not record.typed:
        optimized, record.typed = complete_types(optimized)
    onnx.helper.set_model_props(
        optimized,
        {
            **{entry.key: entry.value for entry in optimized.metadata_props},
            OPTIMIZE_METADATA_KEY: record.note(),
        },
    )
    return optimized


class _Climber:
    """Tries the rungs below a level, top first, and keeps the first usable result."""

    def __init__(
        self,
        onnxruntime,
        input_path: str,
        context: CheckContext,
        record: OptimizeRecord,
        model_type: str | None,
        num_heads: int,
        hidden_size: int,
    ):
        self.onnxruntime = onnxruntime
        self.input_path = input_path
        self.context = context
        self.record = record
        self.model_type = model_type
        self.num_heads, self.hidden_size = num_heads, hidden_size
        self._basic: dict[bool, onnx.ModelProto] = {}
        self._refused_fused_ops = False  # the last rung failed on fused ops no fusion switch removes

    def run(self, level: str) -> onnx.ModelProto:
        previous: Rung | None = None
        for rung in self._rungs(level):
            if self._same_fusions_refused(previous, rung):
                continue
            previous = rung
            result = self._climb(rung)
            if result is not None:
                self.record.applied = rung
                return result
        self.record.applied = Rung("none")
        return onnx.load_model(self.input_path, load_external_data=True)

    def _same_fusions_refused(self, previous: Rung | None, rung: Rung) -> bool:
        """Rerunning without common-subexpression elimination helps when ORT's optimiser broke the
        graph, not when the same optimiser's fused ops were refused (T5's CUDA-only ops for cpu)."""
        return (
            previous is not None
            and rung.level == previous.level == "transformer"
            and rung.model_type == previous.model_type
            and self._refused_fused_ops
        )

    def _rungs(self, level: str) -> list[Rung]:
        rungs: list[Rung] = []
        if level == "transformer":
            detected = self.model_type or detect_model_type(self._basic_pass(True))
            rungs += [
                Rung("transformer", detected),
                Rung("transformer", detected, shared_subexpressions=False),
            ]
            if detected != "bert" and self.model_type is None:
                rungs.append(Rung("transformer", "bert", shared_subexpressions=False))
        if level in ("transformer", "extended"):
            rungs.append(Rung("extended"))
        return [*rungs, Rung("basic")]

    def _climb(self, rung: Rung) -> onnx.ModelProto | None:
        """The rung's result, rerun with the blamed fusions off until it passes; None if it cannot."""
        session_disabled: list[str] = []
        flags: set[str] = set()
        self._refused_fused_ops = False
        for _ in range(_MAX_ROUNDS):
            try:
                candidate = self._produce(rung, session_disabled, frozenset(flags))
            except FusionFailed as exc:
                self.record.fallbacks.append(f"{rung.describe()}: the transformer optimiser failed ({exc})")
                return None
            except Exception as exc:
                if not is_onnxruntime_error(exc):
                    raise
                self.record.fallbacks.append(f"{rung.describe()}: onnxruntime failed ({first_line(exc)})")
                return None
            lowered = _lower(candidate)
            candidate = lowered.model
            check = check_candidate(candidate, self.context)
            if not check.problems:
                self.record.lowered.update(lowered.counts)
                self.record.unchecked.extend(check.unchecked)
                self.record.disabled.extend([*session_disabled, *sorted(flags)])
                return candidate
            fixes = _fixes(check.problems, rung, session_disabled, flags)
            if not fixes:
                self._refused_fused_ops = all(problem.op is not None for problem in check.problems)
                reasons = "; ".join(problem.description for problem in check.problems[:3])
                self.record.fallbacks.append(f"{rung.describe()}: {reasons}")
                return None
            if rung.level == "transformer":
                flags.update(fixes)
            else:
                session_disabled.extend(fixes)
        self.record.fallbacks.append(f"{rung.describe()}: still failing after {_MAX_ROUNDS} reruns")
        return None

    def _produce(self, rung: Rung, session_disabled: list[str], flags: frozenset[str]) -> onnx.ModelProto:
        if rung.level != "transformer":
            return self._session(rung.level, session_disabled)
        settings = FusionSettings(
            rung.model_type,
            self.num_heads,
            self.hidden_size,
            flags,
            use_gpu=self.context.target.provider in _GPU_PROVIDERS,
        )
        return fuse_transformer(self._basic_pass(rung.shared_subexpressions), settings)

    def _basic_pass(self, shared_subexpressions: bool) -> onnx.ModelProto:
        """ORT's basic level (once per setting), multi-axis Unsqueezes split: the transformer optimiser's input."""
        if shared_subexpressions not in self._basic:
            disabled = [] if shared_subexpressions else [_CSE]
            basic = self._session("basic", disabled)
            self._basic[shared_subexpressions] = ir.to_proto(split_multi_axis_unsqueeze(ir.from_proto(basic)))
        return self._basic[shared_subexpressions]

    def _session(self, level: str, disabled: list[str]) -> onnx.ModelProto:
        try:
            return ort_session.optimize_with_session(
                self.onnxruntime,
                self.input_path,
                self.context.folder,
                level,
                self.context.session_provider,
                disabled,
            )
        except Exception as exc:
            if not is_onnxruntime_error(exc):
                raise
            if level == "basic" and not disabled:
                # ORT cannot even load the model at its most basic level: the user's input.
                raise errors.InvalidModelError(
                    f"onnxruntime could not optimise the model: {first_line(exc)}"
                ) from None
            raise


@dataclasses.dataclass
class _Lowered:
    model: onnx.ModelProto
    counts: collections.Counter


def _lower(candidate: onnx.ModelProto) -> _Lowered:
    work = ir.from_proto(candidate)
    counts, _left = lower_internal_ops(work)
    return _Lowered(ir.to_proto(work) if counts else candidate, counts)


def _fixes(problems: list[Problem], rung: Rung, session_disabled: list[str], flags: set[str]) -> list[str]:
    """The fusions still to switch off for ``problems`` on this rung (empty: none would help)."""
    if any(problem.op is None for problem in problems):
        return []
    wanted: list[str] = []
    for problem in problems:
        candidates = problem.python_flags if rung.level == "transformer" else problem.session_fusions
        if not candidates:
            return []
        wanted += [name for name in candidates if name not in session_disabled and name not in flags]
    return sorted(set(wanted))


def _drop_unused_opset_imports(model: onnx.ModelProto) -> None:
    """ORT writes every domain it knows into the optimised model; keep the ones nodes use."""
    used = {""}
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            used.add(node.domain)
            for attribute in node.attribute:
                graphs.extend([attribute.g] if attribute.HasField("g") else [])
                graphs.extend(attribute.graphs)
    for function in model.functions:
        used.add(function.domain)
        used.update(node.domain for node in function.node)
    kept = [entry for entry in model.opset_import if entry.domain in used or entry.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(kept)
