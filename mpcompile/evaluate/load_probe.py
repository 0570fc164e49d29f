"""Does ONNX Runtime survive loading a model? Asked in a child process, so a crash is one line.

ONNX Runtime can crash outright (a segfault in a graph optimiser) on a model that passes the
full checker; in-process, that kills mpcompile with no message. Before mpcompile first loads its
own output in-process (``validate``, ``convert --validate``, ``--auto``), a child interpreter
builds a session for it with the default settings (``sys.executable -I``: onnxruntime only,
nothing of the caller's path). A child killed by a signal becomes ``InvalidModelError`` (exit 12)
naming the signal; any other failure is left to the in-process load, which reports ORT's own
message. One child per command: about 0.3 s, mostly importing onnxruntime.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping

from mpcompile import errors

CHILD_TIMEOUT_S = 600
# Prints the index of each model before loading it, so the parent knows which one crashed.
_CHILD = (
    "import sys, onnxruntime as ort\n"
    "options = ort.SessionOptions()\n"
    "options.log_severity_level = 4\n"
    "for index, path in enumerate(sys.argv[1:]):\n"
    "    print(index, flush=True)\n"
    "    try:\n"
    "        ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])\n"
    "    except Exception:\n"
    "        pass\n"
)

ModelSource = bytes | str | os.PathLike


def check_survives_loading(models: Mapping[str, ModelSource]) -> None:
    """Raise ``InvalidModelError`` when onnxruntime crashes loading one of ``models`` (what each
    is called -> a path or serialized bytes), all in one child. Other load failures are left to
    the caller's own load, which gives ORT's message."""
    with tempfile.TemporaryDirectory(prefix="mpcompile-probe-") as folder:
        paths = []
        for index, model in enumerate(models.values()):
            if isinstance(model, bytes):
                path = os.path.join(folder, f"{index}.onnx")
                with open(path, "wb") as handle:
                    handle.write(model)
                paths.append(path)
            else:
                paths.append(os.fspath(model))
        returncode, reached = _run_child(paths)
    if returncode < 0:
        what = list(models)[min(reached, len(models) - 1)]
        raise errors.InvalidModelError(
            f"onnxruntime crashed ({_signal_name(-returncode)}) while loading {what}; "
            "please report it with the model"
        )


def _run_child(paths: list[str]) -> tuple[int, int]:
    """The child's return code and the index of the last model it started loading."""
    try:
        completed = subprocess.run(
            [sys.executable, "-I", "-c", _CHILD, *paths],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise errors.InvalidModelError(
            f"onnxruntime did not finish loading the model(s) within {CHILD_TIMEOUT_S} s"
        ) from None
    started = completed.stdout.split()
    return completed.returncode, int(started[-1]) if started else 0


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
