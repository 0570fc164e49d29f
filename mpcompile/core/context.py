"""State shared by the passes of one conversion: options in, plan and statistics out."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping

import onnx_ir as ir

from mpcompile.core.plan import Decision, PrecisionPlan
from mpcompile.core.precision import LowPrecisionFormat
from mpcompile.core.ranges import ConstantRange, SharedMaps, constant_tensor, measure
from mpcompile.irtools.graphs import all_graphs
from mpcompile.policy import Policy
from mpcompile.policy.op_types import NodeTyping
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


@dataclasses.dataclass
class ConversionContext:
    """Options of one conversion and everything the passes hand each other."""

    low: LowPrecisionFormat
    target: Target
    policy: Policy
    keep_io_types: bool = True
    allow_qdq: bool = False
    # The converted model is serialized exactly once (convert_file): converted embedded weights
    # may drop their FP32 bytes as they are written (see ConvertConstantsPass).
    serialized_once: bool = False
    # Casts from integers/bool to float start low-precision paths (ConvertOptions.measured_casts).
    measured_casts: bool = False
    # Decisions by exact node name (ConvertOptions.node_overrides).
    node_overrides: Mapping[str, Decision] = dataclasses.field(default_factory=dict)
    plan: PrecisionPlan = dataclasses.field(default_factory=PrecisionPlan)
    # Typing of each node (by id) as the assignment saw it (see mpcompile.policy.op_types).
    typings: dict[int, NodeTyping | None] = dataclasses.field(default_factory=dict)
    # Per (node, input index): the dtype the input must have after conversion. Filled by
    # RetypeNodesPass before any value changes type, consumed by InsertCastsPass.
    required_input_dtypes: dict[tuple[int, int], ir.DataType] = dataclasses.field(default_factory=dict)
    # dtypes of graph outputs before conversion, keyed by id(value).
    original_output_dtypes: dict[int, ir.DataType] = dataclasses.field(default_factory=dict)
    # Range scans of float constants, by id of the constant's value (each tensor is read once).
    constant_ranges: dict[int, ConstantRange | None] = dataclasses.field(default_factory=dict)
    # Additive attention masks (by id of the constant's value) -> the Softmax nodes they reach.
    clampable_mask_constants: dict[int, list[ir.Node]] = dataclasses.field(default_factory=dict)
    stats: ConvertStats = dataclasses.field(default_factory=ConvertStats)
    notes: list[str] = dataclasses.field(default_factory=list)
    # External-data files mapped once for the range scans; closed by ``close()``.
    shared_maps: SharedMaps = dataclasses.field(default_factory=SharedMaps, repr=False)
    _graphs: list[tuple[ir.Graph, int]] | None = dataclasses.field(default=None, repr=False)
    _graphs_model: ir.Model | None = dataclasses.field(default=None, repr=False)

    def graphs_of(self, model: ir.Model) -> list[tuple[ir.Graph, int]]:
        """``graphs.all_graphs(model)``, listed once per conversion: finding subgraphs walks every
        node, and the passes never add or remove one. Valid once InferTypesPass typed functions."""
        if self._graphs is None or self._graphs_model is not model:
            self._graphs = list(all_graphs(model))
            self._graphs_model = model
        return self._graphs

    def constant_range(self, value: ir.Value) -> ConstantRange | None:
        """The range of a float constant's values (scanned once per conversion), or None."""
        key = id(value)
        if key not in self.constant_ranges:
            tensor = constant_tensor(value)
            self.constant_ranges[key] = (
                None if tensor is None else measure(tensor, self.low, self.shared_maps)
            )
        return self.constant_ranges[key]

    def close(self) -> None:
        """Release what the conversion held open (the range scans' file maps)."""
        self.shared_maps.close()
