"""Are two models comparable at all? ``validate`` checks their interfaces before running them.

The converted model must take the inputs the original takes (same names, ranks, fixed dims, and
a float input stays float) and give every output the original gives: otherwise the comparison
means nothing and is refused in one line (``InterfaceMismatchError``, exit 2). The reference
should be the FP32 original: when ORIGINAL carries mpcompile's conversion stamp and CONVERTED
does not, the arguments are swapped (refused); when both carry it, a note says so.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir

from mpcompile import errors
from mpcompile.core.plan import MODEL_VERSION_KEY


class InterfaceMismatchError(errors.MpcompileError):
    """The two models given to ``validate`` cannot be compared."""

    exit_code = errors.ExitCode.USAGE


def check_comparable(original: ir.Model, converted: ir.Model, log: Callable[[str], None]) -> None:
    """Refuse models with different interfaces or swapped roles; note a converted reference."""
    _check_roles(original, converted, log)
    _check_inputs(original, converted)
    missing = [
        value.name for value in original.graph.outputs if value.name not in _names(converted.graph.outputs)
    ]
    if missing:
        raise InterfaceMismatchError(
            f"the converted model has no output(s) {', '.join(map(repr, missing))} of the original: "
            "not a conversion of it"
        )


def _check_roles(original: ir.Model, converted: ir.Model, log: Callable[[str], None]) -> None:
    original_stamped = MODEL_VERSION_KEY in original.metadata_props
    converted_stamped = MODEL_VERSION_KEY in converted.metadata_props
    if original_stamped and not converted_stamped:
        raise InterfaceMismatchError(
            "ORIGINAL was converted by mpcompile and CONVERTED was not: the arguments look swapped "
            "(usage: mpcompile validate ORIGINAL CONVERTED)"
        )
    if original_stamped:
        log(
            "note: the reference (ORIGINAL) was itself converted by mpcompile; errors are measured against it"
        )


def _check_inputs(original: ir.Model, converted: ir.Model) -> None:
    theirs = {value.name: value for value in converted.graph.inputs if not value.is_initializer()}
    ours = {value.name: value for value in original.graph.inputs if not value.is_initializer()}
    if ours.keys() != theirs.keys():
        raise InterfaceMismatchError(
            f"the models take different inputs (original: {', '.join(map(repr, sorted(ours)))}; "
            f"converted: {', '.join(map(repr, sorted(theirs)))}): not a conversion of one another"
        )
    for name, value in ours.items():
        other = theirs[name]
        if _kind(value.dtype) != _kind(other.dtype):
            raise InterfaceMismatchError(
                f"input {name!r} is {_dtype_text(value.dtype)} in the original and "
                f"{_dtype_text(other.dtype)} in the converted model"
            )
        if value.shape is None or other.shape is None:
            continue
        if len(value.shape) != len(other.shape) or any(
            isinstance(a, int) and isinstance(b, int) and a > 0 and b > 0 and a != b
            for a, b in zip(value.shape, other.shape, strict=False)
        ):
            raise InterfaceMismatchError(
                f"input {name!r} has shape {_shape_text(value.shape)} in the original and "
                f"{_shape_text(other.shape)} in the converted model"
            )


def _names(values) -> set[str]:
    return {value.name for value in values}


def _kind(dtype: ir.DataType | None) -> str:
    if dtype is None:
        return "?"
    return "float" if dtype.is_floating_point() else dtype.name


def _dtype_text(dtype: ir.DataType | None) -> str:
    return "untyped" if dtype is None else dtype.name.lower()


def _shape_text(shape: ir.Shape) -> str:
    return "[" + ", ".join(str(dim) for dim in shape) + "]"
