"""Benchmark FP16 conversion speed and memory against the I/O floor and two peer converters.

    python tools/bench/convert_bench.py --models tiny base large deep24 deep96 deep384 deep1536 \
        --runs 3 --markdown docs/performance-table.md

Every measurement runs in its own child process; tools alternate within each round (the order
rotates per round) and the table reports the median over the rounds. Peak RSS is the child's own
high-water mark (``VmHWM``; ``os.wait4``'s ``ru_maxrss`` only when the child died, because that one
keeps the parent's RSS at fork); it counts file pages the child mapped too. Time is the
child's own load -> convert -> save time (interpreter start and imports excluded); ``--clock cpu``
takes the child's CPU time for it instead, steadier when other work shares the machine. After the
first round, each output is checked once in another child: Casts added, and whether it loads
and runs in onnxruntime (CPU).

Tools:
  onnx-floor      onnx.load + onnx.save, model unchanged (the I/O floor)
  onnx-ir-floor   onnx_ir.load + onnx_ir.save, model unchanged
  mpcompile       mpcompile.convert_file(..., keep_io_types=True)
  mpcompile-static  the same with static=True (convert --static: no range run)
  onnxconverter   onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True)
  ort-transformers  onnxruntime.transformers OnnxModel(...).convert_float_to_float16(keep_io_types=True)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import glob
import json
import math
import os
import pathlib
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily at run time so each child loads only what its tool needs
    import onnx

HERE = pathlib.Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
TOOLS = ("onnx-floor", "onnx-ir-floor", "mpcompile", "mpcompile-static", "onnxconverter", "ort-transformers")
MPCOMPILE_TOOLS = ("mpcompile", "mpcompile-static")
PEERS = ("onnxconverter", "ort-transformers")
TWO_GIB = 2**31
DEEP_SERIES = ("deep24", "deep96", "deep384", "deep768", "deep1536", "deep2944")


# --------------------------------------------------------------------------------------------
# Child side: one conversion per process.
# --------------------------------------------------------------------------------------------
def _save_proto(model: onnx.ModelProto, out: str, external: bool) -> None:
    import onnx

    if external or model.ByteSize() >= TWO_GIB:
        onnx.save_model(model, out, save_as_external_data=True, location=pathlib.Path(out).name + ".data")
    else:
        onnx.save_model(model, out)


# Modules each tool needs, imported before the clock starts (their import time is reported apart).
TOOL_IMPORTS = {
    "onnx-floor": ("onnx",),
    "onnx-ir-floor": ("onnx_ir",),
    "mpcompile": ("mpcompile", "mpcompile.compiler.converter"),
    "mpcompile-static": ("mpcompile", "mpcompile.compiler.converter"),
    "onnxconverter": ("onnx", "onnxconverter_common.float16"),
    "ort-transformers": ("onnx", "onnxruntime.transformers.onnx_model"),
}


def _convert(tool: str, src: str, out: str, external_data: str) -> dict[str, float]:
    """Run ``tool`` on ``src``, writing ``out`` (with external data when ``external_data`` is
    "1", as the input has); returns phase times in seconds. The parent tells whether the input
    has external data: finding out here would parse the model before the tool runs and put
    that parse's memory into every tool's peak RSS."""
    import importlib

    external = external_data == "1"
    pass_seconds: dict[str, float] = {}
    import_start = time.perf_counter()
    for module in TOOL_IMPORTS[tool]:
        importlib.import_module(module)
    start = time.perf_counter()
    cpu_start = time.process_time()
    if tool == "onnx-floor":
        import onnx

        model = onnx.load(src)
        loaded = time.perf_counter()
        _save_proto(model, out, external)
    elif tool == "onnx-ir-floor":
        import onnx_ir as ir

        model = ir.load(src)
        loaded = time.perf_counter()
        if external:
            ir.save(model, out, external_data=pathlib.Path(out).name + ".data")
        else:
            ir.save(model, out)
    elif tool in MPCOMPILE_TOOLS:
        import mpcompile

        loaded = start
        static = tool == "mpcompile-static"
        result = mpcompile.convert_file(src, out, overwrite=True, keep_io_types=True, static=static)
        pass_seconds = dict(getattr(result.stats, "pass_seconds", {}) or {})
    elif tool == "onnxconverter":
        import onnx
        from onnxconverter_common import float16

        model = onnx.load(src)
        loaded = time.perf_counter()
        model = float16.convert_float_to_float16(model, keep_io_types=True)
        _save_proto(model, out, external)
    elif tool == "ort-transformers":
        import onnx
        from onnxruntime.transformers.onnx_model import OnnxModel

        model = OnnxModel(onnx.load(src))
        loaded = time.perf_counter()
        model.convert_float_to_float16(keep_io_types=True)
        model.save_model_to_file(out, use_external_data_format=external or model.model.ByteSize() >= TWO_GIB)
    else:
        raise ValueError(f"unknown tool {tool!r}")
    end = time.perf_counter()
    return {
        "seconds": end - start,
        "cpu_seconds": time.process_time() - cpu_start,
        "load_seconds": loaded - start,
        "import_seconds": start - import_start,
        "pass_seconds": pass_seconds,
    }


def _count_casts(graph: onnx.GraphProto) -> int:
    count = 0
    for node in graph.node:
        count += node.op_type == "Cast"
        for attr in node.attribute:
            if attr.g.node:
                count += _count_casts(attr.g)
            for sub in attr.graphs:
                count += _count_casts(sub)
    return count


def _inspect(src: str, out: str) -> dict[str, object]:
    """Casts added by the conversion and whether the output loads and runs in onnxruntime (CPU)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    sys.path.insert(0, str(REPO_ROOT))
    import models

    before = onnx.load(src, load_external_data=False)
    after = onnx.load(out, load_external_data=False)
    result: dict[str, object] = {
        "casts_added": _count_casts(after.graph) - _count_casts(before.graph),
        "nodes_out": len(after.graph.node),
    }
    print("BENCH_PARTIAL " + json.dumps(result), flush=True)  # kept if the ORT check times out
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(out, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # any ORT load failure is the measured outcome, not a bench error
        result.update(ort_loads=False, ort_error=str(exc).splitlines()[0][:200])
        return result
    result["ort_loads"] = True
    feeds = models.make_inputs(before, dims={"batch": 1, "sequence": 16})
    try:
        outputs = session.run(None, feeds)
        result["ort_runs"] = bool(all(np.isfinite(o).all() for o in outputs))
    except Exception as exc:
        result.update(ort_runs=False, ort_error=str(exc).splitlines()[0][:200])
    return result


def _vm_hwm_bytes() -> int:
    """This process's peak RSS (VmHWM). Unlike ru_maxrss, it starts from zero at exec."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _child_main(argv: list[str]) -> int:
    mode, *rest = argv
    try:
        handlers = {"convert": _convert, "inspect": _inspect, "info": _model_info}
        payload = handlers[mode](*rest)
        payload["vm_hwm_bytes"] = _vm_hwm_bytes()
    except Exception as exc:
        payload = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    print("BENCH_RESULT " + json.dumps(payload), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# Parent side.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ChildRun:
    payload: dict[str, object]
    process_seconds: float
    peak_rss_bytes: int


def run_child(args: list[str], timeout: float) -> ChildRun:
    """Run this script in child mode; peak RSS from wait4 on exactly that child."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(os.devnull, "wb") as devnull:
        proc = subprocess.Popen(
            [sys.executable, str(pathlib.Path(__file__).resolve()), "--child", *args],
            stdout=subprocess.PIPE,
            stderr=devnull,
            env=env,
        )
    output = b""
    os.set_blocking(proc.stdout.fileno(), False)
    timed_out = False
    while True:
        chunk = proc.stdout.read()
        if chunk:
            output += chunk
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - start > timeout and not timed_out:
            os.kill(proc.pid, signal.SIGKILL)
            timed_out = True
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    output += proc.stdout.read() or b""
    proc.stdout.close()
    elapsed = time.perf_counter() - start
    payload: dict[str, object] = {}
    partial: dict[str, object] = {}
    for line in output.decode(errors="replace").splitlines():
        if line.startswith("BENCH_RESULT "):
            payload = json.loads(line[len("BENCH_RESULT ") :])
        elif line.startswith("BENCH_PARTIAL "):
            partial = json.loads(line[len("BENCH_PARTIAL ") :])
    if timed_out:
        payload = {**partial, "error": f"timeout after {timeout:.0f} s"}
    elif not payload:
        payload = {"error": f"child died (exit {proc.returncode}, likely out of memory)"}
    # ru_maxrss from wait4 carries the parent's RSS at fork over exec (Linux keeps the larger of the
    # two), so the child's own VmHWM is used when it reported one.
    peak = int(payload.get("vm_hwm_bytes") or usage.ru_maxrss * 1024)
    return ChildRun(payload, elapsed, peak)


@dataclasses.dataclass
class Measurement:
    model: str
    tool: str
    seconds: list[float] = dataclasses.field(default_factory=list)
    rss: list[int] = dataclasses.field(default_factory=list)
    pass_seconds: list[dict[str, float]] = dataclasses.field(default_factory=list)
    error: str | None = None
    inspect: dict[str, object] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.seconds)

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    @property
    def median_rss(self) -> float:
        return statistics.median(self.rss)

    @property
    def loads(self) -> bool:
        return bool(self.inspect.get("ort_loads")) and bool(self.inspect.get("ort_runs"))


@dataclasses.dataclass
class ModelInfo:
    name: str
    path: pathlib.Path
    file_bytes: int
    weight_bytes: int
    nodes: int
    external: bool


def _model_info(path: str) -> dict[str, object]:
    """Node count, FP32 weight bytes and external-data use of one model (run in a child)."""
    import onnx

    proto = onnx.load(path, load_external_data=False)
    weight_bytes = sum(
        math.prod(t.dims) * 4 for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
    )
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    return {"nodes": len(proto.graph.node), "weight_bytes": weight_bytes, "external": external}


def ensure_model(name: str, workdir: pathlib.Path) -> ModelInfo:
    """Generate preset ``name`` into ``workdir`` if missing, and describe it.

    Both happen in child processes, so this process stays small: a child's peak RSS can never
    read lower than what it inherited at fork.
    """
    path = workdir / f"{name}.onnx"
    if not path.exists():
        print(f"generating {name} ...", flush=True)
        subprocess.run(
            [sys.executable, str(HERE / "make_encoder.py"), "--preset", name, "-o", str(path)], check=True
        )
    info = run_child(["info", str(path)], timeout=600).payload
    if "error" in info:
        raise RuntimeError(f"{path}: {info['error']}")
    data = path.with_name(path.name + ".data")
    file_bytes = path.stat().st_size + (data.stat().st_size if data.exists() else 0)
    return ModelInfo(
        name, path, file_bytes, int(info["weight_bytes"]), int(info["nodes"]), bool(info["external"])
    )


def _clean(out: pathlib.Path) -> None:
    """Remove a tool's output: the model, ``OUT.data`` and mpcompile's ``OUT.<hex>.data``."""
    for p in (out, *out.parent.glob(f"{glob.escape(out.name)}*.data")):
        if p.exists():
            p.unlink()


def measure(
    models: list[ModelInfo],
    tools: list[str],
    runs: int,
    timeout: float,
    repeat_limit: float,
    outdir: pathlib.Path,
    clock: str = "wall",
    inspect: bool = True,
) -> list[Measurement]:
    """``clock``: "wall" (elapsed) or "cpu" (the child's CPU time, steadier on a shared
    machine); ``inspect``: check each output once (Casts added, ORT loads and runs)."""
    results = {(m.name, t): Measurement(m.name, t) for m in models for t in tools}
    for info in models:
        for round_index in range(runs):
            order = tools[round_index % len(tools) :] + tools[: round_index % len(tools)]
            for tool in order:
                m = results[(info.name, tool)]
                if m.error is not None:
                    continue  # a tool that failed or timed out once is not retried
                if m.seconds and m.seconds[0] > repeat_limit:
                    continue  # time-box: slow cells are measured once
                out = outdir / f"{info.name}.{tool}.onnx"
                _clean(out)
                child = run_child(
                    ["convert", tool, str(info.path), str(out), "1" if info.external else "0"], timeout
                )
                if "error" in child.payload:
                    m.error = str(child.payload["error"])
                else:
                    m.seconds.append(float(child.payload["cpu_seconds" if clock == "cpu" else "seconds"]))
                    m.rss.append(child.peak_rss_bytes)
                    m.pass_seconds.append(dict(child.payload.get("pass_seconds") or {}))
                    if inspect and not m.inspect:
                        m.inspect = run_child(["inspect", str(info.path), str(out)], timeout).payload
                _clean(out)
                status = m.error or f"{m.seconds[-1]:.2f} s, {m.rss[-1] / 2**20:.0f} MiB"
                print(f"  {info.name:18s} {tool:17s} round {round_index + 1}: {status}", flush=True)
    return list(results.values())


def growth_exponent(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(time) against log(nodes)."""
    if len(points) < 2:
        return None
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(t) for _, t in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


TARGET_MODELS = ("base", "large", "deep1536")


def render_targets(infos: list[ModelInfo], results: list[Measurement]) -> str:
    """Issue 9's targets for mpcompile, each marked met / not met from the measured medians."""
    by_key = {(r.model, r.tool): r for r in results}
    rows = ["| target | model | measured | verdict |", "|---|---|---:|---|"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    for info in infos:
        mp = by_key.get((info.name, "mpcompile"))
        if mp is None:
            continue
        if not mp.ok:
            rows.append(f"| mpcompile converts | {info.name} | {mp.error} | **not met** |")
            continue
        floor = by_key.get((info.name, "onnx-floor"))
        if info.name in TARGET_MODELS and floor and floor.ok:
            ratio = mp.median_seconds / floor.median_seconds
            rows.append(
                f"| time ≤ 1.5× onnx load+save | {info.name} | {ratio:.2f}× | {verdict(ratio <= 1.5)} |"
            )
        peers = [by_key[(info.name, p)] for p in PEERS if (info.name, p) in by_key]
        loading = [p for p in peers if p.ok and p.loads]
        if info.name in TARGET_MODELS and loading:
            best = min(loading, key=lambda p: p.median_seconds)
            speedup = best.median_seconds / mp.median_seconds
            rows.append(
                f"| ≥ 2× faster than the faster peer whose output loads ({best.tool}) | {info.name} "
                f"| {speedup:.2f}× | {verdict(speedup >= 2.0)} |"
            )
        if info.external:
            ratio = mp.median_rss / info.weight_bytes
            rows.append(
                f"| peak RSS ≤ 0.5× weight bytes (external data) | {info.name} | {ratio:.2f}× "
                f"| {verdict(ratio <= 0.5)} |"
            )
        elif info.name in TARGET_MODELS:
            ratio = mp.median_rss / info.file_bytes
            rows.append(
                f"| peak RSS ≤ 1.5× file size | {info.name} | {ratio:.2f}× | {verdict(ratio <= 1.5)} |"
            )
        if mp.inspect and not mp.loads:
            verdict_text = "unknown (the ORT check timed out)" if _check_timed_out(mp) else "**not met**"
            rows.append(
                f"| output loads and runs in ORT | {info.name} | {_short_error(mp.inspect)} | {verdict_text} |"
            )
    for tool in MPCOMPILE_TOOLS:
        for info in infos:  # issue 23: the 768-layer encoder within 1.5x of onnx-ir's load + save
            mp, ir_floor = by_key.get((info.name, tool)), by_key.get((info.name, "onnx-ir-floor"))
            if info.name == "deep768" and mp and mp.ok and ir_floor and ir_floor.ok:
                ratio = mp.median_seconds / ir_floor.median_seconds
                rows.append(
                    f"| {tool}: time ≤ 1.5× onnx-ir load+save | {info.name} | {ratio:.2f}× "
                    f"| {verdict(ratio <= 1.5)} |"
                )
        for label, series in _series():
            points = _series_points(infos, by_key, tool, series)
            exponent = growth_exponent(points)
            if exponent is not None:
                span = f"{min(p[0] for p in points)}–{max(p[0] for p in points)} nodes"
                rows.append(
                    f"| {tool}: growth exponent ≤ 1.1 | {label} ({span}) | {exponent:.2f} "
                    f"| {verdict(exponent <= 1.1)} |"
                )
    return "\n".join(rows) + "\n"


def _series() -> tuple[tuple[str, tuple[str, ...]], ...]:
    return (
        ("deep", DEEP_SERIES),
        ("deep-blocked", tuple(f"{s}-blocked" for s in DEEP_SERIES)),
        ("deep-blocked-all", tuple(f"{s}-blocked-all" for s in DEEP_SERIES)),
    )


def _series_points(
    infos: list[ModelInfo], by_key: dict[tuple[str, str], Measurement], tool: str, series: tuple[str, ...]
) -> list[tuple[int, float]]:
    return [
        (info.nodes, by_key[(info.name, tool)].median_seconds)
        for info in infos
        if info.name in series and (info.name, tool) in by_key and by_key[(info.name, tool)].ok
    ]


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def _header(runs: int, clock: str = "wall") -> str:
    return (
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {_total_memory_gib():.0f} GiB RAM, "
        f"Python {platform.python_version()}, {_versions()}.\n"
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
        f"Median of up to {runs} runs per cell"
        + (", each the child's own CPU time." if clock == "cpu" else ".")
    )


def render_markdown(
    infos: list[ModelInfo], results: list[Measurement], runs: int, header: str | None = None
) -> str:
    by_key = {(r.model, r.tool): r for r in results}
    lines = [
        header or _header(runs),
        "",
        "| model | nodes | file MiB | tool | runs | time s | peak RSS MiB | RSS / file | Casts added | ORT loads+runs "
        "| × onnx floor | × faster loading peer |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for info in infos:
        floor = by_key.get((info.name, "onnx-floor"))
        peer_times = [
            by_key[(info.name, p)].median_seconds
            for p in PEERS
            if (info.name, p) in by_key and by_key[(info.name, p)].ok and by_key[(info.name, p)].loads
        ]
        best_peer = min(peer_times) if peer_times else None
        for tool in TOOLS:
            r = by_key.get((info.name, tool))
            if r is None:
                continue
            if not r.ok:
                lines.append(
                    f"| {info.name} | {info.nodes} | {_mib(info.file_bytes)} | {tool} | {len(r.seconds)} "
                    f"| failed: {r.error} | | | | | | |"
                )
                continue
            if r.loads:
                loads = "yes"
            elif not r.inspect:
                loads = "(not checked)"
            elif _check_timed_out(r):
                loads = (
                    f"unknown: the ORT check hit the {r.inspect['error'][len('timeout after ') :]} timeout"
                )
            else:
                loads = f"no: {_short_error(r.inspect)}"
            if tool.endswith("floor"):
                loads = "(unchanged)"
            vs_floor = f"{r.median_seconds / floor.median_seconds:.2f}" if floor and floor.ok else ""
            vs_peer = f"{r.median_seconds / best_peer:.2f}" if best_peer else ""
            casts = r.inspect.get("casts_added", "")
            lines.append(
                f"| {info.name} | {info.nodes} | {_mib(info.file_bytes)} | {tool} | {len(r.seconds)} "
                f"| {r.median_seconds:.2f} "
                f"| {_mib(r.median_rss)} | {r.median_rss / info.file_bytes:.2f} | {casts} | {loads} "
                f"| {vs_floor} | {vs_peer} |"
            )
    lines += ["", "Growth exponent of time in node count (least squares on log-log):", ""]
    lines += ["| series | " + " | ".join(TOOLS) + " |", "|---|" + "---:|" * len(TOOLS)]
    for label, series in _series():
        cells = []
        for tool in TOOLS:
            points = _series_points(infos, by_key, tool, series)
            exponent = growth_exponent(points)
            span = f" ({min(p[0] for p in points)}–{max(p[0] for p in points)} nodes)" if points else ""
            cells.append(f"{exponent:.2f}{span}" if exponent is not None else "")
        if any(cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Targets (issue 9), mpcompile:", "", render_targets(infos, results)]
    return "\n".join(lines) + "\n"


def _check_timed_out(m: Measurement) -> bool:
    return str(m.inspect.get("error", "")).startswith("timeout")


def _short_error(inspect: dict[str, object]) -> str:
    message = str(inspect.get("ort_error") or inspect.get("error") or "outputs not finite")
    message = message.split("failed:")[-1].strip()
    return (message[:90] + "…" if len(message) > 90 else message).replace("|", "/")


def _total_memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return float("nan")


def _versions() -> str:
    from importlib import metadata

    parts = []
    for dist in ("onnx", "onnx-ir", "onnxruntime", "onnxconverter-common", "mpcompile"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} (not installed)")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child_main(argv[1:])
    parser = argparse.ArgumentParser(description="Benchmark FP16 conversion against the I/O floor and peers.")
    parser.add_argument(
        "--models",
        nargs="+",
        default=["tiny", "base", "large", *DEEP_SERIES],
        help="make_encoder presets (generated into --workdir when missing)",
    )
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per child before it is killed")
    parser.add_argument(
        "--repeat-limit",
        type=float,
        default=60.0,
        help="a cell whose first run takes longer than this many seconds is not repeated",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time each child's elapsed time (wall) or its own CPU time (cpu: steadier on a shared machine)",
    )
    parser.add_argument("--no-inspect", action="store_true", help="skip the output checks (Casts, ORT run)")
    parser.add_argument("--workdir", default="/tmp/mpcompile-bench", help="where models and outputs go")
    parser.add_argument("--markdown", help="write the table to this file (also printed)")
    parser.add_argument("--json", help="write raw measurements to this file")
    parser.add_argument(
        "--render", metavar="RAW_JSON", help="only re-render the table from an earlier --json"
    )
    args = parser.parse_args(argv)
    if args.render:
        raw = json.loads(pathlib.Path(args.render).read_text())
        infos = [ModelInfo(**(i | {"path": pathlib.Path(i["path"])})) for i in raw["models"]]
        results = [Measurement(**r) for r in raw["results"]]
        table = render_markdown(infos, results, raw.get("runs", args.runs), raw.get("header"))
        print(table)
        if args.markdown:
            pathlib.Path(args.markdown).write_text(table)
        return 0

    workdir = pathlib.Path(args.workdir).absolute()
    outdir = workdir / "out"
    outdir.mkdir(parents=True, exist_ok=True)
    infos = [ensure_model(name, workdir) for name in args.models]
    results = measure(
        infos,
        list(args.tools),
        args.runs,
        args.timeout,
        args.repeat_limit,
        outdir,
        clock=args.clock,
        inspect=not args.no_inspect,
    )
    shutil.rmtree(outdir, ignore_errors=True)
    table = render_markdown(infos, results, args.runs, _header(args.runs, args.clock))
    print(table)
    if args.markdown:
        pathlib.Path(args.markdown).write_text(table)
    if args.json:
        raw = {
            "runs": args.runs,
            "header": _header(args.runs, args.clock),
            "models": [dataclasses.asdict(i) | {"path": str(i.path)} for i in infos],
            "results": [dataclasses.asdict(r) for r in results],
        }
        pathlib.Path(args.json).write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
