"""Time ``--auto`` against plain conversion on graphs with many nodes, inputs or outputs.

    python tools/bench/auto_scale.py                         # every case at its default size
    python tools/bench/auto_scale.py --cases chain --size 10000 --runs 3
    python tools/bench/auto_scale.py --cases matmul --metric rel-l2:1e-4   # a search that runs

Cases (issue 23; the target is ``--auto`` <= 3x plain convert's time on each):
  chain    one input, a chain of ``size`` elementwise nodes (Add, Relu, Mul, Tanh), one output
  inputs   ``size`` graph inputs reduced by a binary tree of Adds (size - 1 nodes)
  outputs  a chain of ``size`` nodes, each node's result a graph output
  sum      one Sum node of ``size`` graph inputs
  matmul   a chain of ``size`` nodes, MatMul (8x8 weight), Add, Relu in turn: unlike the cases
           above (elementwise ops between FP32 inputs and outputs, which stay FP32, so the
           search has no candidate to run), it converts to FP16, so --auto wires its
           switchboard and runs a candidate (not in the issue; not run by default)

Each measurement runs in its own child process (imports excluded from the time); the tools
alternate within each round and the median over ``--runs`` rounds is printed with the ratio,
in wall time and in CPU time (the process's threads and its children's: ONNX Runtime's
threads, ``--auto``'s load probe), which a shared machine's load disturbs less.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_SIZES = {"chain": 100_000, "inputs": 100_000, "outputs": 10_000, "sum": 100_000}
EXTRA_SIZES = {"matmul": 10_000}
WIDTH = 8
CHAIN_OPS = ("Add", "Relu", "Mul", "Tanh")


def build(case: str, size: int):
    """The ``case`` model with ``size`` nodes, inputs or outputs (an ``onnx.ModelProto``)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    def tensor(name: str):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, WIDTH])

    nodes = []
    inputs = [tensor("x")]
    outputs = []
    initializers = [
        numpy_helper.from_array(np.full([WIDTH], 0.01, np.float32), "bias"),
        numpy_helper.from_array(np.full([WIDTH], 0.99, np.float32), "scale"),
    ]
    if case == "matmul":
        rng = np.random.default_rng(0)
        initializers.append(
            numpy_helper.from_array((rng.standard_normal((WIDTH, WIDTH)) / WIDTH).astype(np.float32), "w")
        )
        current = "x"
        for index in range(size):
            op = ("MatMul", "Add", "Relu")[index % 3]
            extra = {"MatMul": ["w"], "Add": ["bias"]}.get(op, [])
            out = f"h{index}"
            nodes.append(helper.make_node(op, [current, *extra], [out], name=f"n{index}"))
            current = out
        outputs.append(tensor(current))
    elif case in ("chain", "outputs"):
        current = "x"
        for index in range(size):
            op = CHAIN_OPS[index % len(CHAIN_OPS)] if case == "chain" else ("Mul", "Tanh")[index % 2]
            extra = {"Add": ["bias"], "Mul": ["scale"]}.get(op, [])
            out = f"h{index}"
            nodes.append(helper.make_node(op, [current, *extra], [out], name=f"n{index}"))
            current = out
            if case == "outputs":
                outputs.append(tensor(out))
        if case == "chain":
            outputs.append(tensor(current))
    elif case == "inputs":
        inputs = [tensor(f"x{index}") for index in range(size)]
        level = [value.name for value in inputs]
        count = 0
        while len(level) > 1:
            paired = []
            for left, right in zip(level[::2], level[1::2], strict=False):
                out = f"s{count}"
                nodes.append(helper.make_node("Add", [left, right], [out], name=f"n{count}"))
                paired.append(out)
                count += 1
            if len(level) % 2:
                paired.append(level[-1])
            level = paired
        outputs.append(tensor(level[0]))
    elif case == "sum":
        inputs = [tensor(f"x{index}") for index in range(size)]
        nodes.append(helper.make_node("Sum", [value.name for value in inputs], ["y"], name="sum"))
        outputs.append(tensor("y"))
    else:
        raise ValueError(case)
    graph = helper.make_graph(nodes, case, inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _child(tool: str, src: str, out: str, metric: str | None = None) -> None:
    import mpcompile
    import mpcompile.auto.api  # imported before the clock starts

    start, cpu = time.perf_counter(), _cpu_seconds()
    if tool == "plain":
        mpcompile.convert_file(src, out, overwrite=True)
        sessions, share = 0, None
    else:
        from mpcompile.auto import api

        result = api.auto_convert_file(src, out, overwrite=True, metric=metric)
        sessions, share = result.sessions, result.fp16_flop_share
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    print(json.dumps({"seconds": seconds, "cpu": cpu, "sessions": sessions, "share": share}))


def _cpu_seconds() -> float:
    """User and system CPU time of this process (all threads) and of its waited-for children."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _run(tool: str, src: pathlib.Path, timeout: float, metric: str | None = None) -> dict:
    out = src.with_suffix(f".{tool}.onnx")
    command = [sys.executable, __file__, "--child", tool, str(src), str(out)]
    if metric:
        command += ["--metric", metric]
    try:
        done = subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {"seconds": float("inf"), "cpu": float("inf"), "error": f"timeout {timeout:.0f} s"}
    if done.returncode != 0:
        return {"seconds": float("nan"), "cpu": float("nan"), "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cases", nargs="+", default=list(DEFAULT_SIZES), choices=[*DEFAULT_SIZES, *EXTRA_SIZES]
    )
    parser.add_argument("--size", type=int, help="override every case's size")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--metric", help="--auto's criterion (e.g. rel-l2:1e-4 makes the matmul case search)")
    parser.add_argument("--child", nargs=3, metavar=("TOOL", "SRC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child, metric=args.metric)
        return 0
    import onnx

    if args.metric:
        print(f"--auto --metric {args.metric}")
    print(
        "| case | size | plain s | --auto s | --auto / plain | plain CPU s | --auto CPU s | CPU ratio | sessions | FP16 share |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="auto_scale_") as scratch:
        for case in args.cases:
            size = args.size or {**DEFAULT_SIZES, **EXTRA_SIZES}[case]
            src = pathlib.Path(scratch) / f"{case}{size}.onnx"
            onnx.save(build(case, size), src)
            times: dict[str, list[float]] = {"plain": [], "auto": []}
            cpus: dict[str, list[float]] = {"plain": [], "auto": []}
            sessions, share = 0, None
            for round_index in range(args.runs):
                order = ("plain", "auto") if round_index % 2 == 0 else ("auto", "plain")
                for tool in order:
                    measured = _run(tool, src, args.timeout, args.metric)
                    if "error" in measured:
                        print(f"  {case} {tool}: {measured['error']}", file=sys.stderr)
                    times[tool].append(measured["seconds"])
                    cpus[tool].append(measured["cpu"])
                    if tool == "auto":
                        sessions, share = measured.get("sessions", sessions), measured.get("share", share)
            plain, auto = statistics.median(times["plain"]), statistics.median(times["auto"])
            plain_cpu, auto_cpu = statistics.median(cpus["plain"]), statistics.median(cpus["auto"])
            print(
                f"| {case} | {size:,} | {plain:.2f} | {auto:.2f} | {auto / plain:.2f} "
                f"| {plain_cpu:.2f} | {auto_cpu:.2f} | {auto_cpu / plain_cpu:.2f} | {sessions} "
                f"| {'' if share is None else f'{share:.2f}'} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
