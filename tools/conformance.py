"""Run ONNX's backend node tests through mpcompile (and onnxconverter-common) and compare.

The node tests (one ``model.onnx`` plus ``test_data_set_*/{input,output}_*.pb`` per folder)
are no longer shipped in the onnx 1.23 wheel, so they are taken from the onnx 1.22.0 wheel
(``pip download onnx==1.22.0 --no-deps``) and cached under ``.cache/onnx-node-tests``.

A test is *eligible* when ONNX Runtime's CPU EP runs the FP32 model and reproduces the
expected outputs, and the model has a float32 tensor somewhere. Each eligible test is
converted by each converter, then checked: full onnx checker, ORT session loads, runs and
matches the expected outputs (floats within tolerance, everything else exact).

CPU caveat: ORT's CPU EP runs FP16 nodes that have no FP16 kernel in FP32 behind Casts it
inserts itself, so CPU results understate the error a GPU would show.

Usage: ``python tools/conformance.py [--workers 2] [-k SUBSTRING] [--write-docs]``.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import fnmatch
import functools
import glob
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "onnx-node-tests"
ONNX_TEST_WHEEL_VERSION = "1.22.0"
NODE_TESTS_PREFIX = "onnx/backend/test/data/node/"
DOCS_PATH = REPO_ROOT / "docs" / "conformance.md"
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

# Eligibility: how closely ORT's FP32 run must reproduce the expected outputs (as onnx's runner).
FP32_RTOL = 1e-3
FP32_ATOL = 1e-6
# Converted models: floats within rtol + atol * max(1, max|expected|); ints, bools, strings exact.
DEFAULT_RTOL = 1e-2
DEFAULT_ATOL = 1e-3

# BF16 keeps 8 significant bits to FP16's 11: its tolerances are 8x wider (rtol 8e-2).
BF16_TOLERANCE_FACTOR = 8.0

# Per-test tolerances (fnmatch patterns on the test name) where FP16 cannot reach the default.
# Each entry says why; the table is printed in docs/conformance.md.
TOLERANCES: dict[str, tuple[float, float, str]] = {}

# Failures understood and accepted, by test-name pattern -> explanation (printed in the docs).
KNOWN_FAILURES: dict[str, str] = {
    "test_mvn": (
        "Input problem, refused by design: the FP32 model itself fails onnx 1.23.2's full checker (the "
        "MeanVarianceNormalization-13 function body does not type-check: 'One and only one of the "
        "attributes value... for a Constant node'), so mpcompile refuses it as INVALID_MODEL (exit 12). "
        "ORT runs it."
    ),
    # Only in the stress run (every op allowed): ORT CPU kernel gaps, which the `any` target
    # does not model (a CPU target would keep these ops FP32).
    "test_scatter*": (
        "Stress run only: ORT's CPU EP has no float16 ScatterElements/ScatterND kernel with "
        "reduction add/mul/min/max ('MLFloat16 data type is not supported ... when reduction is'). The "
        "default policy keeps these ops FP32."
    ),
    "test_eyelike_*": (
        "Stress run only: ORT's CPU EP has no float16 EyeLike kernel ('Could not find an implementation "
        "for EyeLike(22)'). The default policy keeps EyeLike FP32."
    ),
}

# Failures explained by what the outcome says, whatever the test (informative BF16 runs).
KNOWN_FAILURE_DETAILS: dict[str, str] = {
    "bf16 needs ai.onnx opset >= 13": (
        "Refused by design: a Cast to bfloat16 needs ai.onnx opset 13; the message says how to upgrade "
        "the model (onnx.version_converter)."
    ),
    "BFloat16 data type is not supported with Scatter": (
        "ORT CPU kernel gap: ScatterElements/ScatterND register bfloat16 but reject it with a reduction "
        "at run time, so the cpu target's kernel table (from ORT's registry) cannot see it. Stress run only."
    ),
}

OUTCOME_PASS = "pass"
OUTCOMES = (
    OUTCOME_PASS,
    "refused",  # a documented MpcompileError (exit code) for this kind of model
    "convert-error",  # any other exception while converting
    "checker",  # onnx.checker.check_model(full_check=True) fails on the output
    "ort-load",  # ORT cannot create a session
    "ort-run",  # ORT raises while running
    "mismatch",  # outputs differ from the expected ones beyond tolerance
)


# --------------------------------------------------------------------------- download


def ensure_node_tests(
    cache_dir: pathlib.Path | None = None, log: Callable[[str], None] = print
) -> pathlib.Path:
    """Return the folder of node tests, downloading and unpacking them on first use."""
    cache_dir = pathlib.Path(cache_dir or DEFAULT_CACHE_DIR)
    node_dir = cache_dir / "node"
    marker = cache_dir / f"complete-{ONNX_TEST_WHEEL_VERSION}"
    if marker.is_file() and node_dir.is_dir():
        log(f"node tests: using cached {node_dir} (onnx {ONNX_TEST_WHEEL_VERSION} wheel)")
        return node_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheel = _find_wheel(cache_dir) or _download_wheel(cache_dir, log)
    log(f"node tests: unpacking {NODE_TESTS_PREFIX} from {wheel.name}")
    staging = pathlib.Path(tempfile.mkdtemp(prefix="node-", dir=cache_dir))
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [name for name in archive.namelist() if name.startswith(NODE_TESTS_PREFIX)]
            if not members:
                raise RuntimeError(f"{wheel} holds no {NODE_TESTS_PREFIX}")
            for name in members:
                relative = name[len(NODE_TESTS_PREFIX) :]
                if not relative or name.endswith("/"):
                    continue
                target = staging / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(name) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink)
        if node_dir.exists():
            shutil.rmtree(node_dir)
        staging.rename(node_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    marker.write_text(wheel.name + "\n")
    log(f"node tests: {len(list_tests(node_dir))} tests unpacked into {node_dir}")
    return node_dir


def _find_wheel(cache_dir: pathlib.Path) -> pathlib.Path | None:
    for wheel in sorted((cache_dir / "wheel").glob(f"onnx-{ONNX_TEST_WHEEL_VERSION}-*.whl")):
        if zipfile.is_zipfile(wheel):
            return wheel
    return None


def _download_wheel(cache_dir: pathlib.Path, log: Callable[[str], None]) -> pathlib.Path:
    """pip download the wheel; the test data is identical in every platform's wheel."""
    dest = cache_dir / "wheel"
    base = [sys.executable, "-m", "pip", "download", f"onnx=={ONNX_TEST_WHEEL_VERSION}", "--no-deps"]
    base += ["--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", str(dest)]
    attempts = [base, [*base, "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11"]]
    errors = []
    for command in attempts:
        log(f"node tests: downloading: {' '.join(command[2:])}")
        for _ in range(2):  # one retry for a flaky network
            done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
            wheel = _find_wheel(cache_dir)
            if done.returncode == 0 and wheel is not None:
                log(f"node tests: downloaded {wheel.name} ({wheel.stat().st_size / 1e6:.1f} MB)")
                return wheel
            errors.append(done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"])
    raise RuntimeError(f"could not download onnx=={ONNX_TEST_WHEEL_VERSION}: {errors}")


def list_tests(node_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(path.parent for path in node_dir.glob("*/model.onnx"))


# --------------------------------------------------------------------------- loading


@dataclasses.dataclass
class DataSet:
    inputs: dict[str, Any]
    outputs: list[Any]


@dataclasses.dataclass
class Case:
    name: str
    model: onnx.ModelProto
    datasets: list[DataSet]


def load_case(case_dir: pathlib.Path) -> Case:
    model = onnx.load(str(case_dir / "model.onnx"))
    datasets = []
    for data_dir in sorted(glob.glob(str(case_dir / "test_data_set_*"))):
        inputs = {}
        for index, graph_input in enumerate(model.graph.input):
            path = pathlib.Path(data_dir) / f"input_{index}.pb"
            if path.is_file():
                inputs[graph_input.name] = _load_value(path, graph_input.type)
        outputs = []
        for index, graph_output in enumerate(model.graph.output):
            outputs.append(_load_value(pathlib.Path(data_dir) / f"output_{index}.pb", graph_output.type))
        datasets.append(DataSet(inputs, outputs))
    return Case(case_dir.name, model, datasets)


def _load_value(path: pathlib.Path, type_proto: onnx.TypeProto) -> Any:
    content = path.read_bytes()
    if type_proto.HasField("sequence_type"):
        sequence = onnx.SequenceProto()
        sequence.ParseFromString(content)
        return numpy_helper.to_list(sequence)
    if type_proto.HasField("optional_type"):
        optional = onnx.OptionalProto()
        optional.ParseFromString(content)
        return numpy_helper.to_optional(optional)
    tensor = onnx.TensorProto()
    tensor.ParseFromString(content)
    return numpy_helper.to_array(tensor)


def op_types(model: onnx.ModelProto) -> list[str]:
    """Op types in the graph, its subgraphs and local functions (sorted, unique)."""
    found: set[str] = set()

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            found.add(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}")
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    visit(attribute.g)
                for subgraph in attribute.graphs:
                    visit(subgraph)

    visit(model.graph)
    for function in model.functions:
        for node in function.node:
            found.add(node.op_type)
    return sorted(found)


def main_op(case_name: str, ops: Sequence[str]) -> str:
    """The op a node test is about: the longest op name its test name starts with."""
    if len(ops) == 1:
        return ops[0]
    bare = case_name.removeprefix("test_").replace("_", "").lower()
    matches = [op for op in _schema_names() if bare.startswith(op.lower())]
    if matches:
        return max(matches, key=len)
    return "+".join(ops[:3])


@functools.cache
def _schema_names() -> tuple[str, ...]:
    return tuple(sorted({schema.name for schema in onnx.defs.get_all_schemas_with_history()}))


def has_float32(model: onnx.ModelProto) -> bool:
    """True if a float32 tensor appears anywhere: values, initializers, constants, Cast targets."""
    return has_dtype(model, onnx.TensorProto.FLOAT)


def has_dtype(model: onnx.ModelProto, float_type: int) -> bool:
    """True if a tensor of ``float_type`` appears anywhere (after shape inference)."""
    with contextlib.suppress(Exception):  # inference failure only narrows what we can see
        model = onnx.shape_inference.infer_shapes(model)

    def type_has_float(type_proto: onnx.TypeProto) -> bool:
        kind = type_proto.WhichOneof("value")
        if kind == "tensor_type":
            return type_proto.tensor_type.elem_type == float_type
        if kind == "sparse_tensor_type":
            return type_proto.sparse_tensor_type.elem_type == float_type
        if kind == "sequence_type":
            return type_has_float(type_proto.sequence_type.elem_type)
        if kind == "optional_type":
            return type_has_float(type_proto.optional_type.elem_type)
        if kind == "map_type":
            return type_has_float(type_proto.map_type.value_type)
        return False

    def graph_has_float(graph: onnx.GraphProto) -> bool:
        values = [*graph.input, *graph.output, *graph.value_info]
        if any(type_has_float(value.type) for value in values):
            return True
        if any(tensor.data_type == float_type for tensor in graph.initializer):
            return True
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == float_type:
                    return True
                if node.op_type == "Cast" and attribute.name == "to" and attribute.i == float_type:
                    return True
                if attribute.type == onnx.AttributeProto.GRAPH and graph_has_float(attribute.g):
                    return True
                if any(graph_has_float(subgraph) for subgraph in attribute.graphs):
                    return True
        return False

    return graph_has_float(model.graph)


# --------------------------------------------------------------------------- running and comparing


def ort_session(model_bytes: bytes):
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 4
    # No graph optimizations: ORT's Cast elimination would otherwise hide FP16 round trips.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def run_session(session, dataset: DataSet) -> list[Any]:
    # Fresh copies: ORT's BatchNormalization in training mode updates its mean/var inputs in
    # place, which would change the data set for every later run of the same test.
    feed = {name: _copy_value(value) for name, value in dataset.inputs.items() if value is not None}
    return session.run(None, feed)


def _copy_value(value: Any) -> Any:
    if isinstance(value, list):
        return [_copy_value(item) for item in value]
    return np.array(value, copy=True) if isinstance(value, np.ndarray) else value


def compare(expected: Any, actual: Any, rtol: float, atol: float, scale_atol: bool = True) -> str | None:
    """None when ``actual`` matches ``expected``; otherwise a one-line description."""
    if isinstance(expected, (list, tuple)):
        if not isinstance(actual, (list, tuple)) or len(actual) != len(expected):
            return f"sequence of {len(expected)} expected, got {type(actual).__name__}"
        for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
            problem = compare(want, got, rtol, atol, scale_atol)
            if problem:
                return f"[{index}] {problem}"
        return None
    if expected is None or actual is None:
        return None if expected is None and actual is None else "optional presence differs"
    expected = np.asarray(expected)
    actual = np.asarray(actual)
    if expected.shape != actual.shape:
        return f"shape {actual.shape} != expected {expected.shape}"
    if expected.dtype == object or expected.dtype.kind in "USb?iu" or expected.dtype == np.bool_:
        if actual.dtype != expected.dtype and not (expected.dtype == object and actual.dtype.kind in "OU"):
            return f"dtype {actual.dtype} != expected {expected.dtype}"
        if not np.array_equal(expected, actual):
            mismatched = int(np.sum(expected != actual))
            return f"{mismatched}/{expected.size} values differ (exact match required)"
        return None
    if actual.dtype != expected.dtype:
        return f"dtype {actual.dtype} != expected {expected.dtype}"
    want = expected.astype(np.float64)
    got = actual.astype(np.float64)
    finite = np.isfinite(want)
    if not np.array_equal(np.isnan(want), np.isnan(got)):
        return "NaN positions differ"
    infinite = np.isinf(want)
    if np.any(infinite) and not np.array_equal(want[infinite], got[infinite]):
        return "infinities differ"
    if not np.all(np.isfinite(got[finite])):
        return f"{int(np.sum(~np.isfinite(got[finite])))} finite expected values became inf/NaN"
    if not np.any(finite):
        return None
    magnitude = float(np.max(np.abs(want[finite]))) if scale_atol else 1.0
    bound = atol * max(1.0, magnitude) + rtol * np.abs(want[finite])
    error = np.abs(got[finite] - want[finite])
    if np.all(error <= bound):
        return None
    worst = int(np.argmax(error - bound))
    return (
        f"{int(np.sum(error > bound))}/{error.size} values outside tolerance; worst |err| "
        f"{error[worst]:.3g} vs bound {bound[worst]:.3g} (expected {want[finite][worst]:.4g})"
    )


def tolerance_for(name: str) -> tuple[float, float]:
    for pattern, (rtol, atol, _why) in TOLERANCES.items():
        if fnmatch.fnmatchcase(name, pattern):
            return rtol, atol
    return DEFAULT_RTOL, DEFAULT_ATOL


def check_outputs(session, case: Case, rtol: float, atol: float, scale_atol: bool = True) -> str | None:
    for index, dataset in enumerate(case.datasets):
        actual = run_session(session, dataset)
        if len(actual) != len(dataset.outputs):
            return f"data set {index}: {len(actual)} outputs, expected {len(dataset.outputs)}"
        for output_index, (want, got) in enumerate(zip(dataset.outputs, actual, strict=True)):
            problem = compare(want, got, rtol, atol, scale_atol)
            if problem:
                output_name = case.model.graph.output[output_index].name
                return f"data set {index}, output {output_name!r}: {problem}"
    return None


def eligibility(case: Case) -> str | None:
    """None if the test is eligible, else why not."""
    if not case.datasets:
        return "no test data"
    if not has_float32(case.model):
        return "no float32 tensor"
    try:
        session = ort_session(case.model.SerializeToString())
    except Exception as exc:
        return f"ORT cannot load the FP32 model: {_first_line(exc)}"
    try:
        problem = check_outputs(session, case, FP32_RTOL, FP32_ATOL, scale_atol=False)
    except Exception as exc:
        return f"ORT cannot run the FP32 model: {_first_line(exc)}"
    if problem:
        return f"ORT FP32 output differs from expected: {problem}"
    return None


# --------------------------------------------------------------------------- converters


def convert_mpcompile(
    target: str, allow_all: bool = False, precision: str = "fp16"
) -> Callable[[onnx.ModelProto], onnx.ModelProto]:
    """Default policy (or, with ``allow_all``, every op of the model on the allow list).

    A QDQ model is refused by default (exit 7, by design): it is then converted again with
    ``allow_qdq=True`` and the outcome says so."""

    def convert(model: onnx.ModelProto) -> onnx.ModelProto:
        import mpcompile
        from mpcompile.errors import QdqModelError

        # static: the rewrite of every op under the static rules is what this suite checks; the
        # range run has its own tests, and 3 x 1230 more ORT sessions would cost CI minutes.
        options: dict[str, Any] = {"target": target, "precision": precision, "static": True}
        if allow_all:
            options["allow_ops"] = tuple(op_types(model))
        try:
            return mpcompile.convert(model, **options).model
        except QdqModelError:
            converted = mpcompile.convert(model, allow_qdq=True, **options).model
            raise _RetriedWithAllowQdq(converted) from None

    return convert


class _RetriedWithAllowQdq(Exception):
    def __init__(self, model: onnx.ModelProto):
        super().__init__("converted with allow_qdq=True")
        self.model = model


def convert_onnxconverter_common(model: onnx.ModelProto) -> onnx.ModelProto:
    import warnings

    from onnxconverter_common import float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float16.convert_float_to_float16(model, keep_io_types=True)


DEFAULT_CONVERTERS = ("mpcompile:any", "mpcompile:any:allow-all", "mpcompile:cuda", "onnxconverter-common")
# docs/conformance.md adds informative rows for the CPU target, in FP16 and in BF16.
DOCS_CONVERTERS = (*DEFAULT_CONVERTERS, "mpcompile:cpu", "mpcompile:cpu:bf16", "mpcompile:cpu:bf16:allow-all")


def available_converters(wanted: Sequence[str] = DEFAULT_CONVERTERS) -> dict[str, str]:
    """Converter name -> "" when usable, else the reason it is skipped.

    mpcompile converters are named ``mpcompile:TARGET[:bf16][:allow-all]``."""
    found: dict[str, str] = {}
    for name in wanted:
        if name == "onnxconverter-common":
            try:
                import onnxconverter_common  # noqa: F401

                found[name] = ""
            except ImportError:
                found[name] = "onnxconverter-common is not installed"
        elif name.startswith("mpcompile:"):
            found[name] = _mpcompile_unavailable(_parse_mpcompile(name)[0])
        else:
            found[name] = f"unknown converter {name!r}"
    return found


def _mpcompile_unavailable(target: str) -> str:
    try:
        import mpcompile
    except ImportError as exc:
        return f"mpcompile not importable ({exc})"
    if not hasattr(mpcompile, "convert"):
        return "mpcompile.convert is not implemented yet"
    from mpcompile.targets import get_target

    try:
        get_target(target)
    except Exception as exc:
        return f"target {target!r} not available ({_first_line(exc)})"
    return ""


def _converter(name: str) -> Callable[[onnx.ModelProto], onnx.ModelProto]:
    if name == "onnxconverter-common":
        return convert_onnxconverter_common
    target, flags = _parse_mpcompile(name)
    return convert_mpcompile(
        target, allow_all="allow-all" in flags, precision="bf16" if "bf16" in flags else "fp16"
    )


def _parse_mpcompile(name: str) -> tuple[str, set[str]]:
    """'mpcompile:TARGET[:bf16][:allow-all]' -> (TARGET, flags)."""
    parts = name.split(":")
    return parts[1], set(parts[2:])


# --------------------------------------------------------------------------- one test


@dataclasses.dataclass
class Outcome:
    outcome: str
    detail: str = ""
    low_precision: bool = False  # the converted model computes something in FP16/BF16


@dataclasses.dataclass
class TestResult:
    name: str
    ops: list[str]
    main_op: str
    ineligible: str | None  # reason, or None when eligible
    outcomes: dict[str, Outcome] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0


def run_one(case_dir: str, converters: Sequence[str]) -> TestResult:
    """Eligibility check, then every converter on one node test."""
    started = time.perf_counter()
    case = load_case(pathlib.Path(case_dir))
    ops = op_types(case.model)
    result = TestResult(case.name, ops, main_op(case.name, ops), eligibility(case))
    if result.ineligible is None:
        for name in converters:
            result.outcomes[name] = check_converter(case, name)
    result.seconds = time.perf_counter() - started
    return result


def check_converter(case: Case, converter: str) -> Outcome:
    from mpcompile.errors import MpcompileError

    source_bytes = case.model.SerializeToString()
    note = ""
    try:
        converted = _converter(converter)(onnx.ModelProto.FromString(source_bytes))
    except _RetriedWithAllowQdq as retried:
        converted, note = retried.model, "QDQ model refused by default (exit 7); converted with --allow-qdq"
    except MpcompileError as exc:
        return Outcome("refused", f"{type(exc).__name__} (exit {int(exc.exit_code)}): {exc.message}")
    except Exception as exc:
        return Outcome("convert-error", f"{type(exc).__name__}: {_first_line(exc)}")
    if hasattr(converted, "graph") and not isinstance(converted, onnx.ModelProto):
        import onnx_ir as ir

        converted = ir.to_proto(converted)
    bf16 = converter.startswith("mpcompile:") and "bf16" in _parse_mpcompile(converter)[1]
    outcome = check_converted(case, converted, BF16_TOLERANCE_FACTOR if bf16 else 1.0)
    outcome.low_precision = has_dtype(converted, onnx.TensorProto.FLOAT16) or has_dtype(
        converted, onnx.TensorProto.BFLOAT16
    )
    if note:
        outcome.detail = f"{note}; {outcome.detail}" if outcome.detail else note
    return outcome


def check_converted(case: Case, converted: onnx.ModelProto, tolerance_factor: float = 1.0) -> Outcome:
    """Full checker, ORT load, ORT run, outputs against the expected ones."""
    try:
        onnx.checker.check_model(converted, full_check=True)
    except Exception as exc:
        return Outcome("checker", _first_line(exc))
    try:
        session = ort_session(converted.SerializeToString())
    except Exception as exc:
        return Outcome("ort-load", _first_line(exc))
    rtol, atol = (tolerance * tolerance_factor for tolerance in tolerance_for(case.name))
    try:
        problem = check_outputs(session, case, rtol, atol)
    except Exception as exc:
        return Outcome("ort-run", _first_line(exc))
    return Outcome("mismatch", problem) if problem else Outcome(OUTCOME_PASS)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text[:400]


# --------------------------------------------------------------------------- the suite


@dataclasses.dataclass
class SuiteResult:
    results: list[TestResult]
    converters: list[str]
    skipped_converters: dict[str, str]
    seconds: float
    ep: str = "CPUExecutionProvider"

    @property
    def eligible(self) -> list[TestResult]:
        return [result for result in self.results if result.ineligible is None]

    def passed(self, converter: str) -> int:
        return sum(1 for r in self.eligible if r.outcomes[converter].outcome == OUTCOME_PASS)

    def passed_low(self, converter: str) -> int:
        """Passing tests whose converted model really computes something in low precision."""
        return sum(
            1
            for r in self.eligible
            if r.outcomes[converter].outcome == OUTCOME_PASS and r.outcomes[converter].low_precision
        )

    def rate(self, converter: str) -> float:
        return self.passed(converter) / max(1, len(self.eligible))

    def failures(self, converter: str) -> list[TestResult]:
        return [r for r in self.eligible if r.outcomes[converter].outcome != OUTCOME_PASS]


def run_suite(
    node_dir: pathlib.Path,
    converters: Sequence[str] | None = None,
    pattern: str | None = None,
    workers: int = 2,
    log: Callable[[str], None] = print,
) -> SuiteResult:
    """Run every node test (matching ``pattern``) through the usable converters."""
    wanted = list(converters or DEFAULT_CONVERTERS)
    available = available_converters(wanted)
    usable = [name for name in wanted if not available[name]]
    skipped = {name: available[name] for name in wanted if name not in usable}
    for name, why in skipped.items():
        log(f"conformance: skipping converter {name}: {why}")
    cases = [str(path) for path in list_tests(node_dir) if not pattern or pattern in path.name]
    started = time.perf_counter()
    results: list[TestResult] = []
    if workers <= 1 or len(cases) < 8:
        results = [run_one(case, usable) for case in cases]
    else:
        results = _run_parallel(cases, usable, workers, log)
    results.sort(key=lambda result: result.name)
    return SuiteResult(results, usable, skipped, time.perf_counter() - started)


def _run_parallel(cases: list[str], converters: list[str], workers: int, log) -> list[TestResult]:
    """Run in worker processes; a test that kills its worker is retried alone, then recorded."""
    results: dict[str, TestResult] = {}
    pending = list(cases)
    while pending:
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(run_one, case, converters): case for case in pending}
            broken = False
            for future in concurrent.futures.as_completed(futures):
                case = futures[future]
                try:
                    results[case] = future.result()
                except concurrent.futures.process.BrokenProcessPool:
                    broken = True
                except Exception as exc:  # a harness bug on one test must not lose the others
                    results[case] = TestResult(pathlib.Path(case).name, [], "?", f"harness error: {exc}")
        pending = [case for case in pending if case not in results]
        if broken and pending:
            log(f"conformance: a worker died; running {len(pending)} remaining tests one per process")
            for case in pending:
                results[case] = _run_isolated(case, converters)
            pending = []
    return list(results.values())


def _run_isolated(case: str, converters: list[str]) -> TestResult:
    with concurrent.futures.ProcessPoolExecutor(max_workers=1) as pool:
        try:
            return pool.submit(run_one, case, converters).result()
        except concurrent.futures.process.BrokenProcessPool:
            name = pathlib.Path(case).name
            return TestResult(
                name, [], "?", None, {c: Outcome("ort-run", "process crashed") for c in converters}
            )


# --------------------------------------------------------------------------- reporting


def explanation(name: str, outcome: Outcome) -> str:
    for pattern, why in KNOWN_FAILURES.items():
        if fnmatch.fnmatchcase(name, pattern):
            return why
    for fragment, why in KNOWN_FAILURE_DETAILS.items():
        if fragment in outcome.detail:
            return why
    return "UNEXPLAINED"


def summary_text(suite: SuiteResult) -> str:
    lines = []
    eligible = suite.eligible
    lines.append(
        f"ONNX node tests (onnx {ONNX_TEST_WHEEL_VERSION} wheel): {len(suite.results)} tests, "
        f"{len(eligible)} eligible; execution provider: {suite.ep}; {suite.seconds:.0f} s"
    )
    lines.append(
        "caveat: ORT's CPU EP runs FP16 nodes without an FP16 kernel in FP32 behind its own Casts, "
        "so CPU results understate FP16 error."
    )
    ineligible = collections.Counter(_ineligible_group(r.ineligible) for r in suite.results if r.ineligible)
    lines.append("ineligible: " + ", ".join(f"{why}: {count}" for why, count in ineligible.most_common()))
    for converter in suite.converters:
        counts = collections.Counter(r.outcomes[converter].outcome for r in eligible)
        lines.append(
            f"{converter:22s} {suite.passed(converter):5d}/{len(eligible)} passed = {100 * suite.rate(converter):6.2f} %  "
            + ", ".join(f"{outcome}: {counts[outcome]}" for outcome in OUTCOMES[1:] if counts[outcome])
        )
    for converter, why in suite.skipped_converters.items():
        lines.append(f"{converter:22s} skipped: {why}")
    for converter in suite.converters:
        lines.append(f"{converter:22s} passing tests with FP16/BF16 inside: {suite.passed_low(converter)}")
    for converter in suite.converters:
        failed = suite.failures(converter)
        if not failed:
            continue
        by_op = collections.Counter(r.main_op for r in failed)
        lines.append(
            f"{converter} failures by op: " + ", ".join(f"{op} {n}" for op, n in by_op.most_common())
        )
    return "\n".join(lines)


def _ineligible_group(reason: str) -> str:
    if reason.startswith("ORT cannot load"):
        return "ORT cannot load FP32"
    if reason.startswith("ORT cannot run"):
        return "ORT cannot run FP32"
    if reason.startswith("ORT FP32 output differs"):
        return "ORT FP32 differs from expected"
    return reason


def failure_lines(suite: SuiteResult, converter: str) -> list[str]:
    return [
        f"{r.name} [{r.main_op}] {r.outcomes[converter].outcome}: {r.outcomes[converter].detail}"
        for r in suite.failures(converter)
    ]


def markdown(suite: SuiteResult) -> str:
    """docs/conformance.md: rates, the per-op table and every failure with its explanation."""
    eligible = suite.eligible
    out = ["# Conformance: ONNX backend node tests", ""]
    out.append("Generated by `python tools/conformance.py --write-docs`; do not edit by hand.")
    out.append("")
    out.append(
        f"Source: the node tests of the onnx {ONNX_TEST_WHEEL_VERSION} wheel ({len(suite.results)} tests). "
        f"A test is eligible when ONNX Runtime {_ort_version()} ({suite.ep}) reproduces its expected outputs "
        f"from the FP32 model (rtol {FP32_RTOL}, atol {FP32_ATOL}) and the model has a float32 tensor "
        f"somewhere: {len(eligible)} eligible. Each converted model must pass "
        "`onnx.checker.check_model(full_check=True)`, load and run in ORT and match the expected outputs: "
        f"floats within `rtol {DEFAULT_RTOL} + atol {DEFAULT_ATOL} x max(1, max|expected|)`, integers, "
        "booleans and strings exactly, same dtypes and shapes."
    )
    out.append("")
    out.append(
        "**Caveat:** these numbers come from ORT's CPU execution provider, which runs FP16 nodes that lack "
        "an FP16 kernel in FP32 behind its own Casts; CPU results understate the FP16 error a GPU shows. "
        "Graph optimizations are disabled so ORT does not remove the converters' Casts. Every ORT run gets "
        "fresh copies of the inputs: with onnxconverter-common's output of a training-mode "
        "BatchNormalization, ORT 1.32 wrote the running statistics into the caller's mean/var arrays."
    )
    out.append("")
    out.append(
        "| converter | passed | passed with FP16 inside | eligible | rate | "
        + " | ".join(OUTCOMES[1:])
        + " |"
    )
    out.append("|---|---|---|---|---|" + "---|" * (len(OUTCOMES) - 1))
    for converter in suite.converters:
        counts = collections.Counter(r.outcomes[converter].outcome for r in eligible)
        out.append(
            f"| {_converter_label(converter)} | {suite.passed(converter)} | {suite.passed_low(converter)} | "
            f"{len(eligible)} | "
            f"{100 * suite.rate(converter):.2f} % | "
            + " | ".join(str(counts[o]) for o in OUTCOMES[1:])
            + " |"
        )
    for converter, why in suite.skipped_converters.items():
        out.append(
            f"| {_converter_label(converter)} | not run: {why} | | | " + " | " * (len(OUTCOMES) - 2) + " |"
        )
    out.append("")
    if TOLERANCES:
        out.append("## Per-test tolerances")
        out.append("")
        out.append("| tests | rtol | atol | why |")
        out.append("|---|---|---|---|")
        for pattern, (rtol, atol, why) in TOLERANCES.items():
            out.append(f"| `{pattern}` | {rtol} | {atol} | {why} |")
        out.append("")
    for converter in suite.converters:
        failed = suite.failures(converter)
        out.append(f"## Failures: {_converter_label(converter)} ({len(failed)})")
        out.append("")
        if not failed:
            out.append("None.")
            out.append("")
            continue
        out.append("| test | op | outcome | detail | explanation |")
        out.append("|---|---|---|---|---|")
        for r in failed:
            outcome = r.outcomes[converter]
            why = explanation(r.name, outcome) if converter.startswith("mpcompile") else ""
            out.append(
                f"| `{r.name}` | {r.main_op} | {outcome.outcome} | {_md(outcome.detail)} | {_md(why)} |"
            )
        out.append("")
    out.append("## Notes on passing tests")
    out.append("")
    out.append(
        "*Passed with FP16 inside* counts converted models that contain a float16/bfloat16 tensor; "
        "the rest pass because the default policy keeps them FP32 (blocked ops, no low-precision "
        "schema type, nothing worth converting)."
    )
    out.append("")
    for converter in suite.converters:
        noted = [
            r
            for r in eligible
            if r.outcomes[converter].outcome == OUTCOME_PASS and r.outcomes[converter].detail
        ]
        if noted:
            out.append(f"{_converter_label(converter)}: passed with a note:")
            out.append("")
            for r in noted:
                out.append(f"- `{r.name}`: {_md(r.outcomes[converter].detail)}")
            out.append("")
    out.append("## Results by op")
    out.append("")
    out.append("Eligible tests per op (the op a test is named after) and how many each converter passed.")
    out.append("")
    out.append("| op | eligible | " + " | ".join(_converter_label(c) for c in suite.converters) + " |")
    out.append("|---|---|" + "---|" * len(suite.converters))
    by_op: dict[str, list[TestResult]] = collections.defaultdict(list)
    for r in eligible:
        by_op[r.main_op].append(r)
    for op in sorted(by_op):
        cells = [
            str(sum(1 for r in by_op[op] if r.outcomes[c].outcome == OUTCOME_PASS)) for c in suite.converters
        ]
        out.append(f"| {op} | {len(by_op[op])} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("## Ineligible tests")
    out.append("")
    groups = collections.Counter(_ineligible_group(r.ineligible) for r in suite.results if r.ineligible)
    out.append("| reason | tests |")
    out.append("|---|---|")
    for why, count in groups.most_common():
        out.append(f"| {why} | {count} |")
    out.append("")
    return "\n".join(out)


def _converter_label(name: str) -> str:
    if name.startswith("mpcompile:"):
        target, flags = _parse_mpcompile(name)
        label = f"mpcompile `--target {target}" + (" --precision bf16`" if "bf16" in flags else "`")
        return label + (", every op allowed (stress)" if "allow-all" in flags else "")
    return "onnxconverter-common `convert_float_to_float16(keep_io_types=True)`"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def to_json(suite: SuiteResult) -> dict:
    return {
        "ep": suite.ep,
        "seconds": suite.seconds,
        "eligible": len(suite.eligible),
        "total": len(suite.results),
        "rates": {c: suite.rate(c) for c in suite.converters},
        "skipped_converters": suite.skipped_converters,
        "results": [dataclasses.asdict(r) for r in suite.results],
    }


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=pathlib.Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("-k", dest="pattern", help="only tests whose name contains this")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--converter",
        action="append",
        dest="converters",
        help="repeatable: onnxconverter-common or mpcompile:TARGET[:bf16][:allow-all]; default: "
        + ", ".join(DEFAULT_CONVERTERS),
    )
    parser.add_argument("--write-docs", action="store_true", help=f"write {DOCS_PATH.relative_to(REPO_ROOT)}")
    parser.add_argument("--json", type=pathlib.Path, help="write every result as JSON here")
    parser.add_argument("--failures", action="store_true", help="print every failure")
    args = parser.parse_args(list(argv) if argv is not None else None)
    node_dir = ensure_node_tests(args.cache_dir)
    converters = args.converters or (DOCS_CONVERTERS if args.write_docs else DEFAULT_CONVERTERS)
    suite = run_suite(node_dir, converters, args.pattern, args.workers)
    print(summary_text(suite))
    if args.failures:
        for converter in suite.converters:
            for line in failure_lines(suite, converter):
                print(f"  {converter}: {line}")
    if args.json:
        args.json.write_text(json.dumps(to_json(suite), indent=1))
    if args.write_docs:
        DOCS_PATH.write_text(markdown(suite))
        print(f"wrote {DOCS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
