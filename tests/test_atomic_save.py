"""Issue 21, point 1: an output is always the complete old pair or the complete new pair.

``convert`` runs as ``python -m mpcompile.cli`` in a child process and is killed (SIGKILL,
SIGTERM, SIGINT) where the test hook ``MPCOMPILE_TEST_COMMIT_PAUSE`` pauses it
(``mpcompile/io/output_commit.py``), and at seeded random moments (``slow``). After each kill the
output loads in ONNX Runtime and is byte for byte one of the two conversions; SIGTERM and SIGINT
leave no temporary folder, and after SIGKILL the next save removes what was left. Concurrent
converts to one output end as one writer's complete output.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.builder import tiny_fp32_model
from mpcompile import errors
from mpcompile.io import model_io, output_commit

REPO = pathlib.Path(__file__).resolve().parents[1]
# Two conversions of one model with different weights files: FP16 weights, and MatMul kept FP32.
OLD = ("--external-data", "--block-op", "MatMul")
NEW = ("--external-data",)
# fp16-relu-fp32 shares fp16's weights file (same content, same name) with another model.
WRITERS = {"fp16": NEW, "fp32-matmul": OLD, "fp16-relu-fp32": ("--external-data", "--block-op", "Relu")}
OUTPUT = "out.onnx"
FEEDS = {"x": np.random.default_rng(21).uniform(-1, 1, (2, 256)).astype(np.float32)}
CHILD_TIMEOUT_S = 120


def wide_model() -> onnx.ModelProto:
    """The tiny model with a 256x256 weight (256 KiB in FP32, 128 KiB in FP16)."""
    model = tiny_fp32_model()
    weight = np.random.default_rng(0).uniform(-0.1, 0.1, (256, 256)).astype(np.float32)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "W"))
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.zeros(256, np.float32), "b"))
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 256]))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 256]))
    return model


def convert_here(source: pathlib.Path, output: pathlib.Path, flags: tuple[str, ...]) -> int:
    """``mpcompile convert`` in this process (no start-up cost), quietly."""
    from mpcompile.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(["convert", str(source), "-o", str(output), "-q", *flags])


@dataclasses.dataclass(frozen=True)
class Saved:
    """One conversion as it lies on disk: the model's bytes, its data file's name and bytes."""

    model: bytes
    data_name: str
    data: bytes

    @classmethod
    def read(cls, output: pathlib.Path) -> Saved:
        proto = onnx.load_from_string(output.read_bytes())
        (location,) = {
            entry.value
            for tensor in proto.graph.initializer
            for entry in tensor.external_data
            if entry.key == "location"
        }
        return cls(output.read_bytes(), location, (output.parent / location).read_bytes())


@dataclasses.dataclass(frozen=True)
class Reference:
    saved: Saved
    outputs: list[np.ndarray]


def ort_outputs(path: pathlib.Path) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, FEEDS)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("source") / "model.onnx"
    onnx.save(wide_model(), str(path))
    return path


@pytest.fixture(scope="module")
def references(source: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Reference]:
    """Each writer's conversion, made alone into a folder of its own under the same file name."""
    found = {}
    for name, flags in WRITERS.items():
        output = tmp_path_factory.mktemp(f"reference-{name}") / OUTPUT
        assert convert_here(source, output, flags) == 0
        found[name] = Reference(Saved.read(output), ort_outputs(output))
    assert len({ref.saved.model for ref in found.values()}) == len(WRITERS), "writers must differ"
    assert found["fp16"].saved.data == found["fp16-relu-fp32"].saved.data != found["fp32-matmul"].saved.data
    return found


def assert_is_one_of(output: pathlib.Path, candidates: dict[str, Reference]) -> str:
    """``output`` loads in ORT and is, model and data file, exactly one of ``candidates``; its name."""
    saved = Saved.read(output)
    matches = [name for name, ref in candidates.items() if ref.saved == saved]
    assert matches, f"{output} is none of {sorted(candidates)}"
    for got, want in zip(ort_outputs(output), candidates[matches[0]].outputs, strict=True):
        np.testing.assert_array_equal(got, want)  # the very same model: bit-identical outputs
    return matches[0]


def listing(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def temp_folders(folder: pathlib.Path) -> list[str]:
    return [name for name in listing(folder) if name.startswith(".") and name.endswith(".tmp")]


def start_convert(
    source: pathlib.Path, output: pathlib.Path, flags: tuple[str, ...], pause: str | None = None
) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop(output_commit.PAUSE_ENV, None)
    if pause is not None:
        env[output_commit.PAUSE_ENV] = pause
    return subprocess.Popen(
        [sys.executable, "-m", "mpcompile.cli", "convert", str(source), "-o", str(output), "-q", *flags],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # A shell without job control starts background jobs with SIGINT ignored; the child
        # must see SIGINT as an interactive user's Ctrl-C does.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(path: pathlib.Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"exited {process.returncode} before its pause: {process.stderr.read().decode()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("never reached its pause")
        time.sleep(0.005)


EXIT_CODES = {signal.SIGKILL: -signal.SIGKILL, signal.SIGTERM: 143, signal.SIGINT: 130}
# Which pair is at OUT once the signal was handled: held signals are delivered after the commit.
AFTER_SIGNAL = {
    ("before-commit", signal.SIGKILL): "old",
    ("before-commit", signal.SIGTERM): "old",
    ("before-commit", signal.SIGINT): "old",
    ("before-model", signal.SIGKILL): "old",  # the new data file is in place, unnamed
    ("before-model", signal.SIGTERM): "new",
    ("before-model", signal.SIGINT): "new",
    ("after-model", signal.SIGKILL): "new",  # the old data file is not yet removed
    ("after-model", signal.SIGTERM): "new",
    ("after-model", signal.SIGINT): "new",
}


def _kill_at(source: pathlib.Path, folder: pathlib.Path, point: str, number: int) -> tuple[int, str]:
    """Convert NEW over an OLD output in ``folder``; signal the child at ``point``."""
    marker = folder.parent / f"{folder.name}.paused"
    process = start_convert(source, folder / OUTPUT, NEW, pause=f"{point}:{marker}")
    try:
        wait_for(marker, process)
        process.send_signal(number)
        _, stderr = process.communicate(timeout=CHILD_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stderr.decode()


def test_kills_at_each_commit_point_leave_the_old_or_the_new_pair(
    source: pathlib.Path, references: dict[str, Reference], tmp_path: pathlib.Path
) -> None:
    """SIGKILL, SIGTERM and SIGINT at the three pause points (9 children, run side by side)."""
    old, new = references["fp32-matmul"], references["fp16"]
    cases = {}
    for (point, number), expected in AFTER_SIGNAL.items():
        folder = tmp_path / f"{point}-{signal.Signals(number).name}"
        folder.mkdir()
        assert convert_here(source, folder / OUTPUT, OLD) == 0
        cases[folder] = (point, number, expected)
    with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
        done = {folder: pool.submit(_kill_at, source, folder, *cases[folder][:2]) for folder in cases}
    for folder, (point, number, expected) in cases.items():
        code, stderr = done[folder].result()
        label = f"{point} {signal.Signals(number).name}"
        assert code == EXIT_CODES[number], f"{label}: exit {code}: {stderr}"
        assert assert_is_one_of(folder / OUTPUT, {"old": old, "new": new}) == expected, label
        pair = [OUTPUT, (old if expected == "old" else new).saved.data_name]
        if number == signal.SIGKILL:
            # The next save removes what the killed one left (temporary folder, unnamed data).
            assert temp_folders(folder), label
            assert convert_here(source, folder / OUTPUT, OLD) == 0
            assert listing(folder) == sorted([OUTPUT, old.saved.data_name]), label
            assert_is_one_of(folder / OUTPUT, {"old": old})
        else:
            assert stderr.strip().endswith("aborted"), f"{label}: {stderr}"
            assert listing(folder) == sorted(pair), label  # no temporary folder, no stray data file


def test_sighup_stops_cleanly_with_exit_129(
    source: pathlib.Path, references: dict[str, Reference], tmp_path: pathlib.Path
) -> None:
    assert convert_here(source, tmp_path / OUTPUT, OLD) == 0
    code, stderr = _kill_at(source, tmp_path, "before-commit", signal.SIGHUP)
    assert code == 129, stderr
    assert assert_is_one_of(tmp_path / OUTPUT, references) == "fp32-matmul"
    assert listing(tmp_path) == sorted([OUTPUT, references["fp32-matmul"].saved.data_name])


@pytest.mark.parametrize("writers,pause", [(4, None), (3, "before-model")], ids=["free", "paused-in-commit"])
def test_concurrent_converts_end_as_one_writers_output(
    source: pathlib.Path, references: dict[str, Reference], tmp_path: pathlib.Path, writers: int, pause
) -> None:
    """Several converts to one output at once, each with other options. ``paused-in-commit``
    holds each writer between its two renames, where an unserialised writer would remove the
    data file of another (it is not named by the model at OUT yet)."""
    output = tmp_path / OUTPUT
    names = list(WRITERS)
    processes = []
    for index in range(writers):
        hook = None if pause is None else f"{pause}:{tmp_path.parent / f'{tmp_path.name}.{index}'}:0.5"
        processes.append(start_convert(source, output, WRITERS[names[index % len(names)]], pause=hook))
    for process in processes:
        _, stderr = process.communicate(timeout=CHILD_TIMEOUT_S)
        assert process.returncode == 0, stderr.decode()
    winner = assert_is_one_of(output, references)
    assert listing(tmp_path) == sorted([OUTPUT, references[winner].saved.data_name])


@pytest.mark.slow
def test_kills_at_random_moments_leave_the_old_or_the_new_pair(
    source: pathlib.Path, references: dict[str, Reference], tmp_path: pathlib.Path
) -> None:
    """24 kills (seeded), each at a random moment of a convert that alternates the two options
    over the same output, with a random one of SIGKILL, SIGTERM and SIGINT."""
    rng = random.Random(21)
    output = tmp_path / OUTPUT
    two = {"fp16": references["fp16"], "fp32-matmul": references["fp32-matmul"]}
    assert convert_here(source, output, OLD) == 0
    started = time.monotonic()
    process = start_convert(source, output, NEW)
    assert process.wait(timeout=CHILD_TIMEOUT_S) == 0
    full = time.monotonic() - started
    outcomes = []
    for _ in range(24):
        before = assert_is_one_of(output, two)
        after = "fp16" if before == "fp32-matmul" else "fp32-matmul"
        number = rng.choice([signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
        process = start_convert(source, output, WRITERS[after])
        time.sleep(rng.uniform(0.2, 1.0) * full)
        process.send_signal(number)
        process.communicate(timeout=CHILD_TIMEOUT_S)
        now = assert_is_one_of(output, two)
        outcomes.append((signal.Signals(number).name, process.returncode, now == after))
        if number == signal.SIGKILL:
            assert convert_here(source, output, WRITERS[now]) == 0  # cleans what the kill left
        assert listing(tmp_path) == sorted([OUTPUT, two[now].saved.data_name]), outcomes[-1]
    print(outcomes)


# --------------------------------------------------------------------------- in-process rules


def test_conversion_is_deterministic_and_idempotent(source: pathlib.Path, tmp_path: pathlib.Path) -> None:
    output = tmp_path / OUTPUT
    assert convert_here(source, output, NEW) == 0
    first = Saved.read(output)
    assert re.fullmatch(r"out\.onnx\.[0-9a-f]{12}\.data", first.data_name)
    assert convert_here(source, output, NEW) == 0
    assert Saved.read(output) == first
    assert listing(tmp_path) == sorted([OUTPUT, first.data_name])


def test_embedded_save_removes_the_old_data_file(source: pathlib.Path, tmp_path: pathlib.Path) -> None:
    output = tmp_path / OUTPUT
    assert convert_here(source, output, NEW) == 0
    assert convert_here(source, output, ("--no-external-data",)) == 0
    assert listing(tmp_path) == [OUTPUT]


def _legacy_output(folder: pathlib.Path, location: str) -> pathlib.Path:
    """OUT as an earlier mpcompile (or another tool) wrote it: weights in ``location``."""
    output = folder / OUTPUT
    onnx.save(wide_model(), str(output), save_as_external_data=True, location=location, size_threshold=1024)
    return output


def test_legacy_data_file_named_by_the_old_output_is_removed(
    source: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    _legacy_output(tmp_path, "out.onnx.data")
    assert convert_here(source, tmp_path / OUTPUT, NEW) == 0
    assert listing(tmp_path) == sorted([OUTPUT, Saved.read(tmp_path / OUTPUT).data_name])


def test_files_not_of_our_naming_are_never_removed(source: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """The old output names weights.bin (another tool's name); a stray out.onnx.data that it
    does not name, and names close to ours, stay too."""
    _legacy_output(tmp_path, "weights.bin")
    others = ["out.onnx.data", "out.onnx.ABCDEF012345.data", "out.onnx.0123.data", "x.onnx.0123456789ab.data"]
    for name in others:
        (tmp_path / name).write_bytes(b"not ours to remove")
    assert convert_here(source, tmp_path / OUTPUT, NEW) == 0
    written = Saved.read(tmp_path / OUTPUT).data_name
    assert listing(tmp_path) == sorted([OUTPUT, written, "weights.bin", *others])


def test_stale_temp_folders_of_dead_owners_are_removed(source: pathlib.Path, tmp_path: pathlib.Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = int(gone.stdout)
    stale = tmp_path / f".{OUTPUT}.mpcompile-{dead}-abc123.tmp"
    live = tmp_path / f".{OUTPUT}.mpcompile-{os.getppid()}-def456.tmp"
    other = tmp_path / f".other.onnx.mpcompile-{dead}-abc123.tmp"
    for folder in (stale, live, other):
        folder.mkdir()
        (folder / OUTPUT).write_bytes(b"half a model")
    unowned_old = tmp_path / f".{OUTPUT}.k2j4_9xz.tmp"  # the form before owners were named
    unowned_new = tmp_path / f".{OUTPUT}.a1b2c3d4.tmp"
    for folder in (unowned_old, unowned_new):
        folder.mkdir()
    day_ago = time.time() - output_commit.STALE_TEMP_SECONDS - 60
    os.utime(unowned_old, (day_ago, day_ago))
    assert convert_here(source, tmp_path / OUTPUT, NEW) == 0
    assert not stale.exists() and not unowned_old.exists()
    # A live owner's, another output's, and an unowned one younger than a day stay.
    assert live.exists() and other.exists() and unowned_new.exists()


def test_an_explicit_data_file_name_is_used_for_a_fresh_destination(tmp_path: pathlib.Path) -> None:
    (tmp_path / "in").mkdir()
    model = model_io.load_model(_legacy_output(tmp_path / "in", "w.bin"))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    data = model_io.save_model(model, fresh / "model.onnx", external_data="model.onnx_data")
    assert data == fresh / "model.onnx_data"
    assert listing(fresh) == ["model.onnx", "model.onnx_data"]
    onnx.checker.check_model(str(fresh / "model.onnx"), full_check=True)
    # Not fresh any more: the content name (a fixed name cannot be replaced by one rename);
    # the file of the explicit name is not of our naming, so it stays.
    again = model_io.save_model(model, fresh / "model.onnx", external_data="model.onnx_data")
    assert again is not None and re.fullmatch(r"model\.onnx\.[0-9a-f]{12}\.data", again.name)
    assert listing(fresh) == sorted(["model.onnx", "model.onnx_data", again.name])
    with pytest.raises(ValueError):
        model_io.save_model(model, fresh / "other.onnx", external_data="../escape.data")


def test_a_fresh_commit_refuses_an_output_written_meanwhile(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / OUTPUT).write_bytes(b"new")
    (tmp_path / OUTPUT).write_bytes(b"written by someone else meanwhile")
    with pytest.raises(errors.OutputNotWritableError, match="another process"):
        output_commit.commit(folder, tmp_path / OUTPUT, None, fresh=True)
    assert (tmp_path / OUTPUT).read_bytes() == b"written by someone else meanwhile"


def test_signals_in_a_commit_are_delivered_after_it() -> None:
    received = []
    previous = signal.signal(signal.SIGTERM, lambda number, _frame: received.append(("handler", number)))
    try:
        with output_commit.signals_held():
            signal.raise_signal(signal.SIGTERM)
            received.append("commit done")
        assert received == ["commit done", ("handler", signal.SIGTERM)]
    finally:
        signal.signal(signal.SIGTERM, previous)
