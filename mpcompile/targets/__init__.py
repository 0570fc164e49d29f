"""Execution-provider targets: which ops have low-precision kernels where."""

from mpcompile.targets.base import (
    DEFAULT_TARGET,
    TARGET_NAMES,
    TARGET_PROVIDERS,
    AnyTarget,
    Target,
    UnknownTargetError,
    get_target,
)
from mpcompile.targets.kernel_table import KernelAnswer, KernelTable, op_signatures
from mpcompile.targets.kernel_target import KernelTableTarget
from mpcompile.targets.live import KernelDifference, compare_with_live
from mpcompile.targets.tensorrt import TensorRTTarget

__all__ = [
    "DEFAULT_TARGET",
    "TARGET_NAMES",
    "TARGET_PROVIDERS",
    "AnyTarget",
    "KernelAnswer",
    "KernelDifference",
    "KernelTable",
    "KernelTableTarget",
    "Target",
    "TensorRTTarget",
    "UnknownTargetError",
    "compare_with_live",
    "get_target",
    "op_signatures",
]
