"""``mpcompile --help`` starts fast: the CLI and its command modules import no heavy dependency.

Checked structurally (which modules an import loads), not by timing; the wall times are measured
by tools/bench/cli_startup.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("onnx", "onnx_ir", "numpy", "onnxruntime", "ml_dtypes")


def _heavy_modules_loaded_by(code: str) -> list[str]:
    probe = (
        "import json, sys\n"
        f"{code}\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.splitlines()[-1])


def test_importing_the_cli_loads_no_heavy_dependency():
    assert _heavy_modules_loaded_by("import mpcompile.cli") == []


@pytest.mark.parametrize(
    "args", [[], ["convert"], ["report"], ["validate"], ["targets"], ["train-artifacts"]]
)
def test_help_loads_no_heavy_dependency(args):
    code = (
        "import contextlib, io\n"
        "from mpcompile.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert main({[*args, '--help']!r}) == 0\n"
    )
    assert _heavy_modules_loaded_by(code) == []


def test_report_sort_names_match_the_report_view():
    from mpcompile.commands.report import SORT_NAMES
    from mpcompile.report.view import SORTS

    assert tuple(SORTS) == SORT_NAMES


def test_cli_choices_match_the_layers_that_own_them():
    from mpcompile.commands import choices
    from mpcompile.core.precision import DEFAULT_LOW_PRECISION, LOW_PRECISION_FORMATS
    from mpcompile.targets.optimize.levels import OPTIMIZE_LEVELS
    from mpcompile.targets.registry import DEFAULT_TARGET, target_names

    assert tuple(LOW_PRECISION_FORMATS) == choices.PRECISIONS
    assert choices.DEFAULT_PRECISION == DEFAULT_LOW_PRECISION
    assert choices.OPTIMIZE_LEVELS == OPTIMIZE_LEVELS
    assert target_names() == choices.TARGET_NAMES and choices.DEFAULT_TARGET == DEFAULT_TARGET
