"""ONNX Runtime graph optimisation before precision assignment (``convert --optimize``).

Fusions (Attention, SkipLayerNormalization, BiasGelu, ...) stop matching once a graph has Casts
and FP16 types in it, so ORT users optimise first and convert second. Levels:

- ``basic``: ORT's ``ORT_ENABLE_BASIC`` (constant folding, redundant-node elimination; EP-agnostic).
- ``extended``: ``ORT_ENABLE_EXTENDED`` (adds ORT's contrib-op fusions: Gelu, LayerNormalization,
  SkipLayerNormalization, Attention, FusedMatMul, ...), written out through
  ``SessionOptions.optimized_model_filepath``.
- ``transformer``: ``onnxruntime.transformers.optimizer.optimize_model`` (ORT's Python fusions for
  transformer models on top of ORT's basic level).

ORT applies a fusion only where the session's execution provider supports the fused op, so the
session runs on the target's provider when the installed build has it, else on CPU (the fused
contrib ops of the extended level exist for both CPU and CUDA). The fused ops then get their
precision from the same kernel tables as every other op. onnxruntime is imported lazily.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import tempfile

import onnx
import onnx_ir as ir

from mpcompile import errors
from mpcompile.choices import OPTIMIZE_LEVELS
from mpcompile.graphs import model_graphs
from mpcompile.targets.base import Target, get_target

OPTIMIZE_METADATA_KEY = "mpcompile.optimize"
_WEIGHTS_FILE = "weights.data"


class OptimizeLevelError(errors.MpcompileError, ValueError):
    """An optimisation level that is not one of ``OPTIMIZE_LEVELS``."""

    exit_code = errors.ExitCode.USAGE


def optimize_model(
    model: str | os.PathLike | onnx.ModelProto | ir.Model,
    level: str,
    target: str | Target | None = "cpu",
    *,
    model_type: str = "bert",
    num_heads: int = 0,
    hidden_size: int = 0,
) -> onnx.ModelProto:
    """Run ONNX Runtime's offline graph optimisation at ``level`` and return the optimised model.

    ``target`` (a name such as ``"cuda"`` or a ``Target``) picks the provider the optimising
    session runs on when the installed onnxruntime has it (else CPU). When the session's provider
    is not the target's, fusions whose fused op the target has no kernel for (e.g. ``FusedGemm``,
    which only the CPU provider has) are disabled and the optimisation rerun. ``model_type``,
    ``num_heads`` and ``hidden_size`` go to the transformer optimiser (0: detect from the graph).
    The input is never modified. The result records ``mpcompile.optimize`` in its metadata.
    """
    if level not in OPTIMIZE_LEVELS:
        raise OptimizeLevelError(
            f"unknown optimisation level {level!r}; expected one of {', '.join(OPTIMIZE_LEVELS)}"
        )
    onnxruntime = _import_onnxruntime()
    resolved = get_target(target or "any") if isinstance(target, (str, type(None))) else target
    provider = session_provider(resolved, onnxruntime.get_available_providers())
    disabled: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mpcompile-optimize-") as folder:
        input_path = _materialize(model, pathlib.Path(folder))
        if level == "transformer":
            # ORT's basic level first (what the transformer optimiser's own opt_level=1 does, but that
            # path imports torch), then its Python fusions alone.
            basic = _optimize_with_session(
                onnxruntime, input_path, pathlib.Path(folder), "basic", provider, []
            )
            basic = ir.to_proto(split_multi_axis_unsqueeze(ir.from_proto(basic)))
            optimized = _optimize_transformer(basic, model_type, num_heads, hidden_size)
        else:
            while True:
                optimized = _optimize_with_session(
                    onnxruntime, input_path, pathlib.Path(folder), level, provider, disabled
                )
                if provider == resolved.provider:
                    break
                more = sorted(_fusions_without_target_kernels(optimized, resolved) - set(disabled))
                if not more:
                    break
                disabled.extend(more)
    _drop_unused_opset_imports(optimized)
    optimized, typed = annotate_types(optimized)
    note = f"{level} ({provider}, onnxruntime {onnxruntime.__version__})"
    if disabled:
        note += f"; disabled for {resolved.provider}: {', '.join(disabled)}"
    if not typed:
        note += "; symbolic shape inference incomplete: some values may stay untyped (FP32)"
    onnx.helper.set_model_props(
        optimized,
        {**{entry.key: entry.value for entry in optimized.metadata_props}, OPTIMIZE_METADATA_KEY: note},
    )
    return optimized


def annotate_types(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """Record value types and shapes, contrib ops included, with ORT's symbolic shape inference.

    onnx's own inference has no schemas for the fused ``com.microsoft`` ops, so without this their
    outputs would be untyped and the precision assignment would keep them FP32. Returns the
    annotated model and whether every value was inferred; a partial result is still returned
    (the public ``infer_shapes`` would instead write a file into the working folder and raise).
    """
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:
        return model, False
    try:
        with _logging_disabled():
            inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
            inference._preprocess(model)
            complete = False
            while inference.run_:
                complete = inference._infer_impl()
            inference._update_output_from_vi()
            return inference.out_mp_, bool(complete)
    except Exception:  # private API of one onnxruntime version; assorted errors on odd graphs
        return model, False


def session_provider(target: Target, available: list[str]) -> str:
    """The execution provider to optimise with: the target's when available, else CPU.

    TensorRT compiles subgraphs itself and saves no optimised graph, so its models are optimised
    for the CUDA provider it falls back to.
    """
    provider = target.provider
    if provider == "TensorrtExecutionProvider":
        provider = "CUDAExecutionProvider"
    return provider if provider in available else "CPUExecutionProvider"


# ORT graph transformers (names as ``disabled_optimizers`` takes them) that create each fused op.
FUSIONS_BY_FUSED_OP: dict[tuple[str, str], tuple[str, ...]] = {
    ("com.microsoft", "FusedGemm"): ("GemmActivationFusion",),
    ("com.microsoft", "FusedConv"): ("ConvActivationFusion",),
    ("com.microsoft", "FusedMatMul"): ("MatMulScaleFusion", "MatmulTransposeFusion"),
    ("com.microsoft", "BiasSoftmax"): ("BiasSoftmaxFusion",),
    ("com.microsoft", "BiasGelu"): ("BiasGeluFusion",),
    ("com.microsoft", "Gelu"): ("GeluFusionL1", "GeluFusionL2"),
    ("com.microsoft", "FastGelu"): ("FastGeluFusion",),
    ("com.microsoft", "QuickGelu"): ("QuickGeluFusion",),
    ("com.microsoft", "SkipLayerNormalization"): ("SkipLayerNormFusion",),
    ("com.microsoft", "EmbedLayerNormalization"): ("EmbedLayerNormFusion",),
    ("com.microsoft", "Attention"): ("AttentionFusion",),
}
_FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def _fusions_without_target_kernels(model: onnx.ModelProto, target: Target) -> set[str]:
    """Fusions that produced an op for which ``target`` has no kernel in any float type."""
    opsets = {entry.domain: entry.version for entry in model.opset_import}
    names: set[str] = set()
    for node in model.graph.node:
        fusions = FUSIONS_BY_FUSED_OP.get((node.domain, node.op_type))
        if fusions is None:
            continue
        opset = opsets.get(node.domain, 1)
        if not any(target.supports(node.domain, node.op_type, opset, dtype) for dtype in _FLOAT_TYPES):
            names.update(fusions)
    return names


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


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise errors.RuntimeMissingError(
            "--optimize needs onnxruntime; install it with: pip install 'mpcompile[cpu]'"
        ) from None
    return onnxruntime


def _materialize(model, folder: pathlib.Path) -> str:
    """A path ORT can load: the user's own file, or the in-memory model saved into ``folder``."""
    if isinstance(model, (str, os.PathLike)):
        path = pathlib.Path(model).absolute()
        if not path.is_file():
            raise errors.InputNotFoundError(f"{path}: no such file")
        return str(path)
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    path = folder / "input.onnx"
    onnx.save_model(
        proto, str(path), save_as_external_data=_near_protobuf_limit(proto), location="input.data"
    )
    return str(path)


def _near_protobuf_limit(proto: onnx.ModelProto) -> bool:
    try:
        return proto.ByteSize() > 2**31 - 2**24
    except ValueError:  # protobuf refuses to size messages over 2 GiB
        return True


def _optimize_with_session(
    onnxruntime, input_path: str, folder: pathlib.Path, level: str, provider: str, disabled: list[str]
) -> onnx.ModelProto:
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = {
        "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }[level]
    output_path = folder / f"optimized-{level}.onnx"
    options.optimized_model_filepath = str(output_path)
    # Weights go to a side file so models over 2 GiB can be written; they are read back below.
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", _WEIGHTS_FILE)
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
    )
    options.log_severity_level = 3
    try:
        onnxruntime.InferenceSession(input_path, options, providers=[provider], disabled_optimizers=disabled)
    except Exception as exc:  # ORT raises its own exception types for unloadable models
        raise errors.InvalidModelError(
            f"onnxruntime could not optimise the model: {_first_line(exc)}"
        ) from None
    return onnx.load_model(str(output_path), load_external_data=True)  # weights inline again


def _optimize_transformer(
    model: onnx.ModelProto, model_type: str, num_heads: int, hidden_size: int
) -> onnx.ModelProto:
    try:
        from onnxruntime.transformers import optimizer
    except ImportError as exc:
        raise errors.RuntimeMissingError(
            f"--optimize transformer needs onnxruntime.transformers ({exc})"
        ) from None
    # The optimiser logs warnings (e.g. "Model producer not matched") and prints statistics.
    with contextlib.redirect_stdout(None), _logging_disabled():
        try:
            result = optimizer.optimize_model(
                model, model_type, num_heads, hidden_size, opt_level=0, use_gpu=False
            )
        except Exception as exc:  # the optimiser raises assorted errors on graphs it cannot handle
            raise errors.InvalidModelError(f"the transformer optimiser failed: {_first_line(exc)}") from None
    return result.model


def split_multi_axis_unsqueeze(model: ir.Model) -> ir.Model:
    """Rewrite each ``Unsqueeze`` with several constant axes as a chain of single-axis Unsqueezes.

    The two forms compute the same thing (axes index the output, so inserting them in ascending
    order one at a time is exact), but ORT's transformer fusions only recognise the chained form
    that ``torch.onnx`` exports for ``mask[:, None, None, :]``; the one-node form (other exporters,
    hand-built graphs) would leave the attention mask path, and so the Attention fusion, unmatched.
    Nodes with negative axes on inputs of unknown rank are left alone. Changes ``model`` in place.
    """
    opset = model.opset_imports.get("", 1)
    for graph in model_graphs(model):
        for node in list(graph):
            if node.op_type != "Unsqueeze" or node.domain not in ("", "ai.onnx"):
                continue
            axes = _unsqueeze_axes(node, opset)
            if axes is None or len(axes) < 2:
                continue
            output_rank = None if node.inputs[0].shape is None else len(node.inputs[0].shape) + len(axes)
            if any(axis < 0 for axis in axes):
                if output_rank is None:
                    continue
                axes = [axis % output_rank for axis in axes]
            _replace_with_chain(graph, node, sorted(axes), opset)
    return model


def _unsqueeze_axes(node: ir.Node, opset: int) -> list[int] | None:
    if opset < 13:
        attribute = node.attributes.get("axes")
        return list(attribute.as_ints()) if attribute is not None else None
    if len(node.inputs) < 2 or node.inputs[1] is None:
        return None
    axes = ir.convenience.get_const_tensor(node.inputs[1])
    return [int(axis) for axis in axes.numpy().reshape(-1)] if axes is not None else None


def _replace_with_chain(graph: ir.Graph, node: ir.Node, axes: list[int], opset: int) -> None:
    current = node.inputs[0]
    chain = []
    for position, axis in enumerate(axes):
        name = f"{node.name or 'Unsqueeze'}_axis{axis}"
        if opset < 13:
            step = ir.node("Unsqueeze", [current], {"axes": [axis]}, name=name)
        else:
            axis_value = ir.Value(name=f"{name}_axes", const_value=ir.tensor([axis], dtype=ir.DataType.INT64))
            axis_value.dtype, axis_value.shape = ir.DataType.INT64, ir.Shape([1])
            graph.register_initializer(axis_value)
            step = ir.node("Unsqueeze", [current, axis_value], name=name)
        if node.outputs[0].dtype is not None:
            step.outputs[0].dtype = node.outputs[0].dtype
        if position == len(axes) - 1:
            step.outputs[0].shape = node.outputs[0].shape
        chain.append(step)
        current = step.outputs[0]
    graph.insert_before(node, chain)
    old_output = node.outputs[0]
    old_output.replace_all_uses_with(current, replace_graph_outputs=True)
    current.name, old_output.name = old_output.name, None
    graph.remove(node, safe=True)


@contextlib.contextmanager
def _logging_disabled():
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
