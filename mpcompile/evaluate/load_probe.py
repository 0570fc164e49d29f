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
    LoadProbe(models).wait()


class LoadProbe:
    """``check_survives_loading`` in the background: the child starts here and ``wait`` gives its
    verdict, so the caller works on while ONNX Runtime loads (``--auto`` wires its switchboard)
    and waits only before its own first session. ``close`` stops a child nobody waits for."""

    def __init__(self, models: Mapping[str, ModelSource]):
        self._names = list(models)
        self._folder = tempfile.TemporaryDirectory(prefix="mpcompile-probe-")
        paths = []
        for index, model in enumerate(models.values()):
            if isinstance(model, bytes):
                path = os.path.join(self._folder.name, f"{index}.onnx")
                with open(path, "wb") as handle:
                    handle.write(model)
                paths.append(path)
            else:
                paths.append(os.fspath(model))
        self._child: subprocess.Popen | None = subprocess.Popen(
            [sys.executable, "-I", "-c", _CHILD, *paths],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def wait(self) -> None:
        """Raise ``InvalidModelError`` when the child crashed (or did not finish in time); once."""
        child, self._child = self._child, None
        if child is None:
            return
        try:
            stdout, _ = child.communicate(timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise errors.InvalidModelError(
                f"onnxruntime did not finish loading the model(s) within {CHILD_TIMEOUT_S} s"
            ) from None
        finally:
            self._folder.cleanup()
        started = stdout.split()
        reached = int(started[-1]) if started else 0
        if child.returncode < 0:
            what = self._names[min(reached, len(self._names) - 1)]
            raise errors.InvalidModelError(
                f"onnxruntime crashed ({_signal_name(-child.returncode)}) while loading {what}; "
                "please report it with the model"
            )

    def close(self) -> None:
        """Stop the child if nobody waited for it (the caller failed first)."""
        child, self._child = self._child, None
        if child is not None:
            child.kill()
            child.communicate()
        self._folder.cleanup()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
