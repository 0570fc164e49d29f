"""User-facing errors and their exit codes.

Every failure a user can cause (bad input, bad options, unwritable output) is a
``MpcompileError`` subclass carrying a distinct exit code and a one-line message.
Anything else that escapes is an internal bug and is reported as such by the CLI.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes of the ``mpcompile`` CLI (documented in README)."""

    OK = 0
    VALIDATION_FAILED = 1  # validate: an output is outside tolerance
    USAGE = 2  # click's own code for bad options
    INPUT_NOT_FOUND = 3
    NOT_ONNX = 4  # empty, not a protobuf, truncated
    EXTERNAL_DATA = 5  # missing external data file, or a location escaping the model folder
    UNSUPPORTED_OPSET = 6
    QDQ_MODEL = 7
    ALREADY_LOW_PRECISION = 8
    OUTPUT_NOT_WRITABLE = 9
    OUTPUT_IS_INPUT = 10
    DISK_FULL = 11
    INVALID_MODEL = 12  # fails onnx.checker before conversion
    POLICY = 13  # bad policy file or override
    RUNTIME_MISSING = 14  # onnxruntime (or an EP) needed but not installed
    EP_UNAVAILABLE = 15  # an explicitly requested execution provider cannot run
    TRAINING = 16  # training artifacts malformed or training runtime failure
    TOO_LARGE = 17  # inputs or a run would need more memory than MPCOMPILE_MEMORY_LIMIT allows
    INTERNAL = 70  # a bug in mpcompile


class MpcompileError(Exception):
    """Base class of errors caused by input or options, shown as one line."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InputNotFoundError(MpcompileError):
    exit_code = ExitCode.INPUT_NOT_FOUND


class NotOnnxError(MpcompileError):
    exit_code = ExitCode.NOT_ONNX


class ExternalDataError(MpcompileError):
    exit_code = ExitCode.EXTERNAL_DATA


class UnsupportedOpsetError(MpcompileError):
    exit_code = ExitCode.UNSUPPORTED_OPSET


class QdqModelError(MpcompileError):
    exit_code = ExitCode.QDQ_MODEL


class AlreadyLowPrecisionError(MpcompileError):
    exit_code = ExitCode.ALREADY_LOW_PRECISION


class OutputNotWritableError(MpcompileError):
    exit_code = ExitCode.OUTPUT_NOT_WRITABLE


class OutputIsInputError(MpcompileError):
    exit_code = ExitCode.OUTPUT_IS_INPUT


class DiskFullError(MpcompileError):
    exit_code = ExitCode.DISK_FULL


class InvalidModelError(MpcompileError):
    exit_code = ExitCode.INVALID_MODEL


class PolicyError(MpcompileError):
    exit_code = ExitCode.POLICY


class RuntimeMissingError(MpcompileError):
    exit_code = ExitCode.RUNTIME_MISSING


class ExecutionProviderError(MpcompileError):
    exit_code = ExitCode.EP_UNAVAILABLE


class TrainingError(MpcompileError):
    exit_code = ExitCode.TRAINING


class UsageError(MpcompileError):
    """Options that contradict the model, found after parsing (e.g. a graph input name no model has)."""

    exit_code = ExitCode.USAGE


class TooLargeError(MpcompileError):
    exit_code = ExitCode.TOO_LARGE
