"""Benchmark the cost of keeping many nodes FP32 by name: ``--auto``'s channel into the core.

    python tools/bench/override_bench.py --nodes 2000 --kept 1000 --runs 3

Builds a chain of ``--nodes`` nodes (MatMul, Add, Relu, Tanh repeated, each with its own small
weight) in code and times, in this process, the median of ``--runs`` conversions
(``mpcompile.convert`` on the ``ir.Model``, checker off) of:

  plain        no node kept FP32
  overrides    ``node_overrides``: ``--kept`` nodes (every other one) kept FP32 by exact name,
               the way ``convert --auto`` keeps its candidates' nodes FP32
  block-nodes  the same nodes as ``--kept`` user ``block_nodes`` patterns (regular expressions,
               as ``--block-node`` takes them), for contrast

and prints each time with its ratio to plain. Issue 15's target: overrides within 1.5x of plain.
(Before node_overrides, --auto passed ``re.escape(name)`` patterns through ``block_nodes``,
which compiled every pattern on every lookup: ``--legacy-escaped`` times that channel.)
"""

from __future__ import annotations

import argparse
import pathlib
import re
import statistics
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

OPS = ("MatMul", "Add", "Relu", "Tanh")


def build_chain(nodes: int, width: int = 8):
    """A chain of ``nodes`` nodes named ``n<index>``; MatMul and Add read their own weight."""
    import numpy as np
    import onnx_ir as ir

    rng = np.random.default_rng(0)
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([1, width]))
    graph = ir.Graph([x], [], nodes=[], opset_imports={"": 17}, name="chain")
    current = x
    for index in range(nodes):
        op = OPS[index % len(OPS)]
        inputs = [current]
        if op in ("MatMul", "Add"):
            shape = (width, width) if op == "MatMul" else (width,)
            weight = ir.Value(
                name=f"w{index}",
                type=ir.TensorType(ir.DataType.FLOAT),
                shape=ir.Shape(shape),
                const_value=ir.tensor(rng.standard_normal(shape).astype(np.float32) * 0.1, name=f"w{index}"),
            )
            graph.register_initializer(weight)
            inputs.append(weight)
        node = ir.node(op, inputs, name=f"n{index}")
        node.outputs[0].dtype = ir.DataType.FLOAT
        node.outputs[0].shape = ir.Shape([1, width])
        graph.append(node)
        current = node.outputs[0]
    current.name = "y"
    graph.outputs.append(current)
    return ir.Model(graph, ir_version=8)


def time_conversion(model, runs: int, **options) -> float:
    from mpcompile import convert

    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        convert(model, verify=False, **options)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--kept", type=int, default=1000, help="nodes kept FP32 by name")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--legacy-escaped",
        action="store_true",
        help="also time re.escape(name) block_nodes (the old --auto channel)",
    )
    args = parser.parse_args(argv)

    from mpcompile.core.plan import Decision, Reason
    from mpcompile.core.precision import Precision

    model = build_chain(args.nodes)
    step = max(1, args.nodes // max(1, args.kept))
    kept = [f"n{index}" for index in range(0, args.nodes, step)][: args.kept]
    decision = Decision(Precision.FP32, Reason.AUTO_SENSITIVITY, "override_bench")
    cases = {"plain": {}}
    cases["overrides"] = {"node_overrides": dict.fromkeys(kept, decision)}
    cases["block-nodes"] = {"block_nodes": tuple(f"{name}$|{name}_x" for name in kept)}  # real regexes
    if args.legacy_escaped:
        cases["legacy-escaped"] = {"block_nodes": tuple(re.escape(name) for name in kept)}
    time_conversion(model, 1)  # warm-up: imports, schema tables
    print(f"chain of {args.nodes} nodes, {len(kept)} kept FP32 by name, median of {args.runs} run(s)")
    plain = None
    for case, options in cases.items():
        seconds = time_conversion(model, args.runs, **options)
        plain = plain or seconds
        print(f"  {case:15s} {seconds:8.3f} s  {seconds / plain:6.2f}x plain")
    return 0


if __name__ == "__main__":
    sys.exit(main())
