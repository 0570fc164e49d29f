"""What mpcompile silences while ORT's tools run (logging, ORT's logger severity, warnings,
stdout) is put back as it was before, not reset to fixed values."""

from __future__ import annotations

import logging
import sys
import warnings

import pytest

onnxruntime = pytest.importorskip("onnxruntime")

from mpcompile.evaluate.ort_session import onnxruntime_log_severity  # noqa: E402
from mpcompile.targets.optimize.quiet import logging_disabled, quiet  # noqa: E402
from mpcompile.validate.runners import _quiet_onnxruntime  # noqa: E402


@pytest.fixture
def logging_disable_level():
    before = logging.root.manager.disable
    yield
    logging.disable(before)


@pytest.mark.usefixtures("logging_disable_level")
def test_logging_disabled_puts_back_the_callers_level():
    logging.disable(logging.DEBUG)
    with logging_disabled():
        assert logging.root.manager.disable == logging.WARNING
    assert logging.root.manager.disable == logging.DEBUG
    logging.disable(logging.CRITICAL)
    with pytest.raises(KeyError), logging_disabled():
        raise KeyError("inside")
    assert logging.root.manager.disable == logging.CRITICAL


@pytest.mark.usefixtures("logging_disable_level")
def test_quiet_puts_back_stdout_and_logging():
    logging.disable(logging.INFO)
    stdout = sys.stdout
    with quiet():
        print("swallowed")
    assert sys.stdout is stdout
    assert logging.root.manager.disable == logging.INFO


def test_onnxruntime_severity_goes_back_to_the_one_before(monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(onnxruntime, "set_default_logger_severity", calls.append)
    with onnxruntime_log_severity(3):
        with onnxruntime_log_severity(4):
            pass
        assert calls == [3, 4, 3]
    assert calls == [3, 4, 3, 2]  # ORT's own default outside any block
    with pytest.raises(KeyError), onnxruntime_log_severity(4):
        raise KeyError("inside")
    assert calls[-1] == 2


def test_quiet_onnxruntime_restores_severity_and_warning_filters(monkeypatch):
    calls: list[int] = []
    monkeypatch.setattr(onnxruntime, "set_default_logger_severity", calls.append)
    with onnxruntime_log_severity(1), warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        filters = list(warnings.filters)
        with _quiet_onnxruntime():
            warnings.warn("ignored inside", DeprecationWarning, stacklevel=1)
        assert warnings.filters == filters
        assert calls == [1, 4, 1]
