"""The installed onnxruntime's own kernel registry, and how it differs from the shipped tables.

``onnxruntime.capi._pybind_state.get_all_opkernel_def()`` returns one ``KernelDef`` per typed
registration (fields ``op_name``, ``domain`` (``""`` = ai.onnx), ``provider``, ``version_range``,
``type_constraints``). It describes the exact build that is installed, so it is the ground truth
for that build: platform-gated kernels (MLAS FP16 vector paths, KleidiAI) and kernels added after
the shipped markdown differ. onnxruntime is imported lazily; without it there is no live data.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import defaultdict

from mpcompile import errors
from mpcompile.targets.kernel_table import (
    KernelRange,
    KernelTable,
    OpKernels,
    normalize_domain,
    shipped_table,
)

# ORT reports an open range ("N+") as (N, INT_MAX).
OPEN_RANGE_END = 2**31 - 1


@functools.lru_cache(maxsize=1)
def _live_kernel_defs() -> tuple | None:
    try:
        from onnxruntime.capi import _pybind_state
    except ImportError:
        return None
    get_defs = getattr(_pybind_state, "get_all_opkernel_def", None)
    if get_defs is None:  # e.g. onnxruntime-training 1.19 does not expose it
        return None
    return tuple(get_defs())


def live_runtime_version() -> str | None:
    """``onnxruntime.__version__`` when installed, else None."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def live_providers() -> list[str]:
    """Execution providers that have kernel defs in the installed onnxruntime build."""
    defs = _live_kernel_defs() or ()
    return sorted({kernel_def.provider for kernel_def in defs})


@functools.lru_cache(maxsize=8)
def live_table(provider: str) -> KernelTable | None:
    """The installed build's kernel table for ``provider``, or None if it has no kernels for it.

    Typed registrations of one (domain, op, version range) are merged into the union of their
    types, the same view OperatorKernels.md gives. Parameter names are not in the registry; the
    dtype rule takes them from the shipped tables or onnx schemas.
    """
    defs = _live_kernel_defs()
    if not defs:
        return None
    merged: dict[tuple[str, str], dict[tuple[int, int | None], dict[str, set[str]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(set))
    )
    for kernel_def in defs:
        if kernel_def.provider != provider:
            continue
        since, until = kernel_def.version_range
        key = (normalize_domain(kernel_def.domain), kernel_def.op_name)
        constraints = merged[key][(since, None if until >= OPEN_RANGE_END else until)]
        for name, types in kernel_def.type_constraints.items():
            constraints[name].update(types)
    if not merged:
        return None
    ops = {}
    for key, ranges in merged.items():
        kernels = tuple(
            KernelRange(
                since, until, {name: tuple(sorted(types)) for name, types in sorted(constraints.items())}
            )
            for (since, until), constraints in sorted(
                ranges.items(), key=lambda item: item[0][0], reverse=True
            )
        )
        ops[key] = OpKernels(signatures=(), kernels=kernels)
    return KernelTable(provider, ops)


@dataclasses.dataclass(frozen=True)
class KernelDifference:
    """One row where the live registry and the shipped table disagree.

    ``kind``: ``only-shipped`` (the markdown lists a kernel range the installed build lacks),
    ``only-live`` (the installed build registers a range the markdown lacks) or ``types`` (both
    have the range; ``only_shipped``/``only_live`` list the types per parameter that differ).
    """

    provider: str
    domain: str
    op_type: str
    version_range: str  # markdown notation: "13", "[6, 12]", "14+"
    kind: str
    only_shipped: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    only_live: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def compare_with_live(provider: str) -> list[KernelDifference]:
    """Differences between the installed build's registry and the shipped table for ``provider``.

    Raises ``RuntimeMissingError`` without onnxruntime (or without the registry API) and
    ``ExecutionProviderError`` when the installed build has no kernels for ``provider``.
    """
    if _live_kernel_defs() is None:
        raise errors.RuntimeMissingError(
            "onnxruntime with get_all_opkernel_def() is needed to compare with the live kernel registry"
        )
    live = live_table(provider)
    if live is None:
        raise errors.ExecutionProviderError(
            f"the installed onnxruntime {live_runtime_version()} has no kernels for {provider}; "
            f"it has {', '.join(live_providers()) or 'none'}"
        )
    shipped = shipped_table(provider)
    shipped_rows = _rows(shipped)
    live_rows = _rows(live)
    differences = []
    for key in sorted(shipped_rows.keys() | live_rows.keys(), key=_row_sort_key):
        domain, op_type, kernel_label = key
        if key not in live_rows:
            differences.append(KernelDifference(provider, domain, op_type, kernel_label, "only-shipped"))
        elif key not in shipped_rows:
            differences.append(KernelDifference(provider, domain, op_type, kernel_label, "only-live"))
        else:
            only_shipped, only_live = _type_differences(shipped_rows[key], live_rows[key])
            if only_shipped or only_live:
                differences.append(
                    KernelDifference(
                        provider, domain, op_type, kernel_label, "types", only_shipped, only_live
                    )
                )
    return differences


def _rows(table: KernelTable) -> dict[tuple[str, str, str], KernelRange]:
    return {
        (domain, op_type, kernel.label): kernel
        for (domain, op_type), entry in table.items()
        for kernel in entry.kernels
    }


def _row_sort_key(key: tuple[str, str, str]) -> tuple:
    domain, op_type, label = key
    return (domain, op_type, int(label.strip("[+").split(",")[0]), label)


def _type_differences(
    shipped: KernelRange, live: KernelRange
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    only_shipped, only_live = {}, {}
    for name in sorted(shipped.constraints.keys() | live.constraints.keys()):
        shipped_types = set(shipped.constraints.get(name, ()))
        live_types = set(live.constraints.get(name, ()))
        if shipped_types - live_types:
            only_shipped[name] = sorted(shipped_types - live_types)
        if live_types - shipped_types:
            only_live[name] = sorted(live_types - shipped_types)
    return only_shipped, only_live
