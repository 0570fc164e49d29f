"""Where plain convert's range run spends its time on one model, part by part.

    python tools/bench/range_run_parts.py MODEL.onnx [--repeat N] [--ort-log] [--session-variants]

Loads the model as ``convert_file`` does, then times each part of the range run
(``passes/range_run.py``) alone, in wall seconds, in the order the run does them:

- ``serialize_reference``: the model serialized from the IR (the fallback; for comparison);
- ``loaded_recipe``: the session's model made from the loaded protobuf, every intermediate
  exposed (``evaluate/loaded_reference.py``; ``convert_file`` makes it before the IR exists);
- ``describes``: the check that the recipe still describes the IR;
- ``run_bytes``: the memory estimate;
- ``session``: ONNX Runtime creating the session (optimizations off, no prepacking, no spinning);
- ``run``: one run on the generated inputs;
- ``findings``: the range rules over every value (``measured_findings``).

``--ort-log`` also prints ONNX Runtime's own phases of one session creation (from its verbose
log's timestamps), on the model file as it is. ``--session-variants`` also prints the session's
CPU seconds as the range run builds it, with no intermediate exposed, and with one ONNX Runtime
option changed (no CPU memory arena, initializers outside it, one thread). Prints one JSON line
per repeat.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import re
import sys
import time

ORT_PHASES = (  # (label, the log line that ends the phase)
    ("parse and build the graph", "Initializing session."),
    ("required transformers", "MemcpyTransformer"),
    ("placement and value index", "Done saving OrtValue mappings."),
    ("allocation plan", "Saving initialized tensors."),
    ("initializers", "Done saving initialized tensors"),
    ("kernels and the rest", "Session successfully initialized."),
)


def time_parts(path: str) -> dict[str, float]:
    from mpcompile.core.precision import low_precision_format
    from mpcompile.evaluate import faithful, run_memory
    from mpcompile.evaluate import inputs as inputs_module
    from mpcompile.evaluate.loaded_reference import loaded_recipe
    from mpcompile.io import model_io
    from mpcompile.passes import range_run

    parts: dict[str, float] = {}

    def timed(name, function, *args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        parts[name] = round(time.perf_counter() - start, 3)
        return result

    model, proto = model_io.load_model_and_proto(path, infer_types=True)
    timed("serialize_reference", faithful.serialize_reference, model)
    source = timed("loaded_recipe", loaded_recipe, proto, pathlib.Path(path).absolute().parent)
    if source is None or not timed("describes", source.describes, model):
        sys.exit(f"{path}: the loaded proto does not describe the model; the range run serializes the IR")
    specs = inputs_module.input_specs(model, None)
    timed("run_bytes", run_memory.run_bytes, model, {spec.name: spec.shape for spec in specs}, proto=proto)
    recipe = source.take_recipe()
    session = timed("session", range_run_session, recipe.model, recipe.weights)
    declared = recipe.declared
    feeds = inputs_module.cast_feeds(model, inputs_module.generate_from_specs(specs, seed=0))
    outputs = timed("run", faithful._run_session, session, feeds, declared, widen_inputs=False)
    values = {name: [array] for name, array in [*feeds.items(), *outputs.items()]}
    findings = timed("findings", range_run.measured_findings, model, values, low_precision_format("fp16"))
    parts["findings_count"] = len(findings)
    return parts


SESSION_VARIANTS = {  # name -> (intermediates exposed, further make_session options)
    "as_the_range_run": (True, {}),
    "nothing_exposed": (False, {}),
    "no_memory_arena": (True, {"enable_cpu_mem_arena": False}),
    "initializers_outside_the_arena": (True, {"session.use_device_allocator_for_initializers": "1"}),
    "one_thread": (True, {"intra_op_num_threads": 1}),
}


def session_variants(path: str) -> dict[str, float]:
    """CPU seconds of ``make_session`` building the range run's session, as the range run builds
    it and with one thing changed: no intermediate exposed (the floor of any run of this graph),
    or one ONNX Runtime option that might spare work."""
    from mpcompile.evaluate import faithful
    from mpcompile.evaluate.loaded_reference import loaded_recipe
    from mpcompile.io import model_io

    model, loaded = model_io.load_model_and_proto(path, infer_types=True)
    seconds = {}
    for name, (exposed, options) in SESSION_VARIANTS.items():
        if exposed:  # as the range run builds it
            source = loaded_recipe(loaded, pathlib.Path(path).absolute().parent)
            if source is None:
                sys.exit(f"{path}: the loaded proto does not describe the model")
            recipe = source.take_recipe()
            session_bytes, weights = recipe.model, recipe.weights
        else:  # the same model, nothing exposed
            serialized = faithful.serialize_reference(model)
            if serialized is None:
                sys.exit(f"{path}: only a private copy evaluates the model")
            session_bytes, weights = serialized.proto.SerializeToString(), serialized.weights
        start = time.process_time()
        range_run_session(session_bytes, weights, options)
        seconds[name] = round(time.process_time() - start, 3)
    return seconds


def range_run_session(session_bytes: bytes, weights: dict | None, options: dict | None = None):
    """The session ``ReferenceSession`` builds for the range run (optimizations and prepacking
    off, no spinning) from a ``faithful.SessionProto``'s serialized proto and weights;
    ``options``: further ``make_session`` settings."""
    from mpcompile.evaluate import ort_session

    return ort_session.make_session(
        session_bytes,
        ["CPUExecutionProvider"],
        optimize=False,
        prepack=False,
        initializers=weights,
        spin=False,
        options=options,
    )


def ort_phases(path: str) -> dict[str, float]:
    """ONNX Runtime's phases of one session creation, in seconds, from its verbose log."""
    import subprocess

    child = (
        "import onnxruntime as ort, sys\n"
        "o = ort.SessionOptions(); o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL\n"
        "o.log_severity_level = 0; o.log_verbosity_level = 0\n"
        "ort.InferenceSession(sys.argv[1], o, providers=['CPUExecutionProvider'])\n"
    )
    log = subprocess.run(
        [sys.executable, "-c", child, path], capture_output=True, text=True, check=True
    ).stderr
    stamps = []
    for line in log.splitlines():
        match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)", line)
        if match:
            stamps.append((datetime.datetime.fromisoformat(match.group(1)[:26]), line))
    if not stamps:
        return {}
    phases, previous = {}, stamps[0][0]
    for label, marker in ORT_PHASES:
        ends = [stamp for stamp, line in stamps if marker in line and stamp >= previous]
        if ends:
            phases[label] = round((ends[0] - previous).total_seconds(), 3)
            previous = ends[0]
    phases["total"] = round((previous - stamps[0][0]).total_seconds(), 3)
    return phases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--ort-log", action="store_true", help="also ONNX Runtime's own session phases")
    parser.add_argument(
        "--session-variants",
        action="store_true",
        help="also the session's CPU seconds with nothing exposed, or one ORT option changed",
    )
    args = parser.parse_args(argv)
    from mpcompile.compiler.gc_pause import cyclic_gc_paused

    for _ in range(args.repeat):
        with cyclic_gc_paused():  # as in a conversion
            parts = time_parts(args.model)
        print(json.dumps(parts), flush=True)
    if args.session_variants:
        for _ in range(args.repeat):
            print(json.dumps({"session_cpu_seconds": session_variants(args.model)}), flush=True)
    if args.ort_log:
        print(json.dumps({"ort_session_phases": ort_phases(args.model)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
