"""Generate a large FP32 model with external data, convert it in a child process, measure it.

    python tools/large_model.py --gib 2.2 --out /tmp/large       # the > 2 GB case
    python tools/large_model.py --mib 300 --out /tmp/large       # what CI runs

The model is a chain of ``MatMul -> Add -> Relu`` layers whose weights are written tensor
by tensor (never all in memory). Conversion runs in a fresh child process so its peak RSS
(``ru_maxrss``, which also counts file-backed pages of memory-mapped weights) and its peak
anonymous RSS (sampled from /proc) belong to the conversion alone. The converted model is
then checked: it keeps its weights in external data, passes the checker, loads in ORT
(CPU) and matches the FP32 model's output on one input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import resource
import subprocess
import sys
import threading
import time

import numpy as np
import onnx_ir as ir

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SEED = 20260101


@dataclasses.dataclass
class GeneratedModel:
    path: pathlib.Path
    data_path: pathlib.Path
    hidden: int
    layers: int
    weight_bytes: int
    seconds: float


def layer_shape_for(total_bytes: int) -> tuple[int, int]:
    """(hidden, layers) so that layers * hidden^2 float32 weights reach ``total_bytes``."""
    hidden = 4096 if total_bytes >= 2**30 else 2048 if total_bytes >= 2**27 else 512
    per_layer = hidden * hidden * 4 + hidden * 4
    return hidden, max(1, -(-total_bytes // per_layer))


def generate(folder: pathlib.Path, total_bytes: int, name: str = "large.onnx") -> GeneratedModel:
    """Write the model and its ``.data`` file; weights are produced lazily, one tensor at a time."""
    started = time.perf_counter()
    hidden, layers = layer_shape_for(total_bytes)
    folder.mkdir(parents=True, exist_ok=True)
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, hidden]))
    graph = ir.Graph([x], [], nodes=[], name="large", opset_imports={"": 17})
    current = x
    for layer in range(layers):
        weight = _lazy_initializer(f"w{layer}", (hidden, hidden), layer, scale=np.sqrt(2.0 / hidden))
        bias = _lazy_initializer(f"b{layer}", (hidden,), layers + layer, scale=0.01)
        graph.register_initializer(weight)
        graph.register_initializer(bias)
        matmul = ir.node("MatMul", [current, weight], name=f"matmul{layer}")
        add = ir.node("Add", [matmul.outputs[0], bias], name=f"add{layer}")
        relu = ir.node("Relu", [add.outputs[0]], name=f"relu{layer}")
        for node in (matmul, add, relu):
            node.outputs[0].name = f"{node.name}_out"
            node.outputs[0].dtype = ir.DataType.FLOAT
            node.outputs[0].shape = ir.Shape([1, hidden])
            graph.append(node)
        current = relu.outputs[0]
    graph.outputs.append(current)
    model = ir.Model(graph, ir_version=8, producer_name="mpcompile-large-model")
    path = folder / name
    data_name = name + ".data"
    ir.save(model, path, external_data=data_name, size_threshold_bytes=1024)
    weight_bytes = layers * (hidden * hidden + hidden) * 4
    return GeneratedModel(
        path, folder / data_name, hidden, layers, weight_bytes, time.perf_counter() - started
    )


def _lazy_initializer(name: str, shape: tuple[int, ...], seed_offset: int, scale: float) -> ir.Value:
    def make() -> ir.Tensor:
        rng = np.random.default_rng(SEED + seed_offset)
        data = rng.standard_normal(shape, dtype=np.float32)
        data *= np.float32(scale)
        return ir.tensor(data, name=name)

    tensor = ir.LazyTensor(make, dtype=ir.DataType.FLOAT, shape=ir.Shape(shape), name=name)
    return ir.Value(
        name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(shape), const_value=tensor
    )


# --------------------------------------------------------------------------- measuring


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, RssAnon) in bytes; 0 where unavailable."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def convert_in_this_process(source: pathlib.Path, output: pathlib.Path) -> dict:
    """Convert and report time, peak RSS and peak anonymous RSS (child-process side)."""
    import mpcompile

    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rss_at_start = _status_bytes("VmRSS")
    peaks = {"VmRSS": rss_at_start, "RssAnon": _status_bytes("RssAnon")}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            for field in peaks:
                peaks[field] = max(peaks[field], _status_bytes(field))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    result = mpcompile.convert_file(source, output)
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    stats = result.stats
    return {
        "seconds": seconds,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_after_imports_bytes": baseline_rss,
        "rss_at_start_bytes": rss_at_start,
        "peak_sampled_rss_bytes": max(peaks["VmRSS"], _status_bytes("VmRSS")),
        "peak_anon_rss_bytes": max(peaks["RssAnon"], _status_bytes("RssAnon")),
        "stats": _jsonable(stats.as_dict() if hasattr(stats, "as_dict") else {}),
    }


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def convert_in_child(source: pathlib.Path, output: pathlib.Path, timeout: float = 1800) -> dict:
    """Run the conversion in a fresh interpreter so its memory is measured alone."""
    command = [sys.executable, str(pathlib.Path(__file__).resolve()), "--child", str(source), str(output)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"conversion child failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- checking


def check_output(source: GeneratedModel, output: pathlib.Path) -> dict:
    """The converted model keeps external data, passes the checker, loads in ORT and matches FP32."""
    import onnx
    import onnxruntime as ort

    data_files = sorted(p.name for p in output.parent.iterdir() if p.name.startswith(output.name + "."))
    proto = onnx.load(str(output), load_external_data=False)
    external = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    external_fp16 = [t.name for t in external if t.data_type == onnx.TensorProto.FLOAT16]
    onnx.checker.check_model(str(output), full_check=True)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    x = np.random.default_rng(SEED).standard_normal((1, source.hidden), dtype=np.float32)
    started = time.perf_counter()
    converted = ort.InferenceSession(str(output), options, providers=["CPUExecutionProvider"])
    got = converted.run(None, {"x": x})[0]
    load_run_seconds = time.perf_counter() - started
    del converted
    reference = ort.InferenceSession(str(source.path), options, providers=["CPUExecutionProvider"])
    want = reference.run(None, {"x": x})[0]
    del reference
    relative_error = float(np.linalg.norm(got.astype(np.float64) - want) / max(np.linalg.norm(want), 1e-30))
    return {
        "output_onnx_bytes": output.stat().st_size,
        "data_files": data_files,
        "data_bytes": sum((output.parent / name).stat().st_size for name in data_files),
        "external_initializers": len(external),
        "fp16_external_initializers": len(external_fp16),
        "initializers": len(proto.graph.initializer),
        "ort_load_run_seconds": load_run_seconds,
        "relative_l2_error": relative_error,
        "output_dtype": str(got.dtype),
    }


def run(folder: pathlib.Path, total_bytes: int) -> dict:
    generated = generate(folder, total_bytes)
    output = folder / "large.fp16.onnx"
    measured = convert_in_child(generated.path, output)
    checked = check_output(generated, output)
    return {
        "hidden": generated.hidden,
        "layers": generated.layers,
        "weight_bytes": generated.weight_bytes,
        "generate_seconds": generated.seconds,
        **measured,
        **checked,
    }


def describe(numbers: dict) -> str:
    mib = 2**20
    weights = numbers["weight_bytes"]
    return (
        f"large model: {weights / mib:.0f} MiB FP32 weights ({numbers['layers']} x {numbers['hidden']}^2), "
        f"converted in {numbers['seconds']:.1f} s; RSS {numbers['rss_at_start_bytes'] / mib:.0f} MiB at start, "
        f"peak {numbers['peak_sampled_rss_bytes'] / mib:.0f} MiB sampled / {numbers['peak_rss_bytes'] / mib:.0f} MiB "
        f"ru_maxrss (high-water mark after imports {numbers['rss_after_imports_bytes'] / mib:.0f} MiB), peak "
        f"anonymous {numbers['peak_anon_rss_bytes'] / mib:.0f} MiB; vs weights + FP16 copy "
        f"{1.5 * weights / mib:.0f} MiB; output {numbers['output_onnx_bytes'] / 1024:.0f} KiB + "
        f"{numbers['data_bytes'] / mib:.0f} MiB external data; ORT load+run {numbers['ort_load_run_seconds']:.1f} s; "
        f"relative L2 error vs FP32 {numbers['relative_l2_error']:.2e} (CPU EP)"
    )


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["--child"]:
        print(json.dumps(convert_in_this_process(pathlib.Path(args_list[1]), pathlib.Path(args_list[2]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--gib", type=float)
    size.add_argument("--mib", type=float)
    parser.add_argument("--out", type=pathlib.Path, required=True, help="folder for the models (reused)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(args_list)
    total = int(args.gib * 2**30) if args.gib else int(args.mib * 2**20)
    numbers = run(args.out, total)
    print(json.dumps(numbers, indent=1) if args.json else describe(numbers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
