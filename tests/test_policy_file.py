"""Policy files (issue 21): validated before use, each bad one a one-line ``error:`` and exit 13;
and their values apply only where the caller gave nothing (issue 20, "Options built once").

Each refusal runs ``mpcompile convert`` in-process and checks the exit code, the one stderr line,
that the input folder is byte-identical and that no output was written. The FIFO and
``/dev/zero`` cases run in a child process with a timeout: a regression there would block.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import onnx
import pytest

import mpcompile
from models.builder import tiny_fp32_model
from mpcompile.compiler.options import ConvertOptions
from mpcompile.errors import ExitCode, PolicyError
from mpcompile.policy import read_policy_file
from mpcompile.policy.policy_file import MAX_POLICY_BYTES
from tests.test_bad_input import assert_refused, folder_state

REPO = pathlib.Path(__file__).resolve().parents[1]

# name -> (file bytes, words the error line must contain)
BAD_POLICY_FILES: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "precision-fp8": (b'precision = "fp8"\n', ("precision", "fp8")),
    "precision-int": (b"precision = 16\n", ("precision", "16")),
    "target-list": (b'target = ["cuda"]\n', ("target", "cuda")),
    "target-unknown": (b'target = "tpu"\n', ("target", "tpu")),
    "keep-io-string": (b'keep_io_types = "yes"\n', ("keep_io_types", "yes")),
    "keep-io-int": (b"keep_io_types = 2\n", ("keep_io_types",)),
    "keep-io-mixed-list": (b'keep_io_types = ["x", 3]\n', ("keep_io_types",)),
    "not-utf8": (b'block_ops = ["Exp"]\n# \xff\xfe\n', ("utf-8",)),
    "nested-arrays": (b"block_ops = " + b"[" * 50_000 + b"]" * 50_000 + b"\n", ("nested",)),
    "nested-tables": (b"a = " + b"{b = " * 5_000 + b"1" + b"}" * 5_000 + b"\n", ("toml",)),
    "too-large": (b"# " + b"x" * MAX_POLICY_BYTES + b"\n", ("larger",)),
    "invalid-toml": (b"nonsense = [", ("invalid toml",)),
    "unknown-key": (b"speed = 11\n", ("unknown keys", "speed")),
    "ops-not-a-list": (b'block_ops = "Exp"\n', ("block_ops", "list of strings")),
    "bad-op-name": (b'allow_ops = ["Mat Mul"]\n', ("Mat Mul",)),
}


@pytest.fixture()
def model_folder(tmp_path: pathlib.Path) -> pathlib.Path:
    folder = tmp_path / "work"
    folder.mkdir()
    onnx.save(tiny_fp32_model(), folder / "model.onnx")
    return folder


@pytest.mark.parametrize("case", sorted(BAD_POLICY_FILES))
def test_bad_policy_file_is_one_line_exit_13(run_cli, model_folder: pathlib.Path, case: str) -> None:
    content, mentions = BAD_POLICY_FILES[case]
    policy = model_folder / "policy.toml"
    policy.write_bytes(content)
    before = folder_state(model_folder)
    result = run_cli(
        "convert", model_folder / "model.onnx", "-o", model_folder / "out.onnx", "--policy", policy
    )
    assert_refused(result, ExitCode.POLICY, *mentions)
    assert folder_state(model_folder) == before  # input untouched, no output left


@pytest.mark.parametrize("case", sorted(BAD_POLICY_FILES))
def test_bad_policy_file_through_the_api_is_a_policy_error(tmp_path: pathlib.Path, case: str) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_bytes(BAD_POLICY_FILES[case][0])
    with pytest.raises(PolicyError):
        mpcompile.convert(tiny_fp32_model(), policy=policy)


def _run_in_child(args: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "mpcompile.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_policy_path_that_is_no_regular_file_never_blocks(model_folder: pathlib.Path, kind: str) -> None:
    if kind == "fifo":
        policy = model_folder / "policy.toml"
        os.mkfifo(policy)  # no writer: opening it for reading would block
    else:
        policy = pathlib.Path("/dev/zero")  # reading it would never end
        if not policy.exists():
            pytest.skip("no /dev/zero")
    before = folder_state(model_folder)
    done = _run_in_child(
        [
            "convert",
            str(model_folder / "model.onnx"),
            "-o",
            str(model_folder / "out.onnx"),
            "--policy",
            str(policy),
        ],
        model_folder,
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == ExitCode.POLICY, lines
    assert len(lines) == 1 and lines[0].startswith("error: ") and "regular file" in lines[0], lines
    assert folder_state(model_folder) == before


def test_a_good_policy_file_is_read_with_its_typed_fields(tmp_path: pathlib.Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        'precision = "bf16"\ntarget = "cpu"\nkeep_io_types = ["x"]\nblock_ops = ["Relu"]\n', encoding="utf-8"
    )
    read = read_policy_file(policy)
    assert (read.precision, read.target, read.keep_io_types) == ("bf16", "cpu", ("x",))
    assert read.policy.classify("", "Relu").rule == "user.block_ops[Relu]"


# --------------------------------------------------------------------------- precedence


def _policy(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_explicit_options_beat_the_policy_file_which_beats_the_defaults(tmp_path: pathlib.Path) -> None:
    policy = _policy(tmp_path, 'precision = "bf16"\ntarget = "cpu"\nkeep_io_types = false\n')
    from_file = ConvertOptions(policy=policy).resolved()
    assert (from_file.precision, from_file.target, from_file.keep_io_types) == ("bf16", "cpu", False)
    explicit = ConvertOptions(policy=policy, precision="fp16", target="cuda", keep_io_types=True).resolved()
    assert (explicit.precision, explicit.target, explicit.keep_io_types) == ("fp16", "cuda", True)
    # The defaults where neither says anything; resolving is done once and idempotent.
    plain = ConvertOptions().resolved()
    assert (plain.precision, plain.target, plain.keep_io_types) == ("fp16", "cuda", True)
    assert from_file.resolved() is from_file


def test_explicit_precision_overrides_a_policy_files_bf16(tmp_path: pathlib.Path) -> None:
    """Before issue 20 an explicit precision="fp16" equal to the default lost to the file's bf16."""
    policy = _policy(tmp_path, 'precision = "bf16"\n')
    assert mpcompile.convert(tiny_fp32_model(), policy=policy).precision == "bf16"
    assert mpcompile.convert(tiny_fp32_model(), policy=policy, precision="fp16").precision == "fp16"
    options = ConvertOptions(policy=policy, precision="fp16")
    assert mpcompile.convert(tiny_fp32_model(), options).precision == "fp16"


def test_cli_precision_flag_beats_the_policy_file(run_cli, model_folder: pathlib.Path) -> None:
    policy = _policy(model_folder, 'precision = "bf16"\nkeep_io_types = false\n')
    source = model_folder / "model.onnx"
    # Not given: the file's bf16 applies, also to the default output name.
    assert run_cli("convert", source, "--policy", policy, "-q").exit_code == 0
    converted = onnx.load(model_folder / "model.bf16.onnx")
    assert converted.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16
    # Given: --precision fp16 wins, even though it equals the built-in default.
    result = run_cli("convert", source, "--policy", policy, "--precision", "fp16", "-q")
    assert result.exit_code == 0, result.stderr
    converted = onnx.load(model_folder / "model.fp16.onnx")
    assert converted.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_op_lists_merge_with_the_callers_winning(tmp_path: pathlib.Path) -> None:
    policy = _policy(tmp_path, 'block_ops = ["MatMul"]\nallow_ops = ["Exp"]\n')
    options = ConvertOptions(policy=policy, allow_ops=("MatMul",)).resolved()
    merged = options.op_policy()
    assert merged.classify("", "MatMul").rule == "user.allow_ops[MatMul]"
    assert merged.classify("", "Exp").rule == "user.allow_ops[Exp]"


def test_keep_io_types_forms_normalize_to_one() -> None:
    assert ConvertOptions(keep_io_types=["a", "b"]).keep_io_types == frozenset({"a", "b"})
    assert ConvertOptions(keep_io_types="a").keep_io_types == frozenset({"a"})
    assert ConvertOptions(keep_io_types=False).keep_io_types is False
    assert ConvertOptions.build(keep_io_types=("a",)) == ConvertOptions(keep_io_types=frozenset({"a"}))
    with pytest.raises(TypeError, match="unknown conversion option"):
        ConvertOptions.build(keep_io=True)
