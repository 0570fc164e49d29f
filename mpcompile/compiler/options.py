"""The options of one conversion, built once at the CLI/API edge: ``ConvertOptions``.

``precision``, ``target`` and ``keep_io_types`` default to ``None``, "not given": a policy
file's value applies there, and the built-in default where the file says nothing either.
``ConvertOptions.resolved()`` is the one place that merges them; everything below the edge
takes resolved options.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from typing import Any

from mpcompile.core.plan import Decision
from mpcompile.core.precision import DEFAULT_LOW_PRECISION, Precision
from mpcompile.errors import UsageError
from mpcompile.policy import Policy, PolicyFile, read_policy_file
from mpcompile.targets.base import Target
from mpcompile.targets.registry import DEFAULT_TARGET

DEFAULT_KEEP_IO_TYPES = True

# keep_io_types: True (every graph input/output stays FP32), False (every float one goes low),
# or the names that stay FP32 while the rest go low (onnxconverter-common's list form).
KeepIoTypes = bool | frozenset[str]

_NAME_TUPLES = ("allow_ops", "block_ops", "block_nodes", "measured_ops")


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
    """Everything that shapes a conversion (CLI flags and policy files map onto this)."""

    precision: str | None = None  # None: the policy file's, else fp16
    target: str | Target | None = None  # None: the policy file's, else cuda
    keep_io_types: KeepIoTypes | None = None  # None: the policy file's, else True
    allow_ops: tuple[str, ...] = ()
    block_ops: tuple[str, ...] = ()
    block_nodes: tuple[str, ...] = ()
    # Decisions for nodes by exact name (any graph), taken where a block_nodes pattern would be
    # and stamped as given: --auto keeps its chosen nodes FP32 with its own reasons this way.
    # User block_nodes still win.
    node_overrides: Mapping[str, Decision] = dataclasses.field(default_factory=dict)
    # BLOCK-list ops to treat as follow ops (rule auto.measured[...]); set by --auto, whose
    # range rules and search measure them (op_classes.MEASURABLE). User block_ops still win.
    measured_ops: tuple[str, ...] = ()
    # Casts from integers/bool to float may start low-precision paths, their outputs going
    # straight to FP16/BF16 (exact only up to 2048 in FP16); set by --auto, whose range rules
    # keep FP32 every such Cast whose measured values are not a 0/1 mask.
    measured_casts: bool = False
    # A TOML file with the same fields (a path), or the file already read (``resolved()``).
    policy: str | os.PathLike | PolicyFile | None = None
    allow_qdq: bool = False
    # Convert ops no schema, ONNX Runtime kernel or local function defines (kept FP32); otherwise
    # refused, since ONNX Runtime loads such a model only with the op's library (ort_loadable).
    allow_custom_ops: bool = False
    # Skip the range run (mpcompile.passes.range_run): the static rules alone decide (--static).
    static: bool = False
    optimize: str | None = None  # run ORT's graph optimisation first: basic | extended | transformer
    verify: bool = True  # run onnx.checker (full) on the result
    check_invariants: bool = False  # check our invariants after every pass (debugging)
    dump_dir: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        for key in _NAME_TUPLES:
            value = getattr(self, key)
            object.__setattr__(self, key, (value,) if isinstance(value, str) else tuple(value or ()))
        object.__setattr__(self, "keep_io_types", normalize_keep_io_types(self.keep_io_types))
        if self.node_overrides is None:
            object.__setattr__(self, "node_overrides", {})
        low = sorted(
            name for name, decision in self.node_overrides.items() if decision.precision != Precision.FP32
        )
        if low:  # an override skips the schema, kernel and range checks: only FP32 is safe
            raise ValueError(f"node_overrides keep nodes FP32 only; not FP32: {low[:5]}")

    @classmethod
    def build(cls, options: ConvertOptions | None = None, **kwargs: Any) -> ConvertOptions:
        """Options from keyword arguments (the public API's), or ``options`` with those replaced."""
        unknown = set(kwargs) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown conversion option(s): {sorted(unknown)}")
        return dataclasses.replace(options, **kwargs) if options is not None else cls(**kwargs)

    @property
    def is_resolved(self) -> bool:
        return (
            self.precision is not None
            and self.target is not None
            and self.keep_io_types is not None
            and not isinstance(self.policy, (str, os.PathLike))
        )

    def resolved(self) -> ConvertOptions:
        """These options with the policy file read and applied: an explicit precision, target or
        keep_io_types wins over the file's, the file's over the defaults. Idempotent."""
        if self.is_resolved:
            return self
        file = self.policy if isinstance(self.policy, PolicyFile) else None
        if isinstance(self.policy, (str, os.PathLike)):
            file = read_policy_file(self.policy)
        given = file or PolicyFile(Policy())
        return dataclasses.replace(
            self,
            policy=file,
            precision=_first(self.precision, given.precision, DEFAULT_LOW_PRECISION),
            target=_first(self.target, given.target, DEFAULT_TARGET),
            keep_io_types=_first(self.keep_io_types, given.keep_io_types, DEFAULT_KEEP_IO_TYPES),
        )

    def op_policy(self) -> Policy:
        """The op overrides: the policy file's, with these options' own winning on conflicts."""
        own = Policy.from_options(self.allow_ops, self.block_ops, self.block_nodes, self.measured_ops)
        return own if not isinstance(self.policy, PolicyFile) else self.policy.policy.merged(own)


def normalize_keep_io_types(value: bool | str | Iterable[str] | None) -> KeepIoTypes | None:
    """``keep_io_types`` as given (a bool, None, or names: one string or a collection) in its
    one form: a bool, None or a frozenset of names."""
    if value is None or isinstance(value, bool):
        return value
    names = (value,) if isinstance(value, str) else tuple(value)
    wrong = [name for name in names if not isinstance(name, str)]
    if wrong:
        raise UsageError(f"keep_io_types: names must be strings, not {wrong[0]!r}")
    return frozenset(names)


def _first(*values: Any) -> Any:
    return next(value for value in values if value is not None)
