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
import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from mpcompile.errors import ExitCode
from tests.conftest import CliRun, tiny_fp32_model

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
    (tmp_path / "folder.onnx").mkdir()
    refused_without_side_effects(
        run_cli, tmp_path, tmp_path / "folder.onnx", ExitCode.INPUT_NOT_FOUND, "not a file"
    )


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


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _AUDIT_SINKS and isinstance(args[0], (str, bytes, os.PathLike)):
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


def test_unknown_custom_domain_op_is_kept_fp32_and_reported(run_cli, tmp_path: pathlib.Path) -> None:
    from mpcompile.plan import read_decision
    from mpcompile.precision import Precision

    source = save(custom_op_model(), tmp_path / "custom.onnx")
    before = source.read_bytes()
    output = tmp_path / "out.onnx"
    result = run_cli("convert", source, "-o", output)
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
    """ir.save writes part of the file, then the disk fills up."""
    real_save = ir.save

    def failing_save(model, path, *args, **kwargs):
        real_save(model, path, *args, **kwargs)
        with open(path, "r+b") as partial:
            partial.truncate(max(1, os.path.getsize(path) // 2))
        raise OSError(error_number, os.strerror(error_number), str(path))

    monkeypatch.setattr(ir, "save", failing_save)
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    onnx.checker.check_model(str(source), full_check=True)
    got = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # CPU EP (understates FP16 error); 256-term dot products of |x| <= 1 and weights of 1.
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=0.5)
