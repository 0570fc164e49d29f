"""The public conversion API: ``convert()`` and ``convert_file()``."""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from collections import ChainMap, Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import onnx
import onnx_ir as ir

from mpcompile import errors
from mpcompile.compiler.gc_pause import with_cyclic_gc_paused
from mpcompile.compiler.options import ConvertOptions
from mpcompile.core.io_types import fp32_io_names
from mpcompile.core.pipeline import Pipeline
from mpcompile.core.plan import (
    MODEL_VERSION_KEY,
    Decision,
    PrecisionPlan,
    Reason,
    nothing_low_note,
    read_decision,
)
from mpcompile.core.precision import Precision, low_precision_format
from mpcompile.core.ranges import ConstantRanges
from mpcompile.io import model_io, overwrite_guard
from mpcompile.io.structure import check_ir_structure
from mpcompile.irtools.graphs import all_graphs, model_graphs, with_shared_walk
from mpcompile.irtools.names import NameAuthority
from mpcompile.passes.context import ConversionContext, ConvertStats
from mpcompile.policy import range_propagation
from mpcompile.targets import get_target

if TYPE_CHECKING:
    from mpcompile.passes.range_run import LoadedProto

ModelLike = onnx.ModelProto | ir.Model | str | os.PathLike

__all__ = ["ConvertOptions", "ConvertResult", "convert", "convert_file"]


@dataclasses.dataclass
class NodeDecisionRecord:
    """One row of the decision table: a node and why it got its precision."""

    name: str
    op_type: str
    domain: str
    graph: str
    precision: str
    reason: str
    rule: str


@dataclasses.dataclass
class ConvertResult:
    """A converted model (same kind as given), its plan, statistics and notes."""

    model: Any
    plan: PrecisionPlan
    stats: ConvertStats
    notes: list[str]
    precision: str
    target: str
    already_converted: bool = False

    def decisions(self) -> list[NodeDecisionRecord]:
        """Per-node decisions, read back from the converted IR (graph order)."""
        model = self.model if isinstance(self.model, ir.Model) else ir.from_proto(self.model)
        rows = []
        for graph, _ in all_graphs(model, every_function=True):
            for node in graph:
                decision = read_decision(node)
                if decision is None:
                    continue
                rows.append(
                    NodeDecisionRecord(
                        node.name or "",
                        node.op_type,
                        node.domain,
                        graph.name or "",
                        decision.precision.value,
                        decision.reason,
                        decision.rule,
                    )
                )
        return rows

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (what ``mpcompile convert --json`` prints)."""
        return {
            "precision": self.precision,
            "target": self.target,
            "already_converted": self.already_converted,
            "stats": self.stats.as_dict(),
            "reasons": dict(sorted(Counter(decision.reason for _, decision in self.plan.items()).items())),
            "notes": list(self.notes),
            "range_measured": {  # kept FP32 by the range run (mpcompile.passes.range_run)
                node.name or "": decision.rule
                for node, decision in self.plan.items()
                if decision.reason == Reason.RANGE_MEASURED
            },
        }


@with_cyclic_gc_paused
@with_shared_walk
def convert(model: ModelLike, options: ConvertOptions | None = None, **kwargs: Any) -> ConvertResult:
    """Convert an FP32 model to mixed precision.

    ``model`` is an ``onnx.ModelProto``, an ``onnx_ir.Model`` (not modified) or a path.
    Returns a ``ConvertResult`` whose ``model`` is of the same kind (``ir.Model`` for a
    path). Options are a ``ConvertOptions`` or its fields as keywords (those replace the
    fields of ``options`` when both are given).
    """
    opts = ConvertOptions.build(options, **kwargs).resolved()
    ir_model, kind = to_ir_model(model)
    return _finish(model, kind, _convert_ir(ir_model, opts), opts)


@with_cyclic_gc_paused
@with_shared_walk
def convert_checked_ir(
    model: ir.Model, options: ConvertOptions | None = None, **kwargs: Any
) -> ConvertResult:
    """``convert`` for an ``ir.Model`` that already passed the input checks (it came from
    ``to_ir_model`` or ``model_io.load_model``), without checking it again: the --auto search
    converts one such model once per candidate, typed once (``infer_types.infer_once``: the mark
    passes to the copy). ``model`` is not modified."""
    opts = ConvertOptions.build(options, **kwargs).resolved()
    copy = model.clone()
    if model.meta.get(model_io.TYPES_INFERRED_KEY):
        copy.meta[model_io.TYPES_INFERRED_KEY] = True
    return _finish(model, "ir", _convert_ir(copy, opts), opts)


def _finish(model: ModelLike, kind: str, result: ConvertResult, opts: ConvertOptions) -> ConvertResult:
    """The result in the caller's kind of model, checked by the full checker when asked."""
    if kind == "proto" and not result.already_converted:
        proto = ir.to_proto(result.model)
        if opts.verify:
            _record(result.notes, _check(proto, model, result.model))
        result.model = proto
    elif kind == "proto":
        result.model = model
    elif opts.verify:
        verify_ir_conversion(model, result)
    return result


def verify_ir_conversion(model: ir.Model, result: ConvertResult) -> None:
    """The checks ``convert_checked_ir(..., verify=True)`` runs on its ``ir.Model`` result (a note,
    if any, appended to ``result.notes``), for a result converted without them: ``--auto``'s
    answer, converted once already as a candidate."""
    if not result.already_converted and model_io.weight_bytes(result.model) < model_io.TWO_GIB // 2:
        _record(result.notes, _check(ir.to_proto(result.model), model, result.model))


def _record(notes: list[str], note: str | None) -> None:
    if note is not None:
        notes.append(note)


@with_cyclic_gc_paused
@with_shared_walk
def convert_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    overwrite: bool = False,
    external_data: bool | str | None = None,
    on_pass_start: Callable[[str], None] | None = None,
    options: ConvertOptions | None = None,
    **kwargs: Any,
) -> ConvertResult:
    """Convert the model at ``input_path`` and save it atomically at ``output_path``.

    ``external_data``: True/False force the weights into/out of a data file (default: as the
    input had them); a file name (``"model.onnx_data"``) saves them there, beside the output.
    Options as for ``convert``. Raises ``AlreadyLowPrecisionError`` (and writes nothing) for an
    already converted model.
    """
    opts = ConvertOptions.build(options, **kwargs).resolved()
    # The range run evaluates the loaded protobuf (a graph OptimizePass rewrites is serialized),
    # and starts building its session from it while the IR is deserialized.
    keep_proto = not opts.static and not opts.optimize
    opened = open_conversion(
        input_path,
        output_path,
        overwrite=overwrite,
        external_data=external_data,
        keep_proto=keep_proto,
        start_range_run=keep_proto and range_propagation.needed(low_precision_format(str(opts.precision))),
    )
    try:
        if opened.replaces_inputs:
            ir.external_data.load_to_model(opened.model)  # files it reads from are about to be replaced
        # The model was loaded here and is written once, so converted weights may drop their FP32 bytes.
        result = _convert_ir(
            opened.model, opts, on_pass_start=on_pass_start, serialized_once=True, loaded=opened.loaded
        )
    finally:
        if opened.loaded is not None:
            opened.loaded.close()  # what the range run did not take (a conversion refused first)
    if result.already_converted:
        raise errors.AlreadyLowPrecisionError(f"{opened.source}: {result.notes[-1]}; nothing to do")
    if on_pass_start is not None:
        on_pass_start("saving and checking")
    save_conversion(result.model, opened, external_data=external_data, verify=opts.verify, notes=result.notes)
    return result


@dataclasses.dataclass(frozen=True)
class OpenedConversion:
    """A model loaded for a file-to-file conversion, with the input checks passed."""

    model: ir.Model
    source: pathlib.Path  # absolute
    target: pathlib.Path  # absolute
    replaces_inputs: bool  # saving replaces files the model reads (--overwrite of the input)
    loaded: LoadedProto | None = None  # the protobuf the model came from, for the range run


def open_conversion(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    overwrite: bool = False,
    external_data: bool | str | None = None,
    keep_proto: bool = False,
    start_range_run: bool = False,
) -> OpenedConversion:
    """Load ``input_path`` for a conversion saved at ``output_path`` (``convert_file`` and
    ``convert --auto``): the load checks, then the output-is-input guard (refused unless
    ``overwrite`` replaces the input itself) and the refusal of hard-linked data files.
    ``keep_proto``: the protobuf the model was deserialized from is kept (``loaded``);
    ``start_range_run``: and the range run's session is started from it before the IR is
    deserialized (``range_run.start_early``); ``loaded.close()`` waits for it if no range run
    takes it."""
    from mpcompile.passes.range_run import LoadedProto, start_early

    source, target = pathlib.Path(input_path).absolute(), pathlib.Path(output_path).absolute()
    loaded = LoadedProto(None, source.parent) if keep_proto else None

    def start(proto: onnx.ModelProto) -> None:
        assert loaded is not None
        loaded.early = start_early(proto, source.parent)

    try:
        model, proto = model_io.load_model_and_proto(
            source,
            infer_types=True,
            check_links=False,
            before_ir=start if start_range_run and keep_proto else None,
        )
        if loaded is not None:
            loaded.proto = proto
        del proto
        read = overwrite_guard.model_files(model_io.input_files(model))
        written = overwrite_guard.output_files(
            target, data_name=model_io.external_data_name(target, external_data)
        )
        replaces_input = overwrite and overwrite_guard.same_file(source, target)
        refuses_overwrite = overwrite_guard.refuse_overwriting_inputs(
            read, written, may_replace=read if replaces_input else ()
        )
        model_io.refuse_hard_linked_data(model_io.input_files(model)[1:])
    except BaseException:
        if loaded is not None:
            loaded.close()
        raise
    return OpenedConversion(model, source, target, bool(refuses_overwrite), loaded)


def save_conversion(
    model: ir.Model,
    opened: OpenedConversion,
    *,
    external_data: bool | str | None = None,
    verify: bool = True,
    notes: list[str] | None = None,
) -> None:
    """Save a conversion of ``opened`` atomically at its target; ``verify``: the checks of the
    written file (``compiler/output_checks.py``), whose note, if any, is appended to ``notes``."""
    model_io.save_model(
        model,
        opened.target,
        external_data=external_data,
        verify=(lambda path: _record(notes if notes is not None else [], _check(path, opened.source, model)))
        if verify
        else None,
    )


def to_ir_model(model: ModelLike) -> tuple[ir.Model, str]:
    """A working ``ir.Model`` for any accepted input, and its kind (proto, ir or path); never the caller's object."""
    if isinstance(model, onnx.ModelProto):  # external data resolves against the working folder
        small = model.ByteSize() < model_io.MAPPED_LOAD_MIN_BYTES  # larger ones are typed by InferTypesPass
        return model_io.model_from_proto(model, pathlib.Path.cwd(), infer_types=small), "proto"
    if isinstance(model, ir.Model):
        check_ir_structure(model)
        return model.clone(), "ir"
    if isinstance(model, (str, os.PathLike)):
        return model_io.load_model(model, infer_types=True), "path"
    raise TypeError(
        f"convert() takes an onnx.ModelProto, an onnx_ir.Model or a path, not {type(model).__name__}"
    )


def _convert_ir(
    model: ir.Model,
    opts: ConvertOptions,
    on_pass_start: Callable[[str], None] | None = None,
    serialized_once: bool = False,
    loaded: LoadedProto | None = None,
) -> ConvertResult:
    assert opts.is_resolved, "_convert_ir takes resolved options (ConvertOptions.resolved())"
    low = low_precision_format(str(opts.precision))
    target = get_target(opts.target) if isinstance(opts.target, str) else opts.target
    context = ConversionContext(
        low=low,
        target=target,
        policy=opts.op_policy(),
        fp32_io=fp32_io_names(model, opts.keep_io_types),  # optimisation keeps the IO names
        optimize=opts.optimize,
        allow_qdq=opts.allow_qdq,
        allow_custom_ops=opts.allow_custom_ops,
        serialized_once=serialized_once,
        measured_casts=opts.measured_casts,
        node_overrides=opts.node_overrides or {},
    )
    note = already_low_precision(model)
    if note is not None:
        context.notes.append(note)
        return ConvertResult(
            model, PrecisionPlan(), context.stats, context.notes, low.precision.value, target.name, True
        )
    # OptimizePass leaves the model it is given as it is; the plain comparison converts that one.
    unoptimized = model if opts.optimize else None
    measured: dict[str, Decision] | None = None
    if not opts.static:  # the range run's pass fills ``measured``; the caller's overrides win
        measured = {}
        context = dataclasses.replace(
            context, node_overrides=ChainMap(dict(context.node_overrides), measured)
        )
    plan = PrecisionPlan(ranges=ConstantRanges(low))  # range scans shared by the passes, once per value
    pipeline = build_pipeline(
        context,
        model,
        plan,
        check_invariants=opts.check_invariants,
        dump_dir=opts.dump_dir,
        range_overrides=measured,
        loaded=loaded,
    )
    pipeline.on_pass_start = on_pass_start
    context.stats.casts_before = count_casts(model)
    context.stats.weight_bytes_before = model_io.weight_bytes(model)
    try:
        model = pipeline(model)
    finally:
        pipeline.close()
        plan.close()
    context.stats.casts_after = count_casts(model)
    context.stats.weight_bytes_after = model_io.weight_bytes(model)
    context.stats.nodes_by_precision = Counter(
        decision.precision.value for node, decision in plan.items() if node.graph is not None
    )
    context.stats.pass_seconds = dict(pipeline.seconds)
    nothing_low = nothing_low_note(plan, low.precision.value, target.name)
    if nothing_low is not None:
        context.notes.append(nothing_low)
    model.ir_version = model_io.output_ir_version(model)
    if unoptimized is not None:
        heavy_note = _compare_with_plain(model, unoptimized, opts)
        if heavy_note:
            context.notes.append(heavy_note)
    return ConvertResult(model, plan, context.stats, context.notes, low.precision.value, target.name)


def _compare_with_plain(converted: ir.Model, unoptimized: ir.Model, opts: ConvertOptions) -> str | None:
    """A note when ``--optimize`` left more heavy FLOPs FP32 than converting ``unoptimized`` as it is.

    The plain conversion runs the same options without ``optimize`` (and without the
    debugging ones); its cost is measured in docs/targets.md.
    """
    from mpcompile.analysis.flop_share import heavy_flops, more_fp32_note

    plain_opts = dataclasses.replace(opts, optimize=None, check_invariants=False, dump_dir=None)
    plain = _convert_ir(unoptimized, plain_opts)
    if plain.already_converted:
        return None
    return more_fp32_note(f"--optimize {opts.optimize}", heavy_flops(converted), heavy_flops(plain.model))


def build_pipeline(
    context: ConversionContext,
    model: ir.Model,
    plan: PrecisionPlan | None = None,
    *,
    check_invariants: bool = False,
    dump_dir=None,
    range_overrides: dict[str, Decision] | None = None,
    loaded: LoadedProto | None = None,
) -> Pipeline:
    """The conversion passes, in order (see docs/architecture.md): OptimizePass first when
    ``context.optimize`` asks for it; AssignPrecisionPass fills ``plan``, the only thing the
    passes hand each other; ApplyPrecisionPass applies it. The preconditions of a conversion are
    the ``requires`` of the passes that need them (OrtLoadablePass, AssignPrecisionPass).
    ``loaded``: the protobuf ``model`` was loaded from, for the range run (not with OptimizePass,
    which rewrites the graph before it)."""
    from mpcompile.passes.apply_precision import ApplyPrecisionPass
    from mpcompile.passes.assign_precision import AssignPrecisionPass
    from mpcompile.passes.fold_casts import FoldCastsPass
    from mpcompile.passes.infer_types import InferTypesPass
    from mpcompile.passes.optimize import OptimizePass
    from mpcompile.passes.ort_loadable import OrtLoadablePass
    from mpcompile.passes.range_run import RangeRunPass
    from mpcompile.passes.stamp_decisions import StampDecisionsPass
    from mpcompile.passes.verify import VerifyPass, expected_io_signature

    plan = PrecisionPlan() if plan is None else plan
    # Bound by the first pass that names things, to the model as OptimizePass and OrtLoadablePass left it.
    names = NameAuthority()
    verify = VerifyPass(context, expected_io_signature(model, context))
    # Started here, finished by AssignPrecisionPass's review of its static paint.
    range_run = (
        RangeRunPass(context, range_overrides, None if context.optimize else loaded)
        if range_overrides is not None
        else None
    )
    return Pipeline(
        [
            *([OptimizePass(context)] if context.optimize else []),
            OrtLoadablePass(context),
            *([range_run] if range_run is not None else []),
            InferTypesPass(context),
            AssignPrecisionPass(context, plan, review=range_run.review if range_run is not None else None),
            ApplyPrecisionPass(context, plan, names),
            FoldCastsPass(context),
            StampDecisionsPass(context, plan),
            verify,
        ],
        check_invariants=(lambda m: VerifyPass(context)(m)) if check_invariants else None,
        dump_dir=dump_dir,
    )


def count_casts(model: ir.Model) -> int:
    return sum(
        1 for graph, _ in all_graphs(model) for node in graph if node.op_type == "Cast" and node.domain == ""
    )


def already_low_precision(model: ir.Model) -> str | None:
    """A note if the model was converted already (by mpcompile, or is FP16/BF16 throughout)."""
    if MODEL_VERSION_KEY in model.metadata_props:
        return f"already converted by mpcompile {model.metadata_props[MODEL_VERSION_KEY]}"
    dtypes = _float_dtypes(model)
    low = dtypes & {ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
    if not low:
        return None
    names = "/".join(sorted(Precision.of_dtype(d).value for d in low))
    if ir.DataType.FLOAT not in dtypes:
        return f"model is already {names} (no FP32 tensors)"
    # Another converter's mixed-precision output (onnxconverter-common, ORT's float16 with
    # keep_io_types, optimum -O4): most float weight bytes low, nodes computing low.
    share = _low_weight_share(model)
    if share > 0.5 and _computes_low(model):
        return f"model is already {names} ({share:.0%} of its float weight bytes are {names}; converted by another tool)"
    return None


def _low_weight_share(model: ir.Model) -> float:
    """The share of float initializer bytes that are FP16/BF16 (0 without float initializers)."""
    low = total = 0
    for graph in model_graphs(model):
        for value in graph.initializers.values():
            if value.dtype is None or not value.dtype.is_floating_point() or value.shape is None:
                continue
            if not value.shape.is_static():
                continue
            size = value.dtype.itemsize * math.prod(value.shape.numpy())
            total += size
            low += size if value.dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16) else 0
    return low / total if total else 0.0


def _computes_low(model: ir.Model) -> bool:
    """Whether a node other than a Cast outputs FP16/BF16."""
    return any(
        value.dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
        for graph in model_graphs(model)
        for node in graph
        if node.op_type != "Cast"
        for value in node.outputs
    )


def _float_dtypes(model: ir.Model) -> set[ir.DataType]:
    """The float dtypes of the values of the main graph and its subgraphs (graph inputs, outputs,
    initializers, node outputs)."""
    dtypes: set[ir.DataType | None] = set()
    for graph in model_graphs(model):
        dtypes.update(value.dtype for value in (*graph.inputs, *graph.outputs, *graph.initializers.values()))
        dtypes.update(value.dtype for node in graph for value in node.outputs)
    return {dtype for dtype in dtypes if dtype is not None and dtype.is_floating_point()}


def _check(
    converted: onnx.ModelProto | str | os.PathLike, original: ModelLike, written: ir.Model | None = None
) -> str | None:
    """The output passes every check its input passes (``compiler/output_checks.py``): an input that
    fails them already is the user's problem (InvalidModelError), otherwise it is our bug. Returns
    a note when the output was checked otherwise than by the full checker alone."""
    from mpcompile.compiler.output_checks import check_output

    return check_output(converted, original, written)
