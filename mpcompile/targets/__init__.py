"""Execution-provider targets: which ops have low-precision kernels where."""

from mpcompile.targets.base import AnyTarget, Target, get_target

__all__ = ["AnyTarget", "Target", "get_target"]
