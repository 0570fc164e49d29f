"""Property-based fuzzing of ``mpcompile.convert`` on random valid FP32 graphs.

Each example is a random chain of ops over ``[2, D]`` float tensors (element-wise ops,
MatMul/Gemm, Conv, reductions, Softmax, LayerNormalization, Reshape/Transpose/Concat/Slice/
Gather, Where, Cast, If), a random policy (blocked / allowed ops and nodes, keep_io_types)
and a target (with the cpu target, sometimes BF16). Properties:

1. conversion raises nothing but ``MpcompileError``;
2. the output passes ``onnx.checker.check_model(full_check=True)`` and loads in ORT;
3. its outputs match the FP32 model's within a bound derived from the graph: each value gets
   an error rule when it is built (its op's Lipschitz constant times the input error bounds,
   plus one rounding of the result, in units of the FP16 unit roundoff), evaluated with the
   magnitudes of one FP32 run that exposes every intermediate value. Values are kept far inside
   the FP16 range (a Tanh is inserted when a static bound passes 1000), so no FP16 overflow
   limit is involved;
4. converting the output again changes nothing, and converting twice gives identical bytes.

A second test mutates the structure of such graphs (see "structure mutations" below): conversion
and the report audit raise nothing but ``MpcompileError``, every output passes the full checker
and loads in ORT, the inputs stay byte-identical and nothing outside the model's folder is opened.
CI runs 60 derandomized mutated models (about 5 s).

CI runs 150 fixed, derandomized examples (about 30 s). A longer run:

    MPCOMPILE_FUZZ_EXAMPLES=2000 MPCOMPILE_FUZZ_RANDOM=1 python -m pytest -q tests/test_fuzz.py

(the same variables set the number of mutated models; add ``-k structure
--hypothesis-show-statistics`` for the mutation fuzzer alone with its outcome counts).

Measured on ORT's CPU EP, which runs FP16 nodes without an FP16 kernel in FP32 (its own Casts),
so CPU understates FP16 error; the bound is an upper bound either way.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from collections.abc import Callable

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

D = 8  # width of every stream value [2, D]
SHAPE = [2, D]
SQUASH_ABOVE = 1000.0  # far below FP16's 65504, so no op sees an overflow
UNIT_ROUNDOFF = {"fp16": 2.0**-11, "bf16": 2.0**-8}
EXAMPLES = int(os.environ.get("MPCOMPILE_FUZZ_EXAMPLES", "150"))
DERANDOMIZE = os.environ.get("MPCOMPILE_FUZZ_RANDOM", "") != "1"

UNARY = ("Relu", "Abs", "Neg", "Sigmoid", "Tanh", "Erf", "Softplus", "LeakyRelu", "Exp", "Log", "Sqrt", "Pow")
BINARY = ("Add", "Sub", "Mul", "Div", "Max", "Min", "Where")
STRUCTURAL = (
    "MatMul",
    "SharedWeightMatMul",
    "Gemm",
    "Conv",
    "ReduceSum",
    "ReduceMean",
    "Softmax",
    "LayerNormalization",
)
MOVEMENT = ("ReshapeTranspose", "ConcatSlice", "Gather", "CastRoundTrip", "If")
STEPS = UNARY + BINARY + STRUCTURAL + MOVEMENT


@dataclasses.dataclass
class Tracked:
    """A stream value: its name and a static bound on |value| (used to keep values in range)."""

    name: str
    magnitude: float


# An error rule gives a value's error bound, in units of eps, from the measured magnitudes M
# (max |value| in the FP32 run) and the error bounds C of the values computed before it.
ErrorRule = Callable[[dict[str, float], dict[str, float]], float]


class RandomGraph:
    """Builds a valid FP32 graph step by step, with an error rule for every stream value."""

    def __init__(self, opset: int, seed: int) -> None:
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)]
        self.rules: dict[str, ErrorRule] = {"x": lambda M, C: M["x"]}  # one rounding of the input
        self.values = [Tracked("x", 1.0)]  # inputs are uniform in [-1, 1]
        self.op_types: set[str] = set()
        self.has_flag = False
        self._count = 0

    # ------------------------------------------------------------------ plumbing

    def fresh(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def node(self, op_type: str, inputs: list[str], stem: str | None = None, **attrs) -> str:
        output = self.fresh(stem or op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, inputs, [output], name=f"n{self._count}_{op_type}", **attrs)
        )
        self.op_types.add(op_type)
        return output

    def track(self, name: str, magnitude: float, rule: ErrorRule) -> Tracked:
        self.rules[name] = rule
        return Tracked(name, magnitude)

    def constant(self, array: np.ndarray, stem: str) -> str:
        name = self.fresh(stem)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def weights(self, shape: tuple[int, ...], fan_in: int) -> str:
        """Uniform weights with every row sum of |w| at most 1 (so MatMul does not amplify)."""
        limit = 1.0 / fan_in
        return self.constant(self.rng.uniform(-limit, limit, shape).astype(np.float32), "w")

    def squashed(self, value: Tracked, limit: float = SQUASH_ABOVE) -> Tracked:
        if value.magnitude <= limit:
            return value
        a = value.name
        return self.track(self.node("Tanh", [a]), 1.0, lambda M, C, o=None: C[a] + 1.0)

    def shape_constant(self, dims: list[int]) -> str:
        return self.constant(np.array(dims, dtype=np.int64), "shape")

    # ------------------------------------------------------------------ steps
    # Rules: Lipschitz constant x input error + one rounding of the output (|output| x eps).
    # Magnitudes A, B, O are measured maxima of |a|, |b|, |output| in the FP32 run.

    def add_step(self, step: str, a: Tracked, b: Tracked) -> Tracked:
        a, b = self.squashed(a), self.squashed(b)
        handler = getattr(self, f"_step_{step}", None)
        if handler is not None:
            return handler(a, b)
        return self._unary(step, a)

    def _unary(self, op: str, a: Tracked) -> Tracked:
        lipschitz, magnitude = {
            "Relu": (1.0, a.magnitude),
            "Abs": (1.0, a.magnitude),
            "Neg": (1.0, a.magnitude),
            "Sigmoid": (0.25, 1.0),
            "Tanh": (1.0, min(1.0, a.magnitude)),
            "Erf": (1.13, 1.0),
            "Softplus": (1.0, a.magnitude + 0.7),
            "LeakyRelu": (1.0, a.magnitude),
        }[op]
        attrs = {"alpha": 0.1} if op == "LeakyRelu" else {}
        x, out = a.name, self.node(op, [a.name], **attrs)
        return self.track(out, magnitude, lambda M, C: lipschitz * C[x] + M[out])

    def _step_Exp(self, a: Tracked, _b: Tracked) -> Tracked:
        a = self.squashed(a, 4.0)
        x, out = a.name, self.node("Exp", [a.name])
        # Lipschitz of exp on [-A, A] is e^A = max |output|
        return self.track(out, math.exp(a.magnitude), lambda M, C: M[out] * C[x] + M[out])

    def _abs_plus_one(self, a: Tracked) -> Tracked:
        one = self.constant(np.array(1.0, np.float32), "one")
        x, shifted = a.name, self.node("Add", [self.node("Abs", [a.name]), one])
        return self.track(shifted, a.magnitude + 1, lambda M, C: C[x] + M[shifted])

    def _step_Log(self, a: Tracked, _b: Tracked) -> Tracked:
        shifted = self._abs_plus_one(a)  # log(|a| + 1): Lipschitz 1 (argument >= 1), never log(0)
        s_, out = shifted.name, self.node("Log", [shifted.name])
        return self.track(out, math.log(shifted.magnitude), lambda M, C: C[s_] + M[out] + 1)

    def _step_Sqrt(self, a: Tracked, _b: Tracked) -> Tracked:
        shifted = self._abs_plus_one(a)  # sqrt(|a| + 1): Lipschitz 1/2
        s_, out = shifted.name, self.node("Sqrt", [shifted.name])
        return self.track(out, math.sqrt(shifted.magnitude), lambda M, C: 0.5 * C[s_] + M[out])

    def _step_Pow(self, a: Tracked, _b: Tracked) -> Tracked:
        a = self.squashed(a, 100.0)
        two = self.constant(np.array(2.0, np.float32), "two")
        x, out = a.name, self.node("Pow", [a.name, two])
        return self.track(out, a.magnitude**2, lambda M, C: 2 * M[x] * C[x] + M[out])

    def _step_Add(self, a: Tracked, b: Tracked) -> Tracked:
        x, y, out = a.name, b.name, self.node("Add", [a.name, b.name])
        return self.track(out, a.magnitude + b.magnitude, lambda M, C: C[x] + C[y] + M[out])

    def _step_Sub(self, a: Tracked, b: Tracked) -> Tracked:
        x, y, out = a.name, b.name, self.node("Sub", [a.name, b.name])
        return self.track(out, a.magnitude + b.magnitude, lambda M, C: C[x] + C[y] + M[out])

    def _step_Mul(self, a: Tracked, b: Tracked) -> Tracked:
        a, b = self.squashed(a, 100.0), self.squashed(b, 100.0)
        x, y, out = a.name, b.name, self.node("Mul", [a.name, b.name])
        return self.track(out, a.magnitude * b.magnitude, lambda M, C: M[y] * C[x] + M[x] * C[y] + M[out])

    def _step_Div(self, a: Tracked, b: Tracked) -> Tracked:
        denominator = self._abs_plus_one(b)  # a / (|b| + 1): the denominator is at least 1
        x, d, out = a.name, denominator.name, self.node("Div", [a.name, denominator.name])
        return self.track(out, a.magnitude, lambda M, C: C[x] + M[x] * C[d] + M[out])

    def _extremum(self, op: str, a: Tracked, b: Tracked) -> Tracked:
        x, y, out = a.name, b.name, self.node(op, [a.name, b.name])
        return self.track(out, max(a.magnitude, b.magnitude), lambda M, C: max(C[x], C[y]))

    def _step_Max(self, a: Tracked, b: Tracked) -> Tracked:
        return self._extremum("Max", a, b)

    def _step_Min(self, a: Tracked, b: Tracked) -> Tracked:
        return self._extremum("Min", a, b)

    def _step_Where(self, a: Tracked, b: Tracked) -> Tracked:
        # Where(a > b, a, b) is max(a, b): continuous, so a flipped comparison costs nothing.
        x, y = a.name, b.name
        out = self.node("Where", [self.node("Greater", [x, y]), x, y])
        return self.track(out, max(a.magnitude, b.magnitude), lambda M, C: max(C[x], C[y]))

    @staticmethod
    def _dot_error(c_in: float, magnitude_in: float, fan_in: int) -> float:
        """Dot products with row sums |w| <= 1: input error, weight rounding (and input
        rounding) 2|x|, and naive low-precision accumulation of K terms K|x|."""
        return c_in + (2 + fan_in) * magnitude_in

    def _step_MatMul(self, a: Tracked, _b: Tracked) -> Tracked:
        x, out = a.name, self.node("MatMul", [a.name, self.weights((D, D), D)])
        return self.track(out, a.magnitude, lambda M, C: self._dot_error(C[x], M[x], D))

    def _step_SharedWeightMatMul(self, a: Tracked, b: Tracked) -> Tracked:
        """Two MatMuls reading one initializer: a policy may block one and not the other."""
        weight = self.weights((D, D), D)
        x, y = a.name, b.name
        out = self.node("Add", [self.node("MatMul", [x, weight]), self.node("MatMul", [y, weight])])
        return self.track(
            out,
            a.magnitude + b.magnitude,
            lambda M, C: self._dot_error(C[x], M[x], D) + self._dot_error(C[y], M[y], D) + M[out],
        )

    def _step_Gemm(self, a: Tracked, _b: Tracked) -> Tracked:
        weight = self.weights((D, D), D)
        bias = self.constant(self.rng.uniform(-0.1, 0.1, D).astype(np.float32), "bias")
        x, out = a.name, self.node("Gemm", [a.name, weight, bias], transB=1)
        return self.track(out, a.magnitude + 0.1, lambda M, C: self._dot_error(C[x], M[x] + 0.1, D + 1) + 0.1)

    def _step_Conv(self, a: Tracked, _b: Tracked) -> Tracked:
        as_ncl = self.node("Reshape", [a.name, self.shape_constant([1, 2, D])])
        conv = self.node("Conv", [as_ncl, self.weights((2, 2, 3), 6)], pads=[1, 1], kernel_shape=[3])
        x, out = a.name, self.node("Reshape", [conv, self.shape_constant(SHAPE)])
        return self.track(out, a.magnitude, lambda M, C: self._dot_error(C[x], M[x], 6))

    def _reduce(self, op: str, a: Tracked) -> str:
        if op == "ReduceSum" or self.opset >= 18:
            return self.node(op, [a.name, self.constant(np.array([1], np.int64), "axes")], keepdims=1)
        return self.node(op, [a.name], axes=[1], keepdims=1)

    def _step_ReduceSum(self, a: Tracked, _b: Tracked) -> Tracked:
        # a + sum(a) broadcast back over the row; naive accumulation of D terms: D * D|a|
        x, out = a.name, self.node("Add", [a.name, self._reduce("ReduceSum", a)])
        return self.track(out, (D + 1) * a.magnitude, lambda M, C: C[x] + D * C[x] + D * D * M[x] + M[out])

    def _step_ReduceMean(self, a: Tracked, _b: Tracked) -> Tracked:
        # a - mean(a): centering
        x, out = a.name, self.node("Sub", [a.name, self._reduce("ReduceMean", a)])
        return self.track(out, 2 * a.magnitude, lambda M, C: 2 * C[x] + D * M[x] + M[out])

    def _step_Softmax(self, a: Tracked, _b: Tracked) -> Tracked:
        x, out = a.name, self.node("Softmax", [a.name], axis=-1)
        return self.track(out, 1.0, lambda M, C: 2 * C[x] + D)

    def _step_LayerNormalization(self, a: Tracked, _b: Tracked) -> Tracked:
        scale = self.constant(self.rng.uniform(0.5, 1.5, D).astype(np.float32), "ln_scale")
        bias = self.constant(self.rng.uniform(-0.1, 0.1, D).astype(np.float32), "ln_bias")
        # epsilon 0.1 bounds the Lipschitz constant: |d out / d in| <= 2 * 1.5 / sqrt(0.1) < 10
        x = a.name
        out = self.node("LayerNormalization", [x, scale, bias], axis=-1, epsilon=0.1)
        return self.track(out, 1.5 * math.sqrt(D) + 0.1, lambda M, C: 10 * C[x] + D * M[out])

    def _step_ReshapeTranspose(self, a: Tracked, _b: Tracked) -> Tracked:
        transposed = self.node("Transpose", [a.name], perm=[1, 0])
        x, out = a.name, self.node("Reshape", [transposed, self.shape_constant(SHAPE)])
        return self.track(out, a.magnitude, lambda M, C: C[x])

    def _step_ConcatSlice(self, a: Tracked, b: Tracked) -> Tracked:
        joined = self.node("Concat", [a.name, b.name], axis=1)
        start = int(self.rng.integers(0, D + 1))
        starts, ends, axes = (self.constant(np.array([v], np.int64), "slice") for v in (start, start + D, 1))
        x, y, out = a.name, b.name, self.node("Slice", [joined, starts, ends, axes])
        return self.track(out, max(a.magnitude, b.magnitude), lambda M, C: max(C[x], C[y]))

    def _step_Gather(self, a: Tracked, _b: Tracked) -> Tracked:
        indices = self.constant(self.rng.permutation(D).astype(np.int64), "indices")
        x, out = a.name, self.node("Gather", [a.name, indices], axis=1)
        return self.track(out, a.magnitude, lambda M, C: C[x])

    def _step_CastRoundTrip(self, a: Tracked, _b: Tracked) -> Tracked:
        # An existing Cast(to=FLOAT16) -> Cast(to=FLOAT) in the FP32 model: one rounding.
        low = self.node("Cast", [a.name], to=TensorProto.FLOAT16)
        x, out = a.name, self.node("Cast", [low], to=TensorProto.FLOAT)
        return self.track(out, a.magnitude, lambda M, C: C[x] + M[x])

    def _step_If(self, a: Tracked, _b: Tracked) -> Tracked:
        if not self.has_flag:
            self.inputs.append(helper.make_tensor_value_info("flag", TensorProto.BOOL, []))
            self.has_flag = True
        branches = []
        for op in ("Relu", "Neg"):
            out = self.fresh(f"branch_{op.lower()}")
            node = helper.make_node(op, [a.name], [out], name=f"{out}_node")
            branches.append(
                helper.make_graph(
                    [node], out, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, SHAPE)]
                )
            )
        x, out = a.name, self.node("If", ["flag"], then_branch=branches[0], else_branch=branches[1])
        self.op_types.update({"Relu", "Neg"})
        return self.track(out, a.magnitude, lambda M, C: C[x])

    # ------------------------------------------------------------------ result

    def model(self, outputs: list[Tracked]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "fuzz",
            self.inputs,
            [helper.make_tensor_value_info(o.name, TensorProto.FLOAT, SHAPE) for o in outputs],
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)], ir_version=8)
        onnx.checker.check_model(model, full_check=True)
        return model


@dataclasses.dataclass
class Example:
    model: onnx.ModelProto
    outputs: list[Tracked]
    rules: dict[str, ErrorRule]
    op_types: set[str]
    node_names: list[str]
    feeds_seed: int

    def error_bounds(self, feeds: dict[str, np.ndarray]) -> dict[str, float]:
        """Each value's error bound (units of eps) for these inputs: one FP32 run exposes every
        tracked value, then the rules run in creation order."""
        probe = onnx.ModelProto.FromString(self.model.SerializeToString())
        present = {output.name for output in probe.graph.output} | {"x"}
        extra = [name for name in self.rules if name not in present]
        probe.graph.output.extend(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in extra
        )
        names = [output.name for output in probe.graph.output]
        values = dict(zip(names, run_ort(probe, feeds), strict=True))
        values["x"] = feeds["x"]
        magnitudes = {name: float(np.max(np.abs(value))) for name, value in values.items()}
        bounds: dict[str, float] = {}
        for name, rule in self.rules.items():
            bounds[name] = rule(magnitudes, bounds)
        return bounds


@st.composite
def examples(draw) -> Example:
    opset = draw(st.sampled_from([17, 18]))
    builder = RandomGraph(opset, draw(st.integers(0, 2**31)))
    for _ in range(draw(st.integers(1, 10))):
        step = draw(st.sampled_from(STEPS))
        a = builder.values[draw(st.integers(0, len(builder.values) - 1))]
        b = builder.values[draw(st.integers(0, len(builder.values) - 1))]
        builder.values.append(builder.add_step(step, a, b))
    outputs = [builder.values[-1]]
    if len(builder.values) > 2 and draw(st.booleans()):
        extra = builder.values[draw(st.integers(1, len(builder.values) - 2))]
        if extra.name != outputs[0].name:
            outputs.append(extra)
    model = builder.model(outputs)
    names = [node.name for node in model.graph.node]
    return Example(model, outputs, builder.rules, builder.op_types, names, draw(st.integers(0, 2**31)))


def _available_targets() -> list[str]:
    from mpcompile.targets import get_target

    names = []
    for name in ("any", "cuda", "cpu", "tensorrt"):
        try:
            get_target(name)
            names.append(name)
        except Exception:  # that target has not landed
            pass
    return names


@st.composite
def options(draw, example: Example) -> dict:
    ops = sorted(example.op_types)
    blocked = draw(st.lists(st.sampled_from(ops), max_size=3, unique=True))
    allowed = draw(
        st.lists(st.sampled_from([op for op in ops if op not in blocked] or ops), max_size=3, unique=True)
    )
    allowed = [op for op in allowed if op not in blocked]
    chosen = {
        "block_ops": tuple(blocked),
        "allow_ops": tuple(allowed),
        "block_nodes": tuple(draw(st.lists(st.sampled_from(example.node_names), max_size=2, unique=True))),
        "keep_io_types": draw(st.booleans()),
        "target": draw(st.sampled_from(_available_targets())),
        "precision": "fp16",
    }
    # BF16 only where ORT's CPU EP (which runs these checks) has the kernels: the cpu target.
    if chosen["target"] == "cpu" and draw(st.booleans()):
        chosen["precision"] = "bf16"
        chosen["keep_io_types"] = True  # numpy cannot feed bfloat16 inputs to ORT
    fixed = ("keep_io_types", "target", "precision")
    return {key: value for key, value in chosen.items() if value or key in fixed}


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = 1
    session_options.log_severity_level = 3
    session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), session_options, providers=["CPUExecutionProvider"]
    )
    inputs = {}
    for graph_input in session.get_inputs():
        value = feeds[graph_input.name]
        inputs[graph_input.name] = (
            value.astype(np.float16) if graph_input.type == "tensor(float16)" else value
        )
    return session.run(None, inputs)


def fuzz_settings(max_examples: int):
    """hypothesis settings of every fuzz test: derandomized unless MPCOMPILE_FUZZ_RANDOM is set."""
    return settings(
        max_examples=max_examples,
        derandomize=DERANDOMIZE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )


@fuzz_settings(EXAMPLES)
@given(data=st.data())
def test_random_graphs_convert_correctly(data: st.DataObject) -> None:
    import mpcompile
    from mpcompile.errors import MpcompileError

    example = data.draw(examples(), label="example")
    chosen = data.draw(options(example), label="options")
    original_bytes = example.model.SerializeToString()

    try:
        result = mpcompile.convert(onnx.ModelProto.FromString(original_bytes), **chosen)
    except MpcompileError:
        return  # a documented, user-facing refusal is an allowed outcome
    converted = result.model
    assert isinstance(converted, onnx.ModelProto)
    onnx.checker.check_model(converted, full_check=True)

    rng = np.random.default_rng(example.feeds_seed)
    feeds = {"x": rng.uniform(-1, 1, SHAPE).astype(np.float32), "flag": np.array(bool(rng.integers(0, 2)))}
    want = run_ort(example.model, feeds)
    got = run_ort(converted, feeds)
    bounds = example.error_bounds(feeds)
    eps = UNIT_ROUNDOFF[chosen["precision"]]
    for tracked, expected, actual in zip(example.outputs, want, got, strict=True):
        assert actual.shape == expected.shape
        difference = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        bound = 2 * bounds[tracked.name] * eps + 1e-5
        assert np.all(np.isfinite(actual)), f"{tracked.name}: non-finite output"
        assert difference.max() <= bound, (
            f"{tracked.name}: max |fp16 - fp32| {difference.max():.3g} > bound {bound:.3g} "
            f"(|value| <= {tracked.magnitude:.3g}); options {chosen}"
        )

    again = mpcompile.convert(onnx.ModelProto.FromString(converted.SerializeToString()), **chosen)
    assert again.model.SerializeToString() == converted.SerializeToString(), (
        "second conversion changed the model"
    )
    twice = mpcompile.convert(onnx.ModelProto.FromString(original_bytes), **chosen)
    assert twice.model.SerializeToString() == converted.SerializeToString(), "conversion is not deterministic"
    assert example.model.SerializeToString() == original_bytes, "the input model was modified"


def test_builder_makes_every_step_valid() -> None:
    """Each step alone builds a model the checker accepts and ORT runs (guards the fuzzer itself)."""
    for step in STEPS:
        builder = RandomGraph(18, 0)
        x = builder.values[0]
        out = builder.add_step(step, x, x)
        model = builder.model([out])
        feeds = {"x": np.linspace(-1, 1, 16, dtype=np.float32).reshape(SHAPE), "flag": np.array(True)}
        (value,) = run_ort(model, feeds)
        assert np.all(np.abs(value) <= out.magnitude * (1 + 1e-5)), step


# --------------------------------------------------------------------------- structure mutations
#
# The same random graphs, then one to three mutations of their structure: nodes dropped,
# duplicated, moved or renamed, node inputs dropped or emptied, Casts retargeted, values renamed
# (every use, only the definition, or one use),
# graph inputs/outputs/initializers dropped, dtypes and dims changed, value_info added, ops moved
# to an unknown domain, and weights moved to external data with perturbed location/offset/length.
# Property: convert_file and the report audit raise nothing but MpcompileError; every output
# passes the full checker and loads in ORT; the input files are unchanged; the FIFO beside the
# model's folder (where "../outside.bin" points) is never opened.

MUTATION_EXAMPLES = int(os.environ.get("MPCOMPILE_FUZZ_EXAMPLES", "60"))
MUTATIONS = (
    "opset_version",
    "duplicate_output",
    "attribute_type",
    "overload",
    "drop_node",
    "duplicate_node",
    "move_node",
    "rename_value",
    "rename_node",
    "drop_graph_value",
    "retype",
    "redim",
    "add_value_info",
    "unknown_domain",
    "external_data",
    "drop_node_input",
    "cast_to",
)
ODD_DTYPES = (0, 99, TensorProto.INT64, TensorProto.FLOAT16, TensorProto.COMPLEX64, TensorProto.STRING)
ODD_LOCATIONS = ("../outside.bin", "/etc/passwd", "missing.bin", "w.bin\0x", "sub/../w.bin", ".", "w" * 300)
ODD_NUMBERS = ("-1", "1.5", " 0", "+4", "abc", "", "99999999999")


def _subgraphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    found = [graph]
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                found.extend(_subgraphs(subgraph))
    return found


def _names(graph: onnx.GraphProto) -> list[str]:
    names = [info.name for info in graph.input] + [tensor.name for tensor in graph.initializer]
    names += [name for node in graph.node for name in (*node.input, *node.output) if name]
    return sorted(set(names))


def _rename(graph: onnx.GraphProto, old: str, new: str, where: str, pick: int) -> None:
    """Rename value ``old``: everywhere, only where it is defined, or at one use."""
    definitions = [*graph.input, *graph.initializer, *graph.output]
    uses = [(node.input, i) for node in graph.node for i, name in enumerate(node.input) if name == old]
    defines = [(node.output, i) for node in graph.node for i, name in enumerate(node.output) if name == old]
    if where == "everywhere":
        for item in definitions:
            if item.name == old:
                item.name = new
        for field, index in uses + defines:
            field[index] = new
    elif where == "definition":
        for item in (*graph.input, *graph.initializer):
            if item.name == old:
                item.name = new
        for field, index in defines:
            field[index] = new
    elif uses:
        field, index = uses[pick % len(uses)]
        field[index] = new


def _externalize(draw, graph: onnx.GraphProto, folder: pathlib.Path) -> None:
    """Move one initializer's bytes to w.bin with drawn (often wrong) location/offset/length."""
    candidates = [tensor for tensor in graph.initializer if tensor.raw_data]
    if not candidates:
        return
    tensor = draw(st.sampled_from(candidates))
    data = tensor.raw_data
    pad = draw(st.integers(0, 8))
    path = folder / "w.bin"
    existing = path.read_bytes() if path.exists() else b""
    offset = len(existing) + pad
    path.write_bytes(existing + b"\0" * pad + data)
    fields = {"location": "w.bin", "offset": str(offset), "length": str(len(data))}
    key = draw(st.sampled_from(["none", "location", "offset", "length", "length_number", "drop_length"]))
    if key == "location":
        fields["location"] = draw(st.sampled_from(ODD_LOCATIONS))
    elif key in ("offset", "length"):
        fields[key] = draw(st.sampled_from(ODD_NUMBERS))
    elif key == "length_number":
        fields["length"] = str(len(data) + draw(st.sampled_from([-4, -1, 1, 4, -len(data)])))
    elif key == "drop_length":
        del fields["length"]
        path.write_bytes(path.read_bytes()[: offset + draw(st.integers(0, len(data)))])
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for name, value in fields.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = name, value


def mutate(draw, model: onnx.ModelProto, folder: pathlib.Path) -> list[str]:
    """Apply one to three drawn mutations to ``model`` in place; the names of those applied."""
    applied = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(MUTATIONS))
        graph = draw(st.sampled_from(_subgraphs(model.graph)))
        nodes, names = graph.node, _names(graph)
        pick = draw(st.integers(0, 2**16))
        if kind == "drop_node" and nodes:
            del nodes[pick % len(nodes)]
        elif kind == "duplicate_node" and nodes:
            copy = onnx.NodeProto()
            copy.CopyFrom(nodes[pick % len(nodes)])
            if draw(st.booleans()):  # fresh outputs: a valid dead node; else a second producer
                for index, name in enumerate(copy.output):
                    copy.output[index] = f"{name}_copy"
            nodes.insert(draw(st.integers(0, len(nodes))), copy)
        elif kind == "move_node" and len(nodes) > 1:
            moved = onnx.NodeProto()
            moved.CopyFrom(nodes[pick % len(nodes)])
            del nodes[pick % len(nodes)]
            nodes.insert(draw(st.integers(0, len(nodes))), moved)
        elif kind == "rename_value" and names:
            old = names[pick % len(names)]
            new = draw(st.sampled_from([f"{old}_renamed", *names]))
            _rename(graph, old, new, draw(st.sampled_from(["everywhere", "definition", "use"])), pick)
        elif kind == "rename_node" and nodes:
            nodes[pick % len(nodes)].name = draw(st.sampled_from([node.name for node in nodes] + [""]))
        elif kind == "drop_graph_value":
            fields = [field for field in (graph.input, graph.output, graph.initializer) if len(field)]
            if fields:
                field = draw(st.sampled_from(fields))
                del field[pick % len(field)]
        elif kind == "retype":
            typed = [*graph.input, *graph.output]
            if typed and draw(st.booleans()):
                typed[pick % len(typed)].type.tensor_type.elem_type = draw(st.sampled_from(ODD_DTYPES))
            elif graph.initializer:
                graph.initializer[pick % len(graph.initializer)].data_type = draw(st.sampled_from(ODD_DTYPES))
        elif kind == "redim" and graph.initializer:
            tensor = graph.initializer[pick % len(graph.initializer)]
            dims = draw(st.lists(st.integers(-2, 9), max_size=3))
            del tensor.dims[:]
            tensor.dims.extend(dims)
        elif kind == "add_value_info" and names:
            dtype = draw(st.sampled_from((TensorProto.FLOAT, *ODD_DTYPES)))
            name = names[pick % len(names)]
            if draw(st.booleans()):
                info = helper.make_tensor_value_info(name, dtype, SHAPE)
            else:
                info = helper.make_tensor_sequence_value_info(name, TensorProto.FLOAT, SHAPE)
            graph.value_info.append(info)
        elif kind == "unknown_domain" and nodes:
            nodes[pick % len(nodes)].domain = "com.fuzz"
            model.opset_import.append(helper.make_opsetid("com.fuzz", 1))
        elif kind == "external_data":
            _externalize(draw, graph, folder)
        elif kind == "drop_node_input" and any(node.input for node in nodes):
            node = draw(st.sampled_from([node for node in nodes if node.input]))
            index = pick % len(node.input)
            if draw(st.booleans()):
                del node.input[index]
            else:
                node.input[index] = ""
        elif kind == "cast_to" and any(node.op_type == "Cast" for node in nodes):
            node = draw(st.sampled_from([node for node in nodes if node.op_type == "Cast"]))
            node.attribute[0].i = draw(st.sampled_from(ODD_DTYPES))
        elif kind == "opset_version":
            model.opset_import[0].version = draw(st.sampled_from([1 << 62, -1, 0, 1 << 31, 5, 99]))
        elif kind == "duplicate_output" and graph.output:
            graph.output.append(graph.output[pick % len(graph.output)])
        elif kind == "attribute_type" and any(node.attribute for node in nodes):
            node = draw(st.sampled_from([node for node in nodes if node.attribute]))
            attribute = node.attribute[pick % len(node.attribute)]
            replacement = draw(
                st.sampled_from(
                    [
                        helper.make_attribute(attribute.name, "text"),
                        helper.make_attribute(attribute.name, 1.5),
                        helper.make_attribute(attribute.name, [1, 2]),
                    ]
                )
            )
            attribute.CopyFrom(replacement)
        elif kind == "overload" and nodes:
            model.ir_version = max(model.ir_version, 10)
            nodes[pick % len(nodes)].overload = draw(st.sampled_from(["nothing", ""]))
        else:
            continue
        applied.append(kind)
    return applied


def check_output_like_input(source: pathlib.Path, output: pathlib.Path) -> None:
    """The output passes every checker level its input passes: the full check, or for a lenient
    input (one that fails the full check; convert takes it with a note) the plain check."""
    try:
        onnx.checker.check_model(str(source), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
        onnx.checker.check_model(str(output))
    else:
        onnx.checker.check_model(str(output), full_check=True)


def _files(folder: pathlib.Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


@fuzz_settings(MUTATION_EXAMPLES)
@given(data=st.data())
def test_structure_mutations_give_only_mpcompile_errors_or_valid_outputs(data: st.DataObject) -> None:
    import tempfile

    from hypothesis import event

    from tests.test_bad_input import fifo_tripwire

    model = data.draw(examples(), label="example").model
    with tempfile.TemporaryDirectory(prefix="mpcompile-mutations-") as scratch:
        folder = pathlib.Path(scratch) / "model"
        folder.mkdir()
        applied = mutate(data.draw, model, folder)
        for kind in applied:
            event(f"mutation {kind}")
        source = folder / "model.onnx"
        source.write_bytes(model.SerializeToString())
        inputs = _files(folder)
        output = pathlib.Path(scratch) / "out.onnx"
        with fifo_tripwire(pathlib.Path(scratch) / "outside.bin") as tripped:
            _convert_and_report(source, output)
        assert not tripped, f"a file outside the model's folder was opened ({applied})"
        assert _files(folder) == inputs, f"the input files changed ({applied})"


BYTE_EXAMPLES = int(os.environ.get("MPCOMPILE_FUZZ_EXAMPLES", "60"))


@fuzz_settings(BYTE_EXAMPLES)
@given(data=st.data())
def test_byte_mutations_give_only_mpcompile_errors_or_valid_outputs(data: st.DataObject) -> None:
    """The serialized model with bytes flipped, cut, inserted or deleted: only one-line errors, or
    an output that passes the full checker and loads in ORT."""
    import tempfile

    from hypothesis import event

    raw = bytearray(data.draw(examples(), label="example").model.SerializeToString())
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        position = data.draw(st.integers(0, max(len(raw) - 1, 0)), label="position")
        edit = data.draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]), label="edit")
        if edit == "flip" and raw:
            raw[position] ^= 1 << data.draw(st.integers(0, 7))
        elif edit == "set" and raw:
            raw[position] = data.draw(st.sampled_from([0, 0x7F, 0x80, 0xFF]))
        elif edit == "cut":
            del raw[position:]
        elif edit == "insert":
            raw[position:position] = data.draw(st.binary(min_size=1, max_size=8))
        elif edit == "delete" and raw:
            del raw[position]
        event(f"byte edit {edit}")
    with tempfile.TemporaryDirectory(prefix="mpcompile-bytes-") as scratch:
        folder = pathlib.Path(scratch)
        source = folder / "model.onnx"
        source.write_bytes(bytes(raw))
        output = folder / "out.onnx"
        _convert_and_report(source, output)
        assert source.read_bytes() == bytes(raw), "the input changed"


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])


def _convert_and_report(source: pathlib.Path, output: pathlib.Path) -> None:
    """Convert and report a fuzzed model: a refusal must be an mpcompile error; a converted output
    must pass the checks its input passes and load in ORT."""
    import onnxruntime as ort
    from hypothesis import event

    import mpcompile
    from mpcompile.errors import MpcompileError
    from mpcompile.report import build_report

    try:
        mpcompile.convert_file(source, output)
    except MpcompileError as exc:
        event(f"convert refused: exit {int(exc.exit_code)} {exc.exit_code.name}")
    else:
        event("convert succeeded")
        check_output_like_input(source, output)
        session_options = ort.SessionOptions()
        session_options.log_severity_level = 3
        ort.InferenceSession(str(output), session_options, providers=["CPUExecutionProvider"])
    try:
        build_report(str(source))
    except MpcompileError as exc:
        event(f"report refused: exit {int(exc.exit_code)}")
