"""Bad input through the CLI: one-line error, its own exit code, input untouched, no output left.

Every case runs ``mpcompile.cli.main([...])`` in-process; the table of exit codes is in
the README.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pathlib
import re
import subprocess
import sys
import threading
from collections.abc import Callable

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.builder import tiny_fp32_model
from mpcompile.errors import ExitCode
from tests.conftest import CliRun

# --------------------------------------------------------------------------- helpers


def folder_state(folder: pathlib.Path) -> dict[str, str]:
    """Name -> sha256 of every file under ``folder``: proves nothing was changed or left behind."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def assert_refused(result: CliRun, code: ExitCode, *mentions: str) -> None:
    """One line on stderr, naming the problem, no traceback, the expected exit code."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == int(code), (
        f"exit {result.exit_code}, expected {int(code)} ({code.name}): {lines}"
    )
    assert len(lines) == 1, f"expected a one-line error, got {lines}"
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr + result.stdout
    for mention in mentions:
        assert mention.lower() in lines[0].lower(), f"{mention!r} not in {lines[0]!r}"


def refused_without_side_effects(
    run_cli,
    folder: pathlib.Path,
    source: pathlib.Path,
    code: ExitCode,
    *mentions: str,
    extra_args=(),
    opened: list[str] | None = None,
) -> CliRun:
    """Run convert on ``source`` into ``folder``/out.onnx; nothing under ``folder`` may change.

    With ``opened``, every path the conversion opened is appended to it.
    """
    before = folder_state(folder)
    output = folder / "out.onnx"
    with opened_paths() as paths:
        result = run_cli("convert", source, "-o", output, *extra_args)
    if opened is not None:
        opened.extend(paths)
    assert_refused(result, code, *mentions)
    assert folder_state(folder) == before
    return result


def save(model: onnx.ModelProto, path: pathlib.Path) -> pathlib.Path:
    path.write_bytes(model.SerializeToString())
    return path


def external_model(folder: pathlib.Path, location: str) -> pathlib.Path:
    """The tiny model whose weight W points at external data ``location``."""
    model = tiny_fp32_model()
    weight = model.graph.initializer[0]
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    for key, value in {"location": location, "offset": "0", "length": "48"}.items():
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    return save(model, folder / "model.onnx")


# --------------------------------------------------------------------------- input file


def test_missing_input(run_cli, tmp_path: pathlib.Path) -> None:
    refused_without_side_effects(
        run_cli, tmp_path, tmp_path / "absent.onnx", ExitCode.INPUT_NOT_FOUND, "absent.onnx"
    )


def test_input_is_a_folder(run_cli, tmp_path: pathlib.Path) -> None:
    # `convert` takes a folder of models since folder mode (tests/test_folder_mode.py): one
    # without any .onnx file is refused as not ONNX; convert_file still takes files only.
    (tmp_path / "folder.onnx").mkdir()
    refused_without_side_effects(
        run_cli, tmp_path, tmp_path / "folder.onnx", ExitCode.NOT_ONNX, "no .onnx file"
    )
    from mpcompile import errors
    from mpcompile.compiler.converter import convert_file

    with pytest.raises(errors.InputNotFoundError, match="not a file"):
        convert_file(tmp_path / "folder.onnx", tmp_path / "out.onnx")


def test_not_onnx(run_cli, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "notes.onnx"
    source.write_text("these are my notes, not a model\n" * 20)
    refused_without_side_effects(run_cli, tmp_path, source, ExitCode.NOT_ONNX, "notes.onnx")


def test_empty_file(run_cli, tmp_path: pathlib.Path) -> None:
    source = tmp_path / "empty.onnx"
    source.touch()
    refused_without_side_effects(run_cli, tmp_path, source, ExitCode.NOT_ONNX, "empty")


def test_truncated_protobuf(run_cli, tmp_path: pathlib.Path) -> None:
    data = tiny_fp32_model().SerializeToString()
    source = tmp_path / "truncated.onnx"
    source.write_bytes(data[: len(data) - 20])
    refused_without_side_effects(run_cli, tmp_path, source, ExitCode.NOT_ONNX, "truncated.onnx")


def test_protobuf_without_graph(run_cli, tmp_path: pathlib.Path) -> None:
    source = save(onnx.ModelProto(ir_version=8), tmp_path / "nograph.onnx")
    refused_without_side_effects(run_cli, tmp_path, source, ExitCode.NOT_ONNX, "no graph")


# --------------------------------------------------------------------------- external data


def test_missing_external_data_file(run_cli, tmp_path: pathlib.Path) -> None:
    source = external_model(tmp_path, "weights.bin")
    refused_without_side_effects(
        run_cli, tmp_path, source, ExitCode.EXTERNAL_DATA, "weights.bin", "not found"
    )


def test_external_data_shorter_than_declared(run_cli, tmp_path: pathlib.Path) -> None:
    source = external_model(tmp_path, "weights.bin")
    (tmp_path / "weights.bin").write_bytes(b"\0" * 10)
    refused_without_side_effects(run_cli, tmp_path, source, ExitCode.EXTERNAL_DATA, "weights.bin")


@contextlib.contextmanager
def opened_paths():
    """Record every path the interpreter opens (audit hooks cannot be removed, so gate one)."""
    record: list[str] | None = []
    _AUDIT_SINKS.append(record)
    try:
        yield record
    finally:
        _AUDIT_SINKS.remove(record)


_AUDIT_SINKS: list[list[str]] = []
_UNAUDITED_THREADS: set[int] = set()  # the tests' own watchers (see fifo_tripwire)


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _AUDIT_SINKS and isinstance(args[0], (str, bytes, os.PathLike)):
        if threading.get_ident() in _UNAUDITED_THREADS:
            return
        for sink in _AUDIT_SINKS:
            sink.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@pytest.mark.parametrize(
    "location", ["../../etc/passwd", "../secret.bin", "/etc/passwd", "sub/../../secret.bin"]
)
def test_external_data_escaping_the_folder_is_refused_before_reading(
    run_cli, tmp_path: pathlib.Path, location: str
) -> None:
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True)
    (tmp_path / "a" / "secret.bin").write_bytes(b"\1" * 64)
    source = external_model(folder, location)
    opened: list[str] = []
    result = refused_without_side_effects(
        run_cli, folder, source, ExitCode.EXTERNAL_DATA, location, opened=opened
    )
    assert "refused" in result.stderr
    escaped = [path for path in opened if "passwd" in path or "secret.bin" in path]
    assert not escaped, f"read before refusing: {escaped}"


def test_external_data_symlink_escaping_the_folder(run_cli, tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\1" * 64)
    (folder / "weights.bin").symlink_to(tmp_path / "secret.bin")
    source = external_model(folder, "weights.bin")
    opened: list[str] = []
    refused_without_side_effects(run_cli, folder, source, ExitCode.EXTERNAL_DATA, "escapes", opened=opened)
    assert opened, "the audit hook saw nothing: the check is not working"
    assert not [path for path in opened if path.endswith(("secret.bin", "weights.bin"))]


# --------------------------------------------------------------------------- model content


def test_opset_older_than_supported(run_cli, tmp_path: pathlib.Path) -> None:
    source = save(tiny_fp32_model(opset=6), tmp_path / "old.onnx")
    refused_without_side_effects(run_cli, tmp_path, source, ExitCode.UNSUPPORTED_OPSET, "opset 6")


def test_opset_newer_than_onnx_knows(run_cli, tmp_path: pathlib.Path) -> None:
    newer = onnx.defs.onnx_opset_version() + 1
    source = save(tiny_fp32_model(opset=newer), tmp_path / "new.onnx")
    refused_without_side_effects(run_cli, tmp_path, source, ExitCode.UNSUPPORTED_OPSET, f"opset {newer}")


def low_precision_model(dtype: int) -> onnx.ModelProto:
    weight = helper.make_tensor("W", dtype, [4, 3], np.ones((4, 3), np.float32).flatten().tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")],
        "low",
        [helper.make_tensor_value_info("x", dtype, [2, 4])],
        [helper.make_tensor_value_info("y", dtype, [2, 3])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.BFLOAT16], ids=["fp16", "bf16"])
def test_already_low_precision_model(run_cli, tmp_path: pathlib.Path, dtype: int) -> None:
    source = save(low_precision_model(dtype), tmp_path / "low.onnx")
    refused_without_side_effects(run_cli, tmp_path, source, ExitCode.ALREADY_LOW_PRECISION, "already")


@pytest.mark.parametrize("dtype", [TensorProto.FLOAT16, TensorProto.BFLOAT16], ids=["fp16", "bf16"])
def test_already_low_precision_model_api_is_a_noop_with_a_note(dtype: int) -> None:
    import mpcompile

    model = low_precision_model(dtype)
    result = mpcompile.convert(model)
    assert any("already" in note.lower() for note in result.notes), result.notes
    converted = result.model
    assert [n.op_type for n in converted.graph.node] == ["MatMul"]
    assert converted.graph.initializer[0].data_type == dtype


def test_converting_a_converted_model_again_is_refused(run_cli, tmp_path: pathlib.Path) -> None:
    source = save(tiny_fp32_model(), tmp_path / "model.onnx")
    first = tmp_path / "model.fp16.onnx"
    assert run_cli("convert", source, "-o", first).exit_code == 0
    refused_without_side_effects(run_cli, tmp_path, first, ExitCode.ALREADY_LOW_PRECISION, "already")


def custom_op_model() -> onnx.ModelProto:
    model = tiny_fp32_model()
    graph = model.graph
    graph.node[1].input[0] = "h_custom"
    graph.node.insert(
        1, helper.make_node("Scramble", ["h"], ["h_custom"], name="scramble", domain="com.example")
    )
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    return model


def test_unknown_custom_domain_op_is_refused_without_allow_custom_ops(
    run_cli, tmp_path: pathlib.Path
) -> None:
    """ONNX Runtime loads neither the input nor its conversion without the op's library."""
    source = save(custom_op_model(), tmp_path / "custom.onnx")
    refused_without_side_effects(
        run_cli, tmp_path, source, ExitCode.INVALID_MODEL, "com.example::Scramble", "--allow-custom-ops"
    )


def test_unknown_custom_domain_op_with_allow_custom_ops_is_kept_fp32_and_reported(
    run_cli, tmp_path: pathlib.Path
) -> None:
    from mpcompile.core.plan import read_decision
    from mpcompile.core.precision import Precision

    source = save(custom_op_model(), tmp_path / "custom.onnx")
    before = source.read_bytes()
    output = tmp_path / "out.onnx"
    result = run_cli("convert", source, "-o", output, "--allow-custom-ops")
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "Scramble" in result.stdout + result.stderr, "the unknown op must be reported"
    assert source.read_bytes() == before
    converted = ir.load(output)
    scramble = next(node for node in converted.graph if node.op_type == "Scramble")
    decision = read_decision(scramble)
    assert decision is not None and decision.precision == Precision.FP32
    assert scramble.inputs[0].dtype == ir.DataType.FLOAT
    onnx.checker.check_model(onnx.load(str(output)), full_check=True)


def qdq_model(opset: int = 13) -> onnx.ModelProto:
    """x -> Q -> DQ -> MatMul(DQ(W int8)) -> Relu: a quantized path in front of a float tail."""
    rng = np.random.default_rng(1)
    weight = rng.integers(-100, 100, (4, 3)).astype(np.int8)
    initializers = [
        numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(128, np.uint8), "x_zero"),
        numpy_helper.from_array(weight, "W_q"),
        numpy_helper.from_array(np.array(0.01, np.float32), "W_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "W_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"], name="q_x"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["W_q", "W_scale", "W_zero"], ["W_dq"], name="dq_w"),
        helper.make_node("MatMul", ["x_dq", "W_dq"], ["h"], name="matmul"),
        helper.make_node("Relu", ["h"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def test_qdq_model_is_refused_by_default(run_cli, tmp_path: pathlib.Path) -> None:
    source = save(qdq_model(), tmp_path / "qdq.onnx")
    refused_without_side_effects(run_cli, tmp_path, source, ExitCode.QDQ_MODEL, "--allow-qdq")


@pytest.mark.parametrize("opset", [13, 21])
def test_qdq_model_with_allow_qdq_keeps_quantized_paths(run_cli, tmp_path: pathlib.Path, opset: int) -> None:
    import onnxruntime as ort

    source = save(qdq_model(opset), tmp_path / "qdq.onnx")
    before = source.read_bytes()
    output = tmp_path / "out.onnx"
    result = run_cli("convert", source, "-o", output, "--allow-qdq")
    assert result.exit_code == 0, result.stderr
    assert source.read_bytes() == before
    original, converted = qdq_model(opset), onnx.load(str(output))
    onnx.checker.check_model(converted, full_check=True)
    for name in ("q_x", "dq_x", "dq_w"):
        old = next(n for n in original.graph.node if n.name == name)
        new = next(n for n in converted.graph.node if n.name == name)
        assert list(new.input) == list(old.input), f"{name}: quantized path rewired"
    old_inits = {t.name: t for t in original.graph.initializer}
    new_inits = {t.name: t for t in converted.graph.initializer}
    for name in ("x_zero", "W_q", "W_zero"):
        assert new_inits[name] == old_inits[name], f"{name}: quantized data changed"
    for name in ("x_scale", "W_scale"):
        if opset < 19:  # QuantizeLinear/DequantizeLinear-13 take float32 scales only
            assert new_inits[name] == old_inits[name], f"{name} changed"
        else:  # from opset 19 the schema also admits float16 scales: same value, a schema type
            assert new_inits[name].data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)
            assert numpy_helper.to_array(new_inits[name]) == numpy_helper.to_array(old_inits[name])
    x = np.random.default_rng(2).uniform(-3, 3, (2, 4)).astype(np.float32)
    want = ort.InferenceSession(before, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # Measured on ORT's CPU EP (understates FP16 error). MatMul in FP16: |y| < 10, rtol 1e-2.
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)


# --------------------------------------------------------------------------- output path


def test_output_folder_missing(run_cli, tmp_path: pathlib.Path) -> None:
    source = save(tiny_fp32_model(), tmp_path / "model.onnx")
    before = folder_state(tmp_path)
    result = run_cli("convert", source, "-o", tmp_path / "nowhere" / "out.onnx")
    assert_refused(result, ExitCode.OUTPUT_NOT_WRITABLE, "does not exist")
    assert folder_state(tmp_path) == before


def test_output_is_a_folder(run_cli, tmp_path: pathlib.Path) -> None:
    source = save(tiny_fp32_model(), tmp_path / "model.onnx")
    (tmp_path / "out.onnx").mkdir()
    before = folder_state(tmp_path)
    result = run_cli("convert", source, "-o", tmp_path / "out.onnx")
    assert_refused(result, ExitCode.OUTPUT_NOT_WRITABLE, "out.onnx")
    assert folder_state(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "out.onnx"]


@contextlib.contextmanager
def mounted_tmpfs(folder: pathlib.Path, size: str, read_only: bool = False):
    """A real small (or read-only) filesystem: needs root and mount permission, else skip."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or done.returncode})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_output_folder_not_writable(run_cli, tmp_path: pathlib.Path) -> None:
    source = save(tiny_fp32_model(), tmp_path / "model.onnx")
    before = source.read_bytes()
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        context = contextlib.nullcontext(locked)
    else:  # root ignores permission bits: use a read-only filesystem
        context = mounted_tmpfs(tmp_path / "locked", "64k", read_only=True)
    with context as locked:
        result = run_cli("convert", source, "-o", locked / "out.onnx")
        assert_refused(result, ExitCode.OUTPUT_NOT_WRITABLE, "writable")
        assert list(locked.iterdir()) == []
    assert source.read_bytes() == before


def test_output_equal_to_input_is_refused(run_cli, tmp_path: pathlib.Path) -> None:
    source = save(tiny_fp32_model(), tmp_path / "model.onnx")
    before = folder_state(tmp_path)
    assert_refused(run_cli("convert", source, "-o", source), ExitCode.OUTPUT_IS_INPUT, "--overwrite")
    (tmp_path / "alias.onnx").symlink_to(source)
    before = folder_state(tmp_path)
    assert_refused(run_cli("convert", source, "-o", tmp_path / "alias.onnx"), ExitCode.OUTPUT_IS_INPUT)
    assert folder_state(tmp_path) == before


def test_output_equal_to_input_with_overwrite(run_cli, tmp_path: pathlib.Path) -> None:
    source = save(tiny_fp32_model(), tmp_path / "model.onnx")
    result = run_cli("convert", source, "-o", source, "--overwrite")
    assert result.exit_code == 0, result.stderr
    converted = onnx.load(str(source))
    onnx.checker.check_model(converted, full_check=True)
    assert converted.graph.initializer[0].data_type == TensorProto.FLOAT16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"], "temporary file left behind"


@pytest.mark.parametrize("error_number", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_during_write_simulated(run_cli, tmp_path: pathlib.Path, monkeypatch, error_number) -> None:
    """The writer (ir.save, or io/model_io's embedded-weights writer) writes part of the file,
    then the disk fills up."""
    from mpcompile.io import model_io

    def fill_up(path: str) -> None:
        with open(path, "r+b") as partial:
            partial.truncate(max(1, os.path.getsize(path) // 2))
        raise OSError(error_number, os.strerror(error_number), str(path))

    real_save, real_embedded = ir.save, model_io.write_embedded

    def failing_save(model, path, *args, **kwargs):
        real_save(model, path, *args, **kwargs)
        fill_up(path)

    def failing_embedded(skeleton, placeholder, output, *args, **kwargs):
        real_embedded(skeleton, placeholder, output, *args, **kwargs)
        output.flush()
        fill_up(output.name)

    monkeypatch.setattr(ir, "save", failing_save)
    monkeypatch.setattr(model_io, "write_embedded", failing_embedded)
    source = save(tiny_fp32_model(), tmp_path / "model.onnx")
    refused_without_side_effects(run_cli, tmp_path, source, ExitCode.DISK_FULL, "space")


def wide_model() -> onnx.ModelProto:
    """The tiny model with a 256x256 weight: 256 KiB in FP32, 128 KiB in FP16."""
    model = tiny_fp32_model()
    big = numpy_helper.from_array(np.ones((256, 256), np.float32), "W")  # 256 KiB in, 128 KiB out
    model.graph.initializer[0].CopyFrom(big)
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 256]))
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.zeros(256, np.float32), "b"))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 256]))
    return model


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
def test_disk_full_on_a_real_small_filesystem(run_cli, tmp_path: pathlib.Path, external: bool) -> None:
    source = save(wide_model(), tmp_path / "model.onnx")
    before = source.read_bytes()
    flags = ["--external-data"] if external else []
    with mounted_tmpfs(tmp_path / "small", "64k") as small:
        result = run_cli("convert", source, "-o", small / "out.onnx", *flags)
        assert_refused(result, ExitCode.DISK_FULL, "space")
        assert list(small.iterdir()) == [], "partial output, temporary or .data file left behind"
    assert source.read_bytes() == before


# --------------------------------------------------------------------------- debugging


def test_debug_shows_the_traceback(tmp_path: pathlib.Path) -> None:
    from mpcompile.cli import main
    from mpcompile.errors import InputNotFoundError

    with pytest.raises(InputNotFoundError):
        main(["--debug", "convert", str(tmp_path / "absent.onnx"), "-o", str(tmp_path / "out.onnx")])


def test_cli_process_prints_one_line_and_exit_code(tmp_path: pathlib.Path) -> None:
    """The real entry point, in its own process: no traceback, the documented code."""
    source = tmp_path / "empty.onnx"
    source.touch()
    done = subprocess.run(
        [sys.executable, "-m", "mpcompile.cli", "convert", str(source), "-o", str(tmp_path / "o.onnx")],
        capture_output=True,
        text=True,
        cwd=pathlib.Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == int(ExitCode.NOT_ONNX)
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_output_gets_the_usual_file_mode(run_cli, tmp_path: pathlib.Path) -> None:
    """The atomic write goes through a private temporary file; the result must not stay 0600."""
    source = save(tiny_fp32_model(), tmp_path / "model.onnx")
    output = tmp_path / "out.onnx"
    assert run_cli("convert", source, "-o", output).exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    assert output.stat().st_mode & 0o777 == 0o666 & ~umask


def test_overwrite_a_model_with_external_data(run_cli, tmp_path: pathlib.Path) -> None:
    """Replacing the input in place while its weights live in model.onnx.data, the very file
    the output's weights go to."""
    import onnxruntime as ort

    model = wide_model()
    onnx.save(model, str(tmp_path / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    source = tmp_path / "model.onnx"
    x = np.random.default_rng(3).uniform(-1, 1, (2, 256)).astype(np.float32)
    want = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    result = run_cli("convert", source, "-o", source, "--overwrite", "--external-data")
    assert result.exit_code == 0, result.stderr
    # The weights went to a data file named by their content; the input's model.onnx.data, named
    # by the replaced model, was removed after the new model was in place.
    model_file, data_file = sorted(p.name for p in tmp_path.iterdir())
    assert model_file == "model.onnx" and re.fullmatch(r"model\.onnx\.[0-9a-f]{12}\.data", data_file)
    onnx.checker.check_model(str(source), full_check=True)
    got = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # CPU EP (understates FP16 error); 256-term dot products of |x| <= 1 and weights of 1.
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=0.5)


# --------------------------------------------------------------------------- output over input (issue 16)


def external_weights_model(folder: pathlib.Path, location: str = "model.onnx.data") -> pathlib.Path:
    """``folder``/model.onnx, its 256x256 weight in the external file ``location``."""
    source = folder / "model.onnx"
    onnx.save(wide_model(), str(source), save_as_external_data=True, location=location, size_threshold=1024)
    return source


def _named_output_data(folder: pathlib.Path) -> tuple[pathlib.Path, list[str]]:
    """The input itself names out.onnx.data, the output's external-data file."""
    return external_weights_model(folder, "out.onnx.data"), []


def _hardlinked_output_data(folder: pathlib.Path) -> tuple[pathlib.Path, list[str]]:
    source = external_weights_model(folder)
    os.link(folder / "model.onnx.data", folder / "out.onnx.data")
    return source, []


def _symlinked_output_data(folder: pathlib.Path) -> tuple[pathlib.Path, list[str]]:
    source = external_weights_model(folder)
    (folder / "out.onnx.data").symlink_to(folder / "model.onnx.data")
    return source, []


DATA_LOSS_SETUPS = {
    "input-names-out.onnx.data": _named_output_data,
    "out.onnx.data-hardlinked-to-the-input-weights": _hardlinked_output_data,
    "out.onnx.data-symlinked-to-the-input-weights": _symlinked_output_data,
}


@pytest.mark.parametrize(
    "flags", [(), ("--external-data",), ("--overwrite",)], ids=["plain", "external", "overwrite"]
)
@pytest.mark.parametrize("setup", sorted(DATA_LOSS_SETUPS))
def test_output_weights_never_replace_the_input_weights(
    run_cli, tmp_path: pathlib.Path, setup, flags
) -> None:
    """Issue 16: the output's .data file is the input's weights file (by name, hardlink or
    symlink); --overwrite does not allow it, since the input model stays and needs them."""
    source, _ = DATA_LOSS_SETUPS[setup](tmp_path)
    result = refused_without_side_effects(
        run_cli,
        tmp_path,
        source,
        ExitCode.OUTPUT_IS_INPUT,
        "out.onnx.data",
        "external-data",
        extra_args=flags,
    )
    assert str(tmp_path) in result.stderr


def test_output_weights_never_replace_the_input_weights_under_auto(run_cli, tmp_path: pathlib.Path) -> None:
    source, _ = _named_output_data(tmp_path)
    refused_without_side_effects(
        run_cli, tmp_path, source, ExitCode.OUTPUT_IS_INPUT, "out.onnx.data", extra_args=("--auto",)
    )


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_output_model_is_the_input_weights_file(run_cli, tmp_path: pathlib.Path, overwrite: bool) -> None:
    source = external_weights_model(tmp_path)
    before = folder_state(tmp_path)
    flags = ["--overwrite"] if overwrite else []
    result = run_cli("convert", source, "-o", tmp_path / "model.onnx.data", *flags)
    assert_refused(result, ExitCode.OUTPUT_IS_INPUT, "model.onnx.data", "external-data")
    assert folder_state(tmp_path) == before


def test_output_hardlinked_to_the_input_is_refused(run_cli, tmp_path: pathlib.Path) -> None:
    source = save(tiny_fp32_model(), tmp_path / "model.onnx")
    os.link(source, tmp_path / "out.onnx")
    refused_without_side_effects(run_cli, tmp_path, source, ExitCode.OUTPUT_IS_INPUT, "--overwrite")


def test_overwrite_through_a_symlink_reads_the_weights_first(run_cli, tmp_path: pathlib.Path) -> None:
    """--overwrite where -o is a symlink to the input: the input's weights are read before the
    files are replaced, so the result computes the same function."""
    import onnxruntime as ort

    source = external_weights_model(tmp_path)
    alias = tmp_path / "alias.onnx"
    alias.symlink_to(source)
    x = np.random.default_rng(4).uniform(-1, 1, (2, 256)).astype(np.float32)
    want = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    result = run_cli("convert", source, "-o", alias, "--overwrite")
    assert result.exit_code == 0, result.stderr
    onnx.checker.check_model(str(alias), full_check=True)
    got = ort.InferenceSession(str(alias), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # CPU EP (understates FP16 error); 256-term dot products of |x| <= 1 and weights of 1.
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=0.5)


def _report_over(folder: pathlib.Path, target: str) -> list[str]:
    """convert --report report.html, where report.html is a symlink to ``target``."""
    source = external_weights_model(folder)
    (folder / "report.html").symlink_to(folder / target)
    return ["convert", str(source), "-o", str(folder / "out.onnx"), "--report", str(folder / "report.html")]


REPORT_OVER_MODEL_COMMANDS = {
    "convert --report over the input model": lambda folder: _report_over(folder, "model.onnx"),
    "convert --report over the input weights": lambda folder: _report_over(folder, "model.onnx.data"),
    "report -o over the model": lambda folder: [
        "report",
        str(external_weights_model(folder)),
        "--format",
        "json",
        "-o",
        str(folder / "model.onnx"),
    ],
    "report -o over the --compare weights": lambda folder: [
        "report",
        str(save(tiny_fp32_model(), folder / "other.onnx")),
        "--compare",
        str(external_weights_model(folder)),
        "--format",
        "json",
        "-o",
        str(folder / "model.onnx.data"),
    ],
    "validate --save over the converted model": lambda folder: [
        "validate",
        str(external_weights_model(folder)),
        str(save(tiny_fp32_model(), folder / "converted.onnx")),
        "--save",
        str(folder / "converted.onnx"),
    ],
}


@pytest.mark.parametrize("case", sorted(REPORT_OVER_MODEL_COMMANDS))
def test_reports_and_results_never_replace_a_model(run_cli, tmp_path: pathlib.Path, case: str) -> None:
    argv = REPORT_OVER_MODEL_COMMANDS[case](tmp_path)
    before = folder_state(tmp_path)
    assert_refused(run_cli(*argv), ExitCode.OUTPUT_IS_INPUT, argv[-1])
    assert folder_state(tmp_path) == before


# --------------------------------------------------------------------------- external data in every tensor (issue 16)

W_SHAPE = [4, 3]  # the tiny model's weight: 48 bytes of FP32


def external_tensor(
    name: str, location: str, fields: dict[str, str | None] | None = None
) -> onnx.TensorProto:
    """A [4, 3] FP32 tensor whose bytes live at ``location`` (``fields`` add or replace entries;
    None leaves one out)."""
    tensor = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=W_SHAPE)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, "offset": "0", "length": "48", **(fields or {})}.items():
        if value is None:  # left out
            continue
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def sparse_external(location: str, part: str) -> onnx.SparseTensorProto:
    """A sparse [4, 3] tensor with 12 stored values; ``part`` (values or indices) is external."""
    values = numpy_helper.from_array(np.ones(12, np.float32), "S")
    indices = numpy_helper.from_array(np.arange(12, dtype=np.int64), "S_indices")
    if part == "values":
        values = external_tensor("S", location)
        values.ClearField("dims")
        values.dims.extend([12])
    else:
        indices = external_tensor("S_indices", location, {"length": "96"})
        indices.data_type = TensorProto.INT64
        indices.ClearField("dims")
        indices.dims.extend([12])
    return helper.make_sparse_tensor(values, indices, W_SHAPE)


def weight_from(
    node: onnx.NodeProto, extra_inputs=(), initializers=(), functions=(), opsets=()
) -> onnx.ModelProto:
    """y = x @ W where W is made by ``node`` (whose output is W_made)."""
    nodes = [node, helper.make_node("MatMul", ["x", "W_made"], ["y"], name="matmul")]
    graph = helper.make_graph(
        nodes,
        "holder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]), *extra_inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        list(initializers),
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), *opsets], ir_version=8, functions=list(functions)
    )
    return model


def branch(name: str, body: list[onnx.NodeProto], initializers=()) -> onnx.GraphProto:
    return helper.make_graph(
        body,
        name,
        [],
        [helper.make_tensor_value_info(f"{name}_w", TensorProto.FLOAT, W_SHAPE)],
        list(initializers),
    )


def if_node(then_graph: onnx.GraphProto) -> onnx.NodeProto:
    ones = numpy_helper.from_array(np.ones(W_SHAPE, np.float32), "ones")
    else_graph = branch("else", [helper.make_node("Constant", [], ["else_w"], value=ones, name="else_c")])
    return helper.make_node(
        "If", ["flag"], ["W_made"], then_branch=then_graph, else_branch=else_graph, name="if"
    )


FLAG = helper.make_tensor_value_info("flag", TensorProto.BOOL, [])


def _constant(location: str) -> onnx.ModelProto:
    return weight_from(
        helper.make_node("Constant", [], ["W_made"], value=external_tensor("c", location), name="c")
    )


def _sparse_constant(part: str) -> Callable[[str], onnx.ModelProto]:
    def build(location: str) -> onnx.ModelProto:
        node = helper.make_node(
            "Constant", [], ["W_made"], sparse_value=sparse_external(location, part), name="c"
        )
        return weight_from(node)

    return build


def _subgraph_initializer(location: str) -> onnx.ModelProto:
    then = branch(
        "then",
        [helper.make_node("Identity", ["Wt"], ["then_w"], name="then_id")],
        [external_tensor("Wt", location)],
    )
    return weight_from(if_node(then), [FLAG])


def _subgraph_constant(location: str) -> onnx.ModelProto:
    constant = helper.make_node(
        "Constant", [], ["then_w"], value=external_tensor("c", location), name="then_c"
    )
    return weight_from(if_node(branch("then", [constant])), [FLAG])


def _nested_subgraph_constant(location: str) -> onnx.ModelProto:
    constant = helper.make_node(
        "Constant", [], ["then_w"], value=external_tensor("c", location), name="deep_c"
    )
    inner = if_node(branch("then", [constant]))
    inner.output[0] = "outer_then_w"
    for attribute in inner.attribute:  # rename the inner branches' outputs away from the outer ones
        attribute.g.name = f"inner_{attribute.g.name}"
    outer = branch("then", [inner])
    outer.output[0].name = "outer_then_w"
    return weight_from(if_node(outer), [FLAG])


def _function_constant(location: str) -> onnx.ModelProto:
    body = [helper.make_node("Constant", [], ["w"], value=external_tensor("c", location), name="fc")]
    function = helper.make_function("local", "MakeW", [], ["w"], body, [helper.make_opsetid("", 17)])
    node = helper.make_node("MakeW", [], ["W_made"], domain="local", name="call")
    return weight_from(node, functions=[function], opsets=[helper.make_opsetid("local", 1)])


def _function_attribute_default(location: str) -> onnx.ModelProto:
    body = [helper.make_node("Constant", [], ["w"], name="fc")]
    body[0].attribute.append(
        onnx.AttributeProto(name="value", ref_attr_name="init", type=onnx.AttributeProto.TENSOR)
    )
    function = helper.make_function("local", "MakeW", [], ["w"], body, [helper.make_opsetid("", 17)])
    function.attribute_proto.append(helper.make_attribute("init", external_tensor("d", location)))
    node = helper.make_node("MakeW", [], ["W_made"], domain="local", name="call")
    return weight_from(node, functions=[function], opsets=[helper.make_opsetid("local", 1)])


def _sparse_initializer(part: str) -> Callable[[str], onnx.ModelProto]:
    def build(location: str) -> onnx.ModelProto:
        model = weight_from(helper.make_node("Identity", ["S"], ["W_made"], name="id"))
        model.graph.sparse_initializer.append(sparse_external(location, part))
        return model

    return build


def _initializer(location: str) -> onnx.ModelProto:
    return weight_from(
        helper.make_node("Identity", ["W"], ["W_made"], name="id"),
        initializers=[external_tensor("W", location)],
    )


TENSOR_PLACES: dict[str, Callable[[str], onnx.ModelProto]] = {
    "main-graph initializer": _initializer,
    "Constant value": _constant,
    "Constant sparse_value values": _sparse_constant("values"),
    "Constant sparse_value indices": _sparse_constant("indices"),
    "sparse initializer values": _sparse_initializer("values"),
    "sparse initializer indices": _sparse_initializer("indices"),
    "If-branch initializer": _subgraph_initializer,
    "If-branch Constant": _subgraph_constant,
    "Constant two subgraphs deep": _nested_subgraph_constant,
    "local function Constant": _function_constant,
    "local function attribute default": _function_attribute_default,
}


@contextlib.contextmanager
def fifo_tripwire(path: pathlib.Path):
    """A FIFO at ``path``: opening it to read would block for good. A watcher unblocks such a
    reader (and records it) by opening the write end, which only succeeds while one waits."""
    os.mkfifo(path)
    tripped: list[bool] = []
    done = threading.Event()

    def watch() -> None:
        _UNAUDITED_THREADS.add(threading.get_ident())
        while not done.wait(0.02):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # ENXIO: nobody has it open for reading
                continue
            tripped.append(True)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield tripped
    finally:
        done.set()
        watcher.join()


def test_fifo_tripwire_catches_a_reader(tmp_path: pathlib.Path) -> None:
    """Guards the test below: a read of the FIFO is unblocked and recorded."""
    with fifo_tripwire(tmp_path / "secret.bin") as tripped, open(tmp_path / "secret.bin", "rb") as handle:
        assert handle.read() == b""
    assert tripped


@pytest.mark.parametrize("command", ["convert", "report"])
@pytest.mark.parametrize("place", sorted(TENSOR_PLACES))
def test_external_data_outside_the_folder_is_never_opened(
    run_cli, tmp_path: pathlib.Path, place: str, command: str
) -> None:
    """Wherever the tensor lives, a location outside the model's folder is refused (exit 5) and
    never opened: the outside file is a FIFO that would block the reader, and Python's audit
    hook records every open."""
    folder, outside = tmp_path / "model", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    source = save(TENSOR_PLACES[place]("../outside/secret.bin"), folder / "model.onnx")
    before = folder_state(folder)
    with fifo_tripwire(outside / "secret.bin") as tripped, opened_paths() as opened:
        argv = ["convert", source, "-o", folder / "out.onnx"] if command == "convert" else ["report", source]
        result = run_cli(*argv)
    assert_refused(result, ExitCode.EXTERNAL_DATA, "../outside/secret.bin", "escapes")
    assert folder_state(folder) == before
    assert not tripped, "the FIFO outside the model's folder was opened"
    assert not [path for path in opened if path.startswith(str(outside))]


@pytest.mark.parametrize("place", sorted(TENSOR_PLACES))
def test_external_data_inside_the_folder_is_accepted_in_every_place(
    tmp_path: pathlib.Path, place: str
) -> None:
    """The control for the test above: the same models with the weights beside them load."""
    from mpcompile.errors import InvalidModelError
    from mpcompile.io.model_io import load_model

    (tmp_path / "w.bin").write_bytes(np.ones(24, np.float32).tobytes())
    source = save(TENSOR_PLACES[place]("w.bin"), tmp_path / "model.onnx")
    if "sparse" in place:  # onnx-ir 1.1 holds no sparse tensors: refused once the location passed
        with pytest.raises(InvalidModelError, match="sparse tensors are not supported"):
            load_model(source)
        return
    model = load_model(source)
    assert str((tmp_path / "w.bin").resolve()) in model.meta["mpcompile.input_files"]


# --------------------------------------------------------------------------- malformed external data (issue 16)


def _with_fields(fields: dict[str, str], data: bytes = b"\0" * 64) -> Callable[[pathlib.Path], pathlib.Path]:
    """The tiny model with W in weights.bin (``data``), its external_data entries ``fields``."""

    def build(folder: pathlib.Path) -> pathlib.Path:
        model = tiny_fp32_model()
        weight = external_tensor("W", "weights.bin", fields)
        model.graph.initializer[0].CopyFrom(weight)
        (folder / "weights.bin").write_bytes(data)
        return save(model, folder / "model.onnx")

    return build


def _duplicate_location(folder: pathlib.Path) -> pathlib.Path:
    source = _with_fields({})(folder)
    model = onnx.load(str(source), load_external_data=False)
    entry = model.graph.initializer[0].external_data.add()
    entry.key, entry.value = "location", "../secret.bin"
    return save(model, source)


def _located(location: str, prepare: Callable[[pathlib.Path], None] | None = None):
    def build(folder: pathlib.Path) -> pathlib.Path:
        if prepare is not None:
            prepare(folder)
        return external_model(folder, location)

    return build


def _symlink_loop(folder: pathlib.Path) -> None:
    (folder / "loop_a").symlink_to("loop_b")
    (folder / "loop_b").symlink_to("loop_a")


def _inside_fifo(folder: pathlib.Path) -> None:
    os.mkfifo(folder / "pipe.bin")


EXTERNAL_DATA_CASES: dict[str, tuple[Callable[[pathlib.Path], pathlib.Path], tuple[str, ...]]] = {
    "offset negative": (_with_fields({"offset": "-1"}), ("offset", "'-1'")),
    "offset float": (_with_fields({"offset": "0.0"}), ("offset", "'0.0'")),
    "offset exponent": (_with_fields({"offset": "1e1"}), ("offset",)),
    "offset space-padded": (_with_fields({"offset": " 0"}), ("offset", "' 0'")),
    "offset with a sign": (_with_fields({"offset": "+0"}), ("offset",)),
    "offset with an underscore": (_with_fields({"offset": "0_0"}), ("offset",)),
    "offset in non-ASCII digits": (_with_fields({"offset": "\u0660"}), ("offset",)),
    "offset empty": (_with_fields({"offset": ""}), ("offset",)),
    "offset past the end": (_with_fields({"offset": "32"}), ("shorter",)),
    "length non-integer": (_with_fields({"length": "forty-eight"}), ("length",)),
    "length negative": (_with_fields({"length": "-48"}), ("length",)),
    "length space-padded": (_with_fields({"length": "48 "}), ("length",)),
    "length zero": (_with_fields({"length": "0"}), ("length 0", "48 bytes")),
    "length smaller than the tensor": (_with_fields({"length": "47"}), ("length 47",)),
    "length larger than the tensor": (_with_fields({"length": "52"}), ("length 52",)),
    "data file empty, no length": (_with_fields({"length": None}, b""), ("shorter",)),
    "data file shorter than dtype x dims, no length": (
        _with_fields({"length": None}, b"\0" * 40),
        ("shorter",),
    ),
    "key given twice": (_duplicate_location, ("location", "twice")),
    "no location": (_with_fields({"location": ""}), ("without a location",)),
    "location with a NUL byte": (_located("weights\0.bin"), ("NUL",)),
    "location over-long component": (_located("w" * 300 + ".bin"), ("too long",)),
    "location over-long path": (_located("/".join(["d" * 200] * 30)), ("too long",)),
    "location a symlink loop": (_located("loop_a", _symlink_loop), ("loop_a", "cannot be resolved")),
    "location a folder": (_located("sub", lambda folder: (folder / "sub").mkdir()), ("not a regular file",)),
    "location a FIFO": (_located("pipe.bin", _inside_fifo), ("not a regular file",)),
    "location the model folder itself": (_located("."), ("not a regular file",)),
    "location through a missing folder": (
        _located("sub/../weights.bin", lambda folder: (folder / "weights.bin").write_bytes(b"\0" * 64)),
        ("not found",),
    ),
}


@pytest.mark.parametrize("case", sorted(EXTERNAL_DATA_CASES))
def test_malformed_external_data_is_refused(run_cli, tmp_path: pathlib.Path, case: str) -> None:
    build, mentions = EXTERNAL_DATA_CASES[case]
    folder = tmp_path / "model"
    folder.mkdir()
    source = build(folder)
    opened: list[str] = []
    refused_without_side_effects(run_cli, folder, source, ExitCode.EXTERNAL_DATA, *mentions, opened=opened)
    assert not [
        path for path in opened if not path.startswith(str(folder)) and path.startswith(str(tmp_path))
    ]


# --------------------------------------------------------------------------- malformed graphs (issue 16)


def mutated(change: Callable[[onnx.ModelProto], None], base: Callable[[], onnx.ModelProto] = tiny_fp32_model):
    """A builder: ``base()`` changed in place by ``change``."""

    def build() -> onnx.ModelProto:
        model = base()
        change(model)
        return model

    return build


def if_model() -> onnx.ModelProto:
    """y = If(flag, then: Relu(x @ W + b) path's h, else: Neg(h)) on the tiny model's h."""
    model = tiny_fp32_model()
    then = helper.make_graph(
        [helper.make_node("Relu", ["a"], ["t"], name="then_relu")],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 3])],
    )
    otherwise = helper.make_graph(
        [helper.make_node("Neg", ["a"], ["e"], name="else_neg")],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 3])],
    )
    model.graph.node[2].CopyFrom(
        helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=otherwise, name="if")
    )
    model.graph.input.append(helper.make_tensor_value_info("flag", TensorProto.BOOL, []))
    return model


def function_model() -> onnx.ModelProto:
    """The tiny model with Relu moved into a local function ``local::MyRelu``."""
    model = tiny_fp32_model()
    body = [helper.make_node("Relu", ["i"], ["o"], name="inner_relu")]
    function = helper.make_function("local", "MyRelu", ["i"], ["o"], body, [helper.make_opsetid("", 17)])
    model.functions.append(function)
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.graph.node[2].CopyFrom(helper.make_node("MyRelu", ["a"], ["y"], domain="local", name="relu"))
    return model


def _set(path: str, value) -> Callable[[onnx.ModelProto], None]:
    """A change setting the attribute ``path`` (dots, [index]) of the model to ``value``."""

    def change(model: onnx.ModelProto) -> None:
        *parents, last = path.split(".")
        target = model
        for part in parents:
            name, _, index = part.partition("[")
            target = getattr(target, name)
            if index:
                target = target[int(index.rstrip("]"))]
        getattr(target, last).__class__  # noqa: B018 (fails early on a typo)
        if isinstance(value, list):
            field = getattr(target, last)
            del field[:]
            field.extend(value)
        else:
            setattr(target, last, value)

    return change


def _append_value_info(info: onnx.ValueInfoProto) -> Callable[[onnx.ModelProto], None]:
    return lambda model: model.graph.value_info.append(info)


def _complex_output(model: onnx.ModelProto) -> None:
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.COMPLEX64, [1]))
    model.graph.initializer.append(helper.make_tensor("z", TensorProto.COMPLEX64, [1], [1 + 2j]))


def _complex_constant(model: onnx.ModelProto) -> None:
    value = helper.make_tensor("zc", TensorProto.COMPLEX128, [1], [1j])
    model.graph.node.append(helper.make_node("Constant", [], ["z"], value=value, name="complex_constant"))
    model.graph.node.append(helper.make_node("Shape", ["z"], ["z_shape"], name="shape"))
    model.graph.output.append(helper.make_tensor_value_info("z_shape", TensorProto.INT64, [1]))


def _cast_to_complex(model: onnx.ModelProto) -> None:
    model.graph.node.append(
        helper.make_node("Cast", ["y"], ["z"], to=TensorProto.COMPLEX64, name="to_complex")
    )
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.COMPLEX64, [2, 3]))


def _duplicate_function(model: onnx.ModelProto) -> None:
    model.functions.append(model.functions[0])


def _then_branch(model: onnx.ModelProto) -> onnx.GraphProto:
    return next(attribute.g for attribute in model.graph.node[2].attribute if attribute.name == "then_branch")


def _subgraph_shadows_outer(model: onnx.ModelProto) -> None:
    _then_branch(model).node[0].output[0] = "h"
    _then_branch(model).output[0].name = "h"


def _subgraph_produces_twice(model: onnx.ModelProto) -> None:
    branch = _then_branch(model)
    branch.node.append(helper.make_node("Relu", ["a"], ["t"], name="then_relu_again"))


def _subgraph_reads_undefined(model: onnx.ModelProto) -> None:
    _then_branch(model).node[0].input[0] = "nowhere"


def _subgraph_self_loop(model: onnx.ModelProto) -> None:
    _then_branch(model).node[0].input[0] = "t"


def _unsorted(model: onnx.ModelProto) -> None:
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend([nodes[1], nodes[0], nodes[2]])


def _three_node_cycle(model: onnx.ModelProto) -> None:
    model.graph.node[0].input[0] = "y"
    model.graph.node[0].input[1] = "W"


STRUCTURE_CASES: dict[str, tuple[Callable[[], onnx.ModelProto], tuple[str, ...]]] = {
    "self-loop": (mutated(_set("graph.node[2].input", ["y"])), ("'relu'", "its own output", "cycle")),
    "cycle": (mutated(_three_node_cycle), ("'matmul'", "cycle")),
    "nodes out of order": (mutated(_unsorted), ("'add'", "topological order")),
    "read of an undefined value": (mutated(_set("graph.node[1].input", ["nowhere", "b"])), ("'nowhere'",)),
    "two producers of one value": (mutated(_set("graph.node[1].output", ["h"])), ("'h'", "defined twice")),
    "node output is a graph input": (mutated(_set("graph.node[0].output", ["x"])), ("'x'", "graph input")),
    "node output is an initializer": (mutated(_set("graph.node[0].output", ["b"])), ("'b'", "initializer")),
    "duplicate graph input": (
        mutated(lambda m: m.graph.input.append(m.graph.input[0])),
        ("'x'", "defined twice"),
    ),
    "duplicate initializer": (
        mutated(lambda m: m.graph.initializer.append(m.graph.initializer[1])),
        ("'b'", "defined twice"),
    ),
    "graph output nothing produces": (
        mutated(_set("graph.output[0].name", "nowhere")),
        ("'nowhere'", "not produced"),
    ),
    "required output without a name": (mutated(_set("graph.node[2].output", [""])), ("'relu'", "output 0")),
    "graph output with an empty name": (mutated(_set("graph.output[0].name", "")), ("empty name",)),
    "node with fewer inputs than its schema allows": (
        mutated(lambda m: m.graph.node[2].ClearField("input")),
        ("'relu'", "0 inputs", "allows 1"),
    ),
    "node with more outputs than its schema allows": (
        mutated(lambda m: m.graph.node[2].output.append("extra")),
        ("'relu'", "2 outputs"),
    ),
    "required input without a name": (mutated(_set("graph.node[1].input", ["h", ""])), ("'add'", "input 1")),
    "node without op_type": (mutated(_set("graph.node[1].op_type", "")), ("'add'", "op_type")),
    "graph input without a type": (
        mutated(lambda m: m.graph.input[0].ClearField("type")),
        ("'x'", "no type"),
    ),
    "negative initializer dim": (mutated(_set("graph.initializer[0].dims", [-4, 3])), ("'W'", "negative")),
    "initializer raw_data shorter than its dims": (
        mutated(_set("graph.initializer[0].dims", [5, 3])),
        ("'W'", "48 bytes", "need 60"),
    ),
    "initializer float_data not matching its dims": (
        mutated(
            lambda m: m.graph.initializer[1].CopyFrom(
                onnx.TensorProto(name="b", data_type=TensorProto.FLOAT, dims=[4], float_data=[1, 2, 3])
            )
        ),
        ("'b'", "3 values"),
    ),
    "UNDEFINED input dtype": (
        mutated(_set("graph.input[0].type.tensor_type.elem_type", 0)),
        ("'x'", "UNDEFINED"),
    ),
    "unknown input dtype": (
        mutated(_set("graph.input[0].type.tensor_type.elem_type", 99)),
        ("'x'", "unknown"),
    ),
    "UNDEFINED initializer dtype": (mutated(_set("graph.initializer[1].data_type", 0)), ("'b'", "UNDEFINED")),
    "unknown initializer dtype": (mutated(_set("graph.initializer[1].data_type", 99)), ("'b'", "unknown")),
    "UNDEFINED value_info dtype": (
        mutated(_append_value_info(helper.make_tensor_value_info("h", 0, [2, 3]))),
        ("'h'", "UNDEFINED"),
    ),
    "unknown value_info dtype": (
        mutated(_append_value_info(helper.make_tensor_value_info("h", 99, [2, 3]))),
        ("'h'", "unknown"),
    ),
    "value_info dtype other than the producer's": (
        mutated(_append_value_info(helper.make_tensor_value_info("h", TensorProto.INT64, [2, 3]))),
        ("'h'", "tensor(int64)", "tensor(float)"),
    ),
    "value_info a sequence where a tensor is produced": (
        mutated(_append_value_info(helper.make_tensor_sequence_value_info("h", TensorProto.FLOAT, [2, 3]))),
        ("'h'", "seq(tensor(float))"),
    ),
    "value_info contradicting the initializer": (
        mutated(_append_value_info(helper.make_tensor_value_info("W", TensorProto.INT64, [4, 3]))),
        ("'W'", "tensor(int64)", "tensor(float)"),
    ),
    "graph output contradicting the graph input it passes": (
        mutated(
            lambda m: m.graph.output.append(helper.make_tensor_value_info("x", TensorProto.INT64, [2, 4]))
        ),
        ("'x'", "tensor(int64)"),
    ),
    "complex graph output": (mutated(_complex_output), ("'z'", "complex64")),
    "complex Constant": (mutated(_complex_constant), ("complex128",)),
    "Cast to complex": (mutated(_cast_to_complex), ("'z'", "complex64")),
    "Cast to UNDEFINED": (
        mutated(
            lambda m: m.graph.node.append(helper.make_node("Cast", ["y"], ["z"], to=0, name="to_nothing"))
        ),
        ("'to'", "'to_nothing'", "UNDEFINED"),
    ),
    "ai.onnx op that ONNX does not define": (
        mutated(_set("graph.node[2].op_type", "Relux")),
        ("'relu'", "Relux", "not an ONNX operator"),
    ),
    "subgraph value shadowing an outer one": (
        mutated(_subgraph_shadows_outer, if_model),
        ("'h'", "defined twice"),
    ),
    "subgraph producing a value twice": (
        mutated(_subgraph_produces_twice, if_model),
        ("'t'", "defined twice"),
    ),
    "subgraph reading an undefined value": (
        mutated(_subgraph_reads_undefined, if_model),
        ("'nowhere'", "'then'"),
    ),
    "subgraph self-loop": (mutated(_subgraph_self_loop, if_model), ("'then_relu'", "cycle")),
    "function body reading an undefined value": (
        mutated(_set("functions[0].node[0].input", ["nowhere"]), function_model),
        ("'nowhere'", "MyRelu"),
    ),
    "function output nothing produces": (
        mutated(_set("functions[0].output", ["missing"]), function_model),
        ("'missing'", "not produced"),
    ),
    "function defined twice": (mutated(_duplicate_function, function_model), ("MyRelu", "twice")),
}


def _run_on(command: str, source: pathlib.Path, folder: pathlib.Path) -> list:
    if command == "convert":
        return ["convert", source, "-o", folder / "out.onnx"]
    if command == "report":
        return ["report", source]
    return ["validate", source, source, "--runs", "0"]


# Refused by convert only: an audit needs neither ORT nor inferred types, and validate's own
# refusal of these (ONNX Runtime cannot load them) is one line that names no value.
CONVERT_ONLY_CASES = {
    "complex graph output",
    "complex Constant",
    "Cast to complex",
    "ai.onnx op that ONNX does not define",
    "value_info dtype other than the producer's",
    "value_info a sequence where a tensor is produced",
}


@pytest.mark.parametrize(
    ("case", "command"),
    [
        (case, command)
        for case in sorted(STRUCTURE_CASES)
        for command in ("convert", "report", "validate")
        if command == "convert" or case not in CONVERT_ONLY_CASES
    ],
)
def test_malformed_graph_is_refused_in_one_line(
    run_cli, tmp_path: pathlib.Path, case: str, command: str
) -> None:
    """Issue 16: each malformed graph is INVALID_MODEL with one line naming the node or value, for
    every command that reads models; nothing is written and nothing changes."""
    build, mentions = STRUCTURE_CASES[case]
    folder = tmp_path / "model"
    folder.mkdir()
    source = save(build(), folder / "model.onnx")
    before = folder_state(folder)
    with opened_paths() as opened:
        result = run_cli(*_run_on(command, source, folder))
    assert_refused(result, ExitCode.INVALID_MODEL, *mentions)
    assert folder_state(folder) == before
    assert not [
        path for path in opened if path.startswith(str(tmp_path)) and not path.startswith(str(folder))
    ]


def test_the_unmutated_models_of_the_structure_cases_convert(run_cli, tmp_path: pathlib.Path) -> None:
    """The control for the cases above: their base models convert, pass the checker and load in ORT."""
    import onnxruntime as ort

    for base in (tiny_fp32_model, if_model, function_model):
        source = save(base(), tmp_path / f"{base.__name__}.onnx")
        output = tmp_path / f"{base.__name__}.fp16.onnx"
        result = run_cli("convert", source, "-o", output)
        assert result.exit_code == 0, result.stderr
        onnx.checker.check_model(str(output), full_check=True)
        ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])


def test_duplicate_node_names_are_made_unique_with_a_note(run_cli, tmp_path: pathlib.Path) -> None:
    """ORT refuses "two nodes with same node name"; the names do not matter to the computation, so
    the output gets unique ones and a note says which changed."""
    import onnxruntime as ort

    model = tiny_fp32_model()
    for node in model.graph.node:
        node.name = "layer"
    source = save(model, tmp_path / "model.onnx")
    before = source.read_bytes()
    output = tmp_path / "out.onnx"
    result = run_cli("convert", source, "-o", output)
    assert result.exit_code == 0, result.stderr
    assert "made unique" in result.stdout and "'layer' -> 'layer_1'" in result.stdout
    assert source.read_bytes() == before
    converted = onnx.load(str(output))
    names = [node.name for node in converted.graph.node]
    assert len(names) == len(set(names)) and "layer" in names
    onnx.checker.check_model(converted, full_check=True)
    x = np.random.default_rng(5).standard_normal((2, 4)).astype(np.float32)
    weight, bias = (numpy_helper.to_array(tensor) for tensor in model.graph.initializer)
    want = np.maximum(x @ weight + bias, 0)  # ORT refuses the input itself, so numpy computes it
    got = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # CPU EP (understates FP16 error): a 4-term dot product of standard normals, rtol 1e-2.
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)


def _ir_with_two_producers_of_h() -> ir.Model:
    model = ir.from_proto(tiny_fp32_model())
    model.graph.node(1).outputs[0].name = "h"  # Add's output, named like MatMul's
    return model


API_CASES = {
    "cycle": (lambda: STRUCTURE_CASES["cycle"][0](), ("'matmul'", "cycle")),
    "nodes out of order": (
        lambda: STRUCTURE_CASES["nodes out of order"][0](),
        ("'add'", "topological order"),
    ),
    "two producers of one value": (
        lambda: STRUCTURE_CASES["two producers of one value"][0](),
        ("'h'", "twice"),
    ),
}
IR_CASES = {
    "cycle": (lambda: ir.from_proto(STRUCTURE_CASES["cycle"][0]()), ("'matmul'", "cycles")),
    "nodes out of order": (
        lambda: ir.from_proto(STRUCTURE_CASES["nodes out of order"][0]()),
        ("'add'", "topological order"),
    ),
    "two producers of one value": (_ir_with_two_producers_of_h, ("'h'", "twice")),
}


@pytest.mark.parametrize("kind", ["proto", "ir"])
@pytest.mark.parametrize("case", sorted(API_CASES))
def test_malformed_graph_is_refused_by_the_python_api(kind: str, case: str) -> None:
    """convert() of a ModelProto or an onnx_ir.Model gets the same structural checks as a path."""
    import mpcompile
    from mpcompile.errors import InvalidModelError

    build, mentions = (API_CASES if kind == "proto" else IR_CASES)[case]
    with pytest.raises(InvalidModelError) as raised:
        mpcompile.convert(build())
    for mention in mentions:
        assert mention.lower() in raised.value.message.lower()


@pytest.mark.parametrize("link", ["hardlink", "symlink"])
def test_training_conversion_never_writes_over_a_source_file(
    run_cli, tmp_path: pathlib.Path, link: str
) -> None:
    """convert --training into a folder whose checkpoint is a link to the source's (a copied
    artifact folder): refused before anything is written, even with --overwrite."""
    source, destination = tmp_path / "artifacts", tmp_path / "converted"
    source.mkdir()
    destination.mkdir()
    save(tiny_fp32_model(), source / "training_model.onnx")
    (source / "checkpoint").write_bytes(b"optimizer state")
    if link == "hardlink":
        os.link(source / "checkpoint", destination / "checkpoint")
    else:
        (destination / "checkpoint").symlink_to(source / "checkpoint")
    before = folder_state(tmp_path)
    result = run_cli("convert", "--training", source, "-o", destination, "--overwrite")
    assert_refused(result, ExitCode.OUTPUT_IS_INPUT, "checkpoint")
    assert folder_state(tmp_path) == before


def test_input_weights_with_several_hard_links_are_refused_before_reading(
    run_cli, tmp_path: pathlib.Path
) -> None:
    """onnx and onnx-ir refuse to read an external data file with more than one hard link (a
    hard-link attack guard): that failed mid-conversion as an internal error (exit 70)."""
    source = external_weights_model(tmp_path)
    os.link(tmp_path / "model.onnx.data", tmp_path / "elsewhere.bin")
    refused_without_side_effects(run_cli, tmp_path, source, ExitCode.EXTERNAL_DATA, "hard links")
    assert run_cli("report", source).exit_code == int(ExitCode.EXTERNAL_DATA)


@pytest.mark.parametrize("overwrite", [False, True], ids=["new-output", "overwrite"])
def test_external_data_output_gets_the_usual_file_mode(
    run_cli, tmp_path: pathlib.Path, overwrite: bool
) -> None:
    source = external_weights_model(tmp_path)
    output = source if overwrite else tmp_path / "out.onnx"
    flags = ("--overwrite",) if overwrite else ()
    assert run_cli("convert", source, "-o", output, "--external-data", *flags).exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    (data,) = tmp_path.glob(f"{output.name}.*.data")
    for written in (output, data):
        assert written.stat().st_mode & 0o777 == 0o666 & ~umask, written


def test_a_failed_save_leaves_an_existing_output_and_its_data_untouched(
    tmp_path: pathlib.Path, monkeypatch
) -> None:
    """The data file is written beside the model in a temporary folder too: a conversion that
    fails its final check must not leave a previous out.onnx pointing at new weights."""
    import mpcompile
    from mpcompile import errors
    from mpcompile.compiler import converter

    source = external_weights_model(tmp_path)
    output = tmp_path / "out.onnx"
    mpcompile.convert_file(source, output, external_data=True)
    before = folder_state(tmp_path)

    def failing_check(*_args, **_kwargs):
        raise errors.InvalidModelError("the check failed")

    monkeypatch.setattr(converter, "_check", failing_check)
    with pytest.raises(errors.InvalidModelError):
        mpcompile.convert_file(source, output, external_data=True, block_ops=["MatMul"])
    assert folder_state(tmp_path) == before


# --------------------------------------------------------------------------- auxiliary inputs (issue 21)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npz_with_member(path: pathlib.Path, member: str, data: bytes, compress: bool = False) -> None:
    import zipfile

    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as archive:
        archive.writestr(member, data)


def _header_claiming(shape: tuple[int, ...]) -> bytes:
    """An .npy member whose header claims ``shape`` (float32) but holds 64 bytes."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + b"\0" * 64


def _zip_bomb(path: pathlib.Path, data_bytes: int) -> None:
    """A deflated member of ``data_bytes`` zeros for x (shape [2, n]): tiny on disk."""
    import zipfile

    header = _npy_bytes(np.zeros((2, data_bytes // 8), np.float32))[: -(data_bytes // 8) * 8]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("x.npy", "w") as member:
        member.write(header)
        chunk = b"\0" * (1 << 20)
        for _ in range(data_bytes // len(chunk)):
            member.write(chunk)


def _inputs_file(kind: str) -> Callable[[pathlib.Path], pathlib.Path]:
    def build(folder: pathlib.Path) -> pathlib.Path:
        path = folder / "inputs.npz"
        if kind == "strings":
            np.savez(path, x=np.array([["a"] * 4] * 2))
        elif kind == "npy named npz":
            path.write_bytes(_npy_bytes(np.zeros((2, 4), np.float32)))
        elif kind == "truncated zip":
            np.savez(path, x=np.zeros((2, 4), np.float32))
            path.write_bytes(path.read_bytes()[:150])
        elif kind == "empty":
            path.touch()
        elif kind == "complex":
            np.savez(path, x=np.ones((2, 4), np.complex64))
        elif kind == "header claims 128 GiB":
            _npz_with_member(path, "x.npy", _header_claiming((2, 4, 4 << 30)))
        elif kind == "zip bomb":
            _zip_bomb(path, 4 << 20)  # 4 MiB inflated, 4 KiB on disk; the test's limit is 1 MiB
        elif kind == "wrong shape":
            np.savez(path, x=np.zeros((3, 5), np.float32))
        elif kind == "float data for an integer input":
            np.savez(path, x=np.zeros((2, 4), np.float32))
        elif kind == "pickled object":
            np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
        else:
            raise AssertionError(kind)
        return path

    return build


INPUTS_CASES: dict[str, tuple[ExitCode, tuple[str, ...]]] = {
    "strings": (ExitCode.USAGE, ("strings",)),
    "npy named npz": (ExitCode.USAGE, ("single .npy array", "numpy.savez")),
    "truncated zip": (ExitCode.USAGE, ("not a readable .npz",)),
    "empty": (ExitCode.USAGE, ("empty file",)),
    "complex": (ExitCode.USAGE, ("complex",)),
    "header claims 128 GiB": (ExitCode.USAGE, ("128.0 GiB", "holds 64 bytes")),
    "zip bomb": (ExitCode.TOO_LARGE, ("memory limit", "MPCOMPILE_MEMORY_LIMIT")),
    "wrong shape": (ExitCode.USAGE, ("'x'", "fixed at")),
    "pickled object": (ExitCode.USAGE, ("objects",)),
}


def _inputs_argv(command: str, folder: pathlib.Path, inputs: pathlib.Path) -> list:
    model = folder / "model.onnx"
    if command == "convert --auto":
        return ["convert", model, "-o", folder / "out.onnx", "--auto", "--inputs", inputs]
    if command == "validate":
        return ["validate", model, model, "--runs", "0", "--inputs", inputs]
    return ["report", model, "--numerics", "--inputs", inputs]


@pytest.mark.parametrize("command", ["convert --auto", "validate", "report --numerics"])
@pytest.mark.parametrize("case", sorted(INPUTS_CASES))
def test_bad_inputs_file_is_refused_before_reading_it(
    run_cli, tmp_path: pathlib.Path, monkeypatch, case: str, command: str
) -> None:
    """Issue 21: every malformed --inputs file is one line and a documented code (exit 70, 130
    or a raw ComplexWarning before); headers are checked before any data is decompressed."""
    monkeypatch.setenv("MPCOMPILE_MEMORY_LIMIT", "1M")
    save(tiny_fp32_model(), tmp_path / "model.onnx")
    inputs = _inputs_file(case)(tmp_path)
    before = folder_state(tmp_path)
    code, mentions = INPUTS_CASES[case]
    with warnings_as_errors():
        result = run_cli(*_inputs_argv(command, tmp_path, inputs))
    assert_refused(result, code, *mentions)
    assert folder_state(tmp_path) == before


@contextlib.contextmanager
def warnings_as_errors():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_float_inputs_for_an_integer_input_are_refused(run_cli, tmp_path: pathlib.Path) -> None:
    model = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"], name="identity")],
            "ints",
            [helper.make_tensor_value_info("x", TensorProto.INT64, [2, 4])],
            [helper.make_tensor_value_info("y", TensorProto.INT64, [2, 4])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=8,
    )
    source = save(model, tmp_path / "model.onnx")
    inputs = _inputs_file("float data for an integer input")(tmp_path)
    before = folder_state(tmp_path)
    result = run_cli("validate", source, source, "--runs", "0", "--inputs", inputs)
    assert_refused(result, ExitCode.USAGE, "'x'", "int64", "float32")
    assert folder_state(tmp_path) == before


def _dynamic_batch_model() -> onnx.ModelProto:
    model = tiny_fp32_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    return model


def _huge_declared_input() -> onnx.ModelProto:
    model = _dynamic_batch_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1 << 62
    return model


SIZE_CASES: dict[str, tuple[Callable[[], onnx.ModelProto], list[str], ExitCode, tuple[str, ...]]] = {
    "--auto --shape batch:100000000": (
        _dynamic_batch_model,
        ["convert", "--auto", "--shape", "batch:100000000"],
        ExitCode.TOO_LARGE,
        ("reference run", "memory limit"),
    ),
    "validate --shape batch:100000000": (
        _dynamic_batch_model,
        ["validate", "--shape", "batch:100000000", "--runs", "0"],
        ExitCode.TOO_LARGE,
        ("memory limit",),
    ),
    "report --numerics --shape batch:100000000": (
        _dynamic_batch_model,
        ["report", "--numerics", "--shape", "batch:100000000"],
        ExitCode.TOO_LARGE,
        ("memory limit",),
    ),
    "--auto --shape of 10^20": (
        _dynamic_batch_model,
        ["convert", "--auto", "--shape", "batch:100000000000000000000"],
        ExitCode.USAGE,
        ("2^63",),
    ),
    "report --shape of 10^20": (
        _dynamic_batch_model,
        ["report", "--shape", "batch:100000000000000000000"],
        ExitCode.USAGE,
        ("2^63",),
    ),
    "--auto on an input declared [2**62, 4]": (
        _huge_declared_input,
        ["convert", "--auto"],
        ExitCode.TOO_LARGE,
        ("generated inputs", "2^66 bytes"),
    ),
}


def _argv_for(model: pathlib.Path, folder: pathlib.Path, args: list[str]) -> list:
    command, *rest = args
    if command == "convert":
        return ["convert", model, "-o", folder / "out.onnx", *rest]
    if command == "validate":
        return ["validate", model, model, *rest]
    return [command, model, *rest]


@pytest.mark.parametrize("case", sorted(SIZE_CASES))
def test_runs_too_large_for_memory_are_refused_up_front(
    run_cli, tmp_path: pathlib.Path, monkeypatch, case: str
) -> None:
    """Issue 21: inputs and reference runs are bounded from shapes before anything is allocated
    (the limit is set to 2 GiB so the cases mean the same on any machine)."""
    monkeypatch.setenv("MPCOMPILE_MEMORY_LIMIT", "2G")
    build, args, code, mentions = SIZE_CASES[case]
    source = save(build(), tmp_path / "model.onnx")
    before = folder_state(tmp_path)
    assert_refused(run_cli(*_argv_for(source, tmp_path, args)), code, *mentions)
    assert folder_state(tmp_path) == before


def test_a_bad_memory_limit_is_a_usage_error(run_cli, tmp_path: pathlib.Path, monkeypatch) -> None:
    monkeypatch.setenv("MPCOMPILE_MEMORY_LIMIT", "lots")
    source = save(tiny_fp32_model(), tmp_path / "model.onnx")
    assert_refused(
        run_cli("validate", source, source, "--runs", "0"), ExitCode.USAGE, "MPCOMPILE_MEMORY_LIMIT"
    )


def test_auto_under_the_memory_limit_still_runs(run_cli, tmp_path: pathlib.Path, monkeypatch) -> None:
    """The control: the same model and option at a size that fits converts."""
    monkeypatch.setenv("MPCOMPILE_MEMORY_LIMIT", "2G")
    source = save(_dynamic_batch_model(), tmp_path / "model.onnx")
    result = run_cli("convert", source, "-o", tmp_path / "out.onnx", "--auto", "--shape", "batch:1000")
    assert result.exit_code == 0, result.stderr


def _cast_to_as_string(model: onnx.ModelProto) -> None:
    node = helper.make_node("Cast", ["y"], ["z"], name="to_text")
    node.attribute.append(helper.make_attribute("to", "float16"))
    model.graph.node.append(node)
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT16, [2, 3]))


def _overload_naming_no_function(model: onnx.ModelProto) -> None:
    model.ir_version = 10
    model.graph.node[2].overload = "nothing"


MODEL_CASES_21 = {
    "opset_import version 2^62": (
        mutated(_set("opset_import[0].version", 1 << 62)),
        ("version 4611686018427387904",),
    ),
    "graph output listed twice": (
        mutated(lambda m: m.graph.output.append(m.graph.output[0])),
        ("'y'", "listed twice"),
    ),
    "Cast to given as a string": (mutated(_cast_to_as_string), ("'to'", "'to_text'", "STRING")),
    "overload naming no function": (mutated(_overload_naming_no_function), ("'relu'", "'nothing'")),
}


@pytest.mark.parametrize("command", ["convert", "report", "validate"])
@pytest.mark.parametrize("case", sorted(MODEL_CASES_21))
def test_malformed_models_of_issue_21_are_invalid_models(
    run_cli, tmp_path: pathlib.Path, case: str, command: str
) -> None:
    """Exit 70 before (get_schema overflow, InvariantError, TypeError), or exit 0 with an output
    ORT refuses (the overload)."""
    build, mentions = MODEL_CASES_21[case]
    source = save(build(), tmp_path / "model.onnx")
    before = folder_state(tmp_path)
    assert_refused(run_cli(*_run_on(command, source, tmp_path)), ExitCode.INVALID_MODEL, *mentions)
    assert folder_state(tmp_path) == before


def _garbage_stamped_model(folder: pathlib.Path) -> pathlib.Path:
    import mpcompile

    converted = mpcompile.convert(tiny_fp32_model()).model
    for node in converted.graph.node:
        for entry in node.metadata_props:
            if entry.key == "mpcompile.precision":
                entry.value = "fp99"
    converted.metadata_props.add(key="mpcompile.auto", value="{not json")
    for entry in converted.metadata_props:
        if entry.key == "mpcompile.low_precision":
            entry.value = "garbage"
    return save(converted, folder / "garbage.onnx")


@pytest.mark.parametrize("fmt", ["table", "json", "csv", "html"])
def test_report_tolerates_garbage_precision_metadata(run_cli, tmp_path: pathlib.Path, fmt: str) -> None:
    """Exit 70 in every format before; now each node's precision comes from its dtypes and its
    reason is unknown."""
    import json

    source = _garbage_stamped_model(tmp_path)
    before = folder_state(tmp_path)
    result = run_cli("report", source, "--format", fmt)
    assert result.exit_code == 0, result.stderr
    assert "fp99" not in result.stdout
    if fmt == "json":
        nodes = json.loads(result.stdout)["nodes"]
        assert {node["reason"] for node in nodes} == {"unknown"}
        assert {node["precision"] for node in nodes} == {"fp16", "fp32"}
    assert folder_state(tmp_path) == before


def _renamed_input(model: onnx.ModelProto) -> None:
    model.graph.input[0].name = "q"
    model.graph.node[0].input[0] = "q"


def _renamed_output(model: onnx.ModelProto) -> None:
    model.graph.node[2].output[0] = "z"
    model.graph.output[0].name = "z"


def _converted(folder: pathlib.Path) -> pathlib.Path:
    import mpcompile

    return save(mpcompile.convert(tiny_fp32_model()).model, folder / "converted.onnx")


VALIDATE_CASES = {
    "different input names": (
        lambda f: save(mutated(_renamed_input)(), f / "other.onnx"),
        ("different inputs", "'q'"),
    ),
    "different input shapes": (
        lambda f: save(
            mutated(_set("graph.input[0].type.tensor_type.shape.dim[0].dim_value", 5))(), f / "other.onnx"
        ),
        ("'x'", "[5, 4]"),
    ),
    "different output names": (
        lambda f: save(mutated(_renamed_output)(), f / "other.onnx"),
        ("no output", "'z'"),
    ),
}


@pytest.mark.parametrize("case", sorted(VALIDATE_CASES))
def test_validate_refuses_models_that_are_not_a_conversion_of_each_other(
    run_cli, tmp_path: pathlib.Path, case: str
) -> None:
    build, mentions = VALIDATE_CASES[case]
    original = build(tmp_path)
    converted = _converted(tmp_path)
    before = folder_state(tmp_path)
    assert_refused(run_cli("validate", original, converted, "--runs", "0"), ExitCode.USAGE, *mentions)
    assert folder_state(tmp_path) == before


def test_validate_with_swapped_arguments_is_refused(run_cli, tmp_path: pathlib.Path) -> None:
    """It said PASSED before: the converted model served as the FP32 reference."""
    original = save(tiny_fp32_model(), tmp_path / "model.onnx")
    converted = _converted(tmp_path)
    before = folder_state(tmp_path)
    assert_refused(run_cli("validate", converted, original, "--runs", "0"), ExitCode.USAGE, "swapped")
    assert folder_state(tmp_path) == before


def test_validate_notes_a_converted_reference(run_cli, tmp_path: pathlib.Path) -> None:
    converted = _converted(tmp_path)
    result = run_cli("validate", converted, converted, "--runs", "0")
    assert result.exit_code == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "itself converted by mpcompile" in line]
    assert len(notes) == 1 and notes[0].startswith("note: ")


def _runs_nowhere() -> onnx.ModelProto:
    """Loads in ORT, fails at run time on any input: Reshape of 8 floats to [7]."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Reshape", ["r", "seven"], ["y"], name="reshape"),
    ]
    graph = helper.make_graph(
        nodes,
        "runs_nowhere",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [7])],
        [numpy_helper.from_array(np.array([7], np.int64), "seven")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("command", ["convert --auto", "report --numerics"])
def test_a_model_whose_fp32_run_fails_is_an_invalid_model(
    run_cli, tmp_path: pathlib.Path, command: str
) -> None:
    """Exit 2 under --auto and 15 (EP unavailable) under report --numerics before."""
    source = save(_runs_nowhere(), tmp_path / "model.onnx")
    before = folder_state(tmp_path)
    args = ["convert", "--auto"] if command == "convert --auto" else ["report", "--numerics"]
    assert_refused(
        run_cli(*_argv_for(source, tmp_path, args)), ExitCode.INVALID_MODEL, "cannot run the FP32", "reshape"
    )
    assert folder_state(tmp_path) == before


def _kv_cache_model() -> onnx.ModelProto:
    """A KV-cache decoder's interface: the mask spans ``past_sequence_length + sequence_length``."""
    total = "past_sequence_length + sequence_length"
    nodes = [
        helper.make_node("Concat", ["past_key", "key"], ["present_key"], axis=2, name="concat"),
        helper.make_node("Cast", ["attention_mask"], ["mask_float"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Unsqueeze", ["mask_float", "axes"], ["mask_4d"], name="unsqueeze"),
        helper.make_node("Transpose", ["mask_4d"], ["mask_column"], perm=[0, 1, 3, 2], name="transpose"),
        helper.make_node("Mul", ["present_key", "mask_column"], ["y"], name="mul"),
        helper.make_node("Identity", ["input_ids"], ["ids"], name="identity"),
    ]
    graph = helper.make_graph(
        nodes,
        "kv",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence_length"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", total]),
            helper.make_tensor_value_info(
                "past_key", TensorProto.FLOAT, ["batch", 2, "past_sequence_length", 4]
            ),
            helper.make_tensor_value_info("key", TensorProto.FLOAT, ["batch", 2, "sequence_length", 4]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, total, 4]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence_length"]),
        ],
        [numpy_helper.from_array(np.array([1, 2], np.int64), "axes")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_report_numerics_sizes_a_kv_cache_mask_as_past_plus_current(run_cli, tmp_path: pathlib.Path) -> None:
    """The mask length was the default 16 instead of 16 + 16, and the run failed (exit 15)."""
    import json

    source = save(_kv_cache_model(), tmp_path / "model.onnx")
    result = run_cli("report", source, "--numerics", "--format", "json")
    assert result.exit_code == 0, result.stderr
    audit = json.loads(result.stdout)
    mul = next(node for node in audit["nodes"] if node["name"] == "mul")
    assert mul["numerics"]["max_abs"] > 0


def test_an_onnxruntime_crash_while_loading_is_one_line(run_cli, tmp_path: pathlib.Path, monkeypatch) -> None:
    """A segfault in ORT used to kill mpcompile; the load is probed in a child process first. The
    child here crashes on purpose (ctypes reads address 0) when it reaches the converted model."""
    from mpcompile.evaluate import load_probe

    crash = "import sys, ctypes\nfor i in range(len(sys.argv) - 1):\n    print(i, flush=True)\nctypes.string_at(0)\n"
    monkeypatch.setattr(load_probe, "_CHILD", crash)
    original = save(tiny_fp32_model(), tmp_path / "model.onnx")
    converted = _converted(tmp_path)
    before = folder_state(tmp_path)
    result = run_cli("validate", original, converted, "--runs", "0")
    assert_refused(result, ExitCode.INVALID_MODEL, "crashed (SIGSEGV)", "the converted model")
    assert folder_state(tmp_path) == before
    auto = run_cli("convert", original, "-o", tmp_path / "out.onnx", "--auto")
    assert_refused(auto, ExitCode.INVALID_MODEL, "crashed (SIGSEGV)", "its conversion")
    assert folder_state(tmp_path) == before
