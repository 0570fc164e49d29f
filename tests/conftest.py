"""Shared test fixtures: running the CLI in-process, and a tiny FP32 model to convert."""

from __future__ import annotations

import dataclasses

import onnx
import pytest

from models.builder import tiny_fp32_model


@dataclasses.dataclass
class CliRun:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    """Run ``mpcompile.cli.main(argv)`` and return its exit code and captured output."""
    from mpcompile.cli import main

    def run(*argv: str) -> CliRun:
        capsys.readouterr()
        code = main([str(arg) for arg in argv])
        captured = capsys.readouterr()
        return CliRun(code, captured.out, captured.err)

    return run


@pytest.fixture
def tiny_model() -> onnx.ModelProto:
    """y = Relu(x @ W + b) (``models.builder.tiny_fp32_model``)."""
    return tiny_fp32_model()
