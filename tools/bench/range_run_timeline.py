"""When each part of one default conversion runs, on which thread: the range run overlapped.

    python tools/bench/range_run_timeline.py MODEL.onnx [--static] [--no-early] [--threads N]

Runs ``mpcompile.convert_file`` once (output in a temporary folder) and prints, in wall seconds
from the start of the conversion, when each pass started and when the parts of the load and of
the range run (``passes/range_run.py``) started and ended, and the thread that ran them: the
session's build and run go on a worker thread while the IR is deserialized and the plan is
painted. ``--no-early``: the session is started by ``RangeRunPass`` instead of during the load
(``range_run.start_early`` off), to compare; ``--threads N``: the worker's session on N intra-op
threads instead of ``range_run.threads_beside_the_conversion()`` (0: ONNX Runtime's default).
Prints one JSON line per event after the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

# (module, attribute, method of a class or None): the parts timed.
PARTS = (
    ("mpcompile.io.model_io", "check_structure", None),
    ("mpcompile.io.model_io", "_with_inferred_types", None),
    ("mpcompile.evaluate.loaded_reference", "loaded_recipe", None),
    ("onnx_ir.serde", "deserialize_model", None),
    ("mpcompile.evaluate.loaded_reference", "LoadedRecipe", "describes"),
    ("mpcompile.evaluate.run_memory", "run_bytes", None),
    ("mpcompile.evaluate.faithful", "SessionRecipe", "build"),
    ("mpcompile.evaluate.faithful", "ReferenceSession", "run"),
    ("mpcompile.passes.range_run", "PendingRangeRun", "finish"),
    ("mpcompile.passes.range_run", "measured_findings", None),
)


@contextlib.contextmanager
def timed_parts(events: list[dict], start: float) -> Iterator[None]:
    """Every part of ``PARTS`` records its start, end and thread into ``events`` while inside."""
    import importlib

    patched: list[tuple[object, str, Callable]] = []

    def wrap(owner: object, name: str, label: str) -> None:
        function = getattr(owner, name, None)
        if function is None:
            return

        def timed(*args, **kwargs):
            began = time.perf_counter() - start
            try:
                return function(*args, **kwargs)
            finally:
                events.append(
                    {
                        "part": label,
                        "start": round(began, 3),
                        "end": round(time.perf_counter() - start, 3),
                        "thread": "worker"
                        if threading.current_thread().name == "mpcompile-range-run"
                        else "main",
                    }
                )

        patched.append((owner, name, function))
        setattr(owner, name, timed)

    try:
        for module_name, attribute, method in PARTS:
            owner = importlib.import_module(module_name)
            if method is None:
                wrap(owner, attribute, attribute)
            elif hasattr(owner, attribute):
                wrap(getattr(owner, attribute), method, f"{attribute}.{method}")
        yield
    finally:
        for owner, name, function in reversed(patched):
            setattr(owner, name, function)


def timeline(
    path: str, *, static: bool = False, early: bool = True, threads: int | None = None
) -> list[dict]:
    """The events of one ``convert_file`` of ``path``, in start order; ``threads``: as ``--threads``."""
    import mpcompile
    from mpcompile.passes import range_run

    events: list[dict] = []
    start = time.perf_counter()

    def on_pass_start(name: str) -> None:
        events.append(
            {"part": f"pass {name}", "start": round(time.perf_counter() - start, 3), "thread": "main"}
        )

    start_early, beside = range_run.start_early, range_run.threads_beside_the_conversion
    with tempfile.TemporaryDirectory(prefix="range-run-timeline-") as folder, timed_parts(events, start):
        if not early:
            range_run.start_early = lambda proto, base_dir: None
        if threads is not None:
            range_run.threads_beside_the_conversion = lambda: threads or None
        try:
            start = time.perf_counter()
            mpcompile.convert_file(
                path, pathlib.Path(folder) / "out.onnx", static=static, on_pass_start=on_pass_start
            )
        finally:
            range_run.start_early, range_run.threads_beside_the_conversion = start_early, beside
        events.append({"part": "end", "start": round(time.perf_counter() - start, 3), "thread": "main"})
    return sorted(events, key=lambda event: event["start"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--static", action="store_true", help="no range run, to compare")
    parser.add_argument("--no-early", action="store_true", help="the session started by RangeRunPass")
    parser.add_argument(
        "--threads", type=int, help="the worker session's intra-op threads (0: ORT's default)"
    )
    args = parser.parse_args(argv)
    events = timeline(args.model, static=args.static, early=not args.no_early, threads=args.threads)
    for event in events:
        span = f"{event['end']:7.2f} ({event['end'] - event['start']:5.2f})" if "end" in event else ""
        print(f"{event['start']:7.2f} {span:>16s}  {event['thread']:6s}  {event['part']}")
    for event in events:
        print(json.dumps(event))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
