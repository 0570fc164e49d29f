"""Concrete shapes for the report: resolve symbolic input dims, then run onnx shape inference.

FLOP and byte estimates need numbers. Symbolic dims of graph inputs are replaced by values
from ``--shape`` or by documented defaults before shape inference, and every assumption is
recorded so the report can show it:

* ``--shape input:1x128`` sets the whole shape of graph input ``input``;
* ``--shape seq:256`` or ``--shape seq=256`` sets every dim named ``seq`` (``NAME:N`` is read
  as a dim when no input is called ``NAME``, as ``mpcompile validate`` does);
* with ``--numerics --inputs data.npz``, inputs take the shapes of the arrays given;
* otherwise a batch-like dim (axis 0 of a graph input, or any dim whose name contains
  "batch") is :data:`DEFAULT_BATCH`, and every other symbolic dim is :data:`DEFAULT_DIM`.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common

from mpcompile.errors import ExitCode, MpcompileError

# The same defaults as generated inputs (``mpcompile validate``), so a report and a validation
# of the same model talk about the same shapes. Small on purpose: a default must fit models
# with short maximum contexts; pass --shape for realistic FLOP totals.
from mpcompile.evaluate.inputs import DEFAULT_BATCH, DEFAULT_DIM, MAX_DIM, is_dim_expression, symbol_values


class ReportOptionError(MpcompileError):
    """A report option (``--shape``, ``--op`` ...) that cannot be understood."""

    exit_code = ExitCode.USAGE


@dataclasses.dataclass
class ShapeSpec:
    """User-given shapes: whole input shapes and named dims."""

    inputs: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    dims: dict[str, int] = dataclasses.field(default_factory=dict)
    # Shapes of user-given feeds (--inputs): used for inputs --shape does not name.
    feed_shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)

    @classmethod
    def parse(cls, specs: list[str] | tuple[str, ...] | None) -> ShapeSpec:
        """Parse ``["input:1x128", "seq=256"]``; raises ReportOptionError on bad text."""
        spec = cls()
        for text in specs or ():
            if "=" in text and ":" not in text:
                name, _, value = text.partition("=")
                spec.dims[name.strip()] = _positive_int(value, text)
            elif ":" in text:
                name, _, dims = text.rpartition(":")
                if not name:
                    raise ReportOptionError(f"--shape {text!r}: expected NAME:DIMxDIM... or DIM_NAME=VALUE")
                spec.inputs[name] = (
                    tuple(_positive_int(d, text) for d in dims.lower().split("x")) if dims else ()
                )
            else:
                raise ReportOptionError(f"--shape {text!r}: expected NAME:DIMxDIM... or DIM_NAME=VALUE")
        return spec


def _positive_int(text: str, spec: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ReportOptionError(f"--shape {spec!r}: {text!r} is not a whole number") from None
    if value < 0:
        raise ReportOptionError(f"--shape {spec!r}: dims must not be negative")
    if value > MAX_DIM:
        raise ReportOptionError(f"--shape {spec!r}: a dim above {MAX_DIM} (2^63 - 1) does not fit ONNX")
    return value


def resolve_input_shapes(model: ir.Model, spec: ShapeSpec) -> dict[str, int]:
    """Make every main-graph input shape static, in place; returns the dims that were assumed.

    The returned mapping names each assumption: a dim name (``"seq"``) or ``"input[axis]"``
    for unnamed dims, with the value used.
    """
    known = {inp.name for inp in model.graph.inputs}
    dims = dict(spec.dims)
    given_shapes = {name: shape for name, shape in spec.feed_shapes.items() if name in known}
    for name, shape in spec.inputs.items():
        if name in known:
            given_shapes[name] = shape
        elif len(shape) == 1:
            dims[name] = shape[0]  # NAME:N for a symbolic dim
        else:
            raise ReportOptionError(f"--shape {name}: the model has no input of that name ({sorted(known)})")
    assumed: dict[str, int] = {}
    # Dims that exporters write as expressions (``past_sequence_length + sequence_length``) and a
    # KV-cache mask's own length symbol follow the other dims, as generated inputs do.
    derived = symbol_values(list(model.graph.inputs), dims, _report_defaults(model, dims))
    for value in model.graph.inputs:
        if value.shape is None:
            if value.name in given_shapes:
                value.shape = ir.Shape(given_shapes[value.name])
            continue
        if value.name in given_shapes:
            given = given_shapes[value.name]
            if len(given) != value.shape.rank():
                raise ReportOptionError(
                    f"--shape {value.name}: gives {len(given)} dims but the input has rank {value.shape.rank()}"
                )
            for axis, (dim, want) in enumerate(zip(value.shape, given, strict=True)):
                if isinstance(dim, int) and dim > 0 and dim != want:
                    raise ReportOptionError(
                        f"input {value.name!r}: axis {axis} is fixed at {dim} in the model, given {list(given)}"
                    )
            value.shape = ir.Shape(given)
            continue
        resolved: list[int] = []
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, int):
                resolved.append(dim)
                continue
            name = dim.value if isinstance(dim, ir.SymbolicDim) else None
            if name and name in dims:
                resolved.append(dims[name])
                continue
            chosen = derived.get(name) if name else None
            if chosen is None:
                chosen = _default_dim(axis, name)
            key = name or f"{value.name}[{axis}]"
            chosen = assumed.setdefault(key, chosen)
            resolved.append(chosen)
        value.shape = ir.Shape(resolved)
    return assumed


def _default_dim(axis: int, name: str | None) -> int:
    batch_like = axis == 0 or (name is not None and "batch" in name.lower())
    return DEFAULT_BATCH if batch_like else DEFAULT_DIM


def _report_defaults(model: ir.Model, given: dict[str, int]) -> dict[str, int]:
    """The report's default for each plain symbolic dim (expressions are left to evaluation)."""
    defaults: dict[str, int] = {}
    for value in model.graph.inputs:
        for axis, dim in enumerate(value.shape or ()):
            name = dim.value if isinstance(dim, ir.SymbolicDim) else None
            if name and name not in given and not is_dim_expression(name):
                defaults.setdefault(name, _default_dim(axis, name))
    return defaults


class _InferenceFailure(logging.Handler):
    """Catches the warning ShapeInferencePass logs (with a traceback) when onnx inference fails."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Shape inference failed"):
            self.failed = True


def infer_shapes(model: ir.Model) -> bool:
    """Run onnx shape inference (lenient, with data propagation) in place; False when it failed.

    The pass's own log output is kept off the console (it would print a traceback).
    """
    logger = logging.getLogger(ir.passes.common.ShapeInferencePass.__module__)
    handler = _InferenceFailure()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        ir.passes.common.ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    return not handler.failed


def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The value's shape as ints, or None when unknown or not fully static."""
    if value is None or value.shape is None:
        return None
    dims = list(value.shape)
    if not all(isinstance(d, int) for d in dims):
        return None
    return tuple(dims)


def element_count(value: ir.Value | None) -> int | None:
    """Number of elements of a value with a static shape, else None."""
    shape = static_shape(value)
    if shape is None:
        return None
    count = 1
    for dim in shape:
        count *= dim
    return count


# Shape arithmetic that onnx shape inference does not propagate (a Slice whose ``ends`` come
# from ``Shape``, a Reshape target built with Concat) is folded by evaluating the small integer
# subgraph with onnx's reference evaluator on a probe copy; the probe is then re-inferred and
# its static shapes are copied back. Tensors larger than this are never evaluated.
FOLD_MAX_ELEMENTS = 1 << 16
_NEVER_FOLD = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}
)


def refine_shapes(model: ir.Model) -> int:
    """Fill shapes left symbolic by onnx inference via constant-folded shape computations.

    Works on the main graph, in place on ``model``'s values; returns how many values got a
    static shape. Never raises: a node that cannot be folded is left alone.
    """
    missing = [v for node in model.graph for v in node.outputs if static_shape(v) is None]
    if not missing:
        return 0
    probe = model.clone()
    folded = _fold_constants(probe)
    if not folded:
        return 0
    proto = _probe_proto(probe, folded)
    try:
        import onnx

        inferred = onnx.shape_inference.infer_shapes(
            proto, check_type=False, strict_mode=False, data_prop=True
        )
    except Exception:
        return 0
    shapes: dict[str, tuple[int, ...]] = {}
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim if info.type.HasField("tensor_type") else None
        if (
            dims is not None
            and info.type.tensor_type.HasField("shape")
            and all(d.HasField("dim_value") for d in dims)
        ):
            shapes[info.name] = tuple(d.dim_value for d in dims)
    for name, array in folded.items():
        shapes[name] = tuple(array.shape)
    count = 0
    for node in model.graph:
        for value in node.outputs:
            if static_shape(value) is None and value.name in shapes:
                value.shape = ir.Shape(shapes[value.name])
                count += 1
    return count


def _fold_constants(model: ir.Model) -> dict[str, np.ndarray]:
    """Values of main-graph node outputs computable from small constants and static shapes."""
    known: dict[str, np.ndarray] = {}
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is not None and value.name and _small(tensor.shape):
            known[value.name] = tensor.numpy()
    folded: dict[str, np.ndarray] = {}
    opsets = dict(model.opset_imports)
    for node in model.graph:
        outputs = _fold_node(node, known, opsets)
        if outputs is None:
            continue
        for value, array in zip(node.outputs, outputs, strict=False):
            if value.name and isinstance(array, np.ndarray) and array.size <= FOLD_MAX_ELEMENTS:
                known[value.name] = array
                folded[value.name] = array
    return folded


def _small(shape: ir.Shape | None) -> bool:
    if shape is None or not shape.is_static():
        return False
    count = 1
    for dim in shape:
        count *= int(dim)
    return count <= FOLD_MAX_ELEMENTS


def _fold_node(
    node: ir.Node, known: dict[str, np.ndarray], opsets: dict[str, int]
) -> list[np.ndarray] | None:
    if node.domain not in ("", "ai.onnx") or node.op_type in _NEVER_FOLD:
        return None
    if any(
        attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()
    ):
        return None
    if node.op_type in ("Shape", "Size"):
        shape = static_shape(node.inputs[0])
        if shape is None:
            return None
        if node.op_type == "Size":
            return [np.array(int(np.prod(shape)), dtype=np.int64)]
        start_attr, end_attr = node.attributes.get("start"), node.attributes.get("end")
        start = start_attr.as_int() if start_attr is not None else 0
        end = end_attr.as_int() if end_attr is not None else len(shape)
        return [np.array(shape[start:end], dtype=np.int64)]
    inputs = [v for v in node.inputs if v is not None]
    if not all(v.name in known for v in inputs):
        return None
    try:
        import onnx
        from onnx import helper
        from onnx.reference import ReferenceEvaluator

        feeds = {v.name: known[v.name] for v in inputs}
        graph = helper.make_graph(
            [ir.serde.serialize_node(node)],
            "fold",
            [
                helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                for n, a in feeds.items()
            ],
            [helper.make_value_info(v.name, onnx.TypeProto()) for v in node.outputs if v.name],
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
        results = ReferenceEvaluator(proto).run(None, feeds)
    except Exception:
        return None
    return [np.asarray(r) for r in results]


def _probe_proto(probe: ir.Model, folded: dict[str, np.ndarray]):
    """The probe as a proto with folded nodes replaced by initializers and big weights as inputs."""
    import onnx
    from onnx import numpy_helper

    for name, value in list(probe.graph.initializers.items()):
        tensor = value.const_value
        if tensor is not None and not _small(tensor.shape):
            probe.graph.initializers.pop(name)
            probe.graph.inputs.append(value)
    proto = ir.to_proto(probe)
    kept = [n for n in proto.graph.node if not (n.output and all(o in folded or not o for o in n.output))]
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    proto.graph.initializer.extend(numpy_helper.from_array(array, name) for name, array in folded.items())
    del proto.graph.value_info[:]
    return onnx.ModelProto.FromString(proto.SerializeToString())
