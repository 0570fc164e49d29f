"""Names the CLI offers as choices, kept free of heavy imports so ``--help`` stays fast.

The layers below own these names: targets come from ``targets/registry.py``; the precisions and
optimisation levels mirror ``core/precision.py`` and ``targets/optimize/levels.py`` (which load
numpy and onnx), and tests/test_cli_startup.py checks that they agree.
"""

from __future__ import annotations

from mpcompile.targets.registry import DEFAULT_TARGET, target_names

TARGET_NAMES = target_names()
DEFAULT_TARGET = DEFAULT_TARGET

OPTIMIZE_LEVELS = ("basic", "extended", "transformer")

PRECISIONS = ("fp16", "bf16")
DEFAULT_PRECISION = "fp16"
