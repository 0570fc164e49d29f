"""The options of one conversion (frozen) and what its passes report: statistics and notes."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping

from mpcompile.core.plan import Decision
from mpcompile.core.precision import LowPrecisionFormat
from mpcompile.policy import Policy
from mpcompile.targets.base import Target


@dataclasses.dataclass
class ConvertStats:
    """What a conversion did, for the CLI summary, JSON output and the report."""

    nodes_by_precision: Counter = dataclasses.field(default_factory=Counter)
    casts_before: int = 0
    casts_after: int = 0
    casts_inserted: int = 0
    casts_folded: int = 0
    weight_bytes_before: int = 0
    weight_bytes_after: int = 0
    initializers_converted: int = 0
    initializers_duplicated: int = 0
    values_clamped: int = 0  # set to the low-precision limit (only in safe forms such as masks)
    values_flushed_to_zero: int = 0  # nonzero values too small for the low-precision type
    values_subnormal: int = 0  # values that become subnormal (lose precision)
    untyped_values: int = 0
    pass_seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def casts_added(self) -> int:
        return self.casts_after - self.casts_before

    def as_dict(self) -> dict[str, object]:
        data = dataclasses.asdict(self)
        data["nodes_by_precision"] = dict(sorted(self.nodes_by_precision.items()))
        data["casts_added"] = self.casts_added
        data["pass_seconds"] = {name: round(seconds, 6) for name, seconds in self.pass_seconds.items()}
        return data


@dataclasses.dataclass(frozen=True)
class ConversionContext:
    """The frozen options of one conversion, and the stats and notes its passes report into.

    Passes hand each other nothing through the context: the precision plan
    (``mpcompile.core.plan.PrecisionPlan``) is their only hand-off.
    """

    low: LowPrecisionFormat
    target: Target
    policy: Policy
    # Names of the main graph's inputs/outputs that keep their FP32 type (keep_io_types resolved
    # against the model, ``mpcompile.core.io_types.fp32_io_names``); None: every one of them.
    # The other float inputs and outputs go low precision.
    fp32_io: frozenset[str] | None = None
    # ORT's graph optimisation level run first (OptimizePass; ConvertOptions.optimize), or None.
    optimize: str | None = None
    # Preconditions the passes require (ConvertOptions.allow_qdq, ConvertOptions.allow_custom_ops).
    allow_qdq: bool = False
    allow_custom_ops: bool = False
    # The converted model is serialized exactly once (convert_file): converted embedded weights
    # may drop their FP32 bytes as they are written (see ConvertConstantsPass).
    serialized_once: bool = False
    # Casts from integers/bool to float start low-precision paths (ConvertOptions.measured_casts).
    measured_casts: bool = False
    # Decisions by exact node name (ConvertOptions.node_overrides).
    node_overrides: Mapping[str, Decision] = dataclasses.field(default_factory=dict)
    stats: ConvertStats = dataclasses.field(default_factory=ConvertStats)
    notes: list[str] = dataclasses.field(default_factory=list)
