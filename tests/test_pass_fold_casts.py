"""FoldCastsPass alone: identity Casts, lossless round trips and duplicates fold; FP32->FP16->FP32
(which rounds) and Casts producing graph outputs stay."""

from __future__ import annotations

from pass_support import context, model

from mpcompile.passes.fold_casts import FoldCastsPass


def _ops(text: str) -> list[str]:
    converted = model(text)
    FoldCastsPass(context())(converted)
    return [node.op_type for node in converted.graph]


ROUND_TRIP = """
g ({dtype}[3] x) => ({dtype}[3] y) {{
  a = Cast <to = {wide}> (x)
  b = Cast <to = {back}> (a)
  y = Relu(b)
}}
"""


def test_lossless_round_trip_folds():
    assert _ops(ROUND_TRIP.format(dtype="float16", wide=1, back=10)) == ["Relu"]


def test_rounding_round_trip_stays():
    assert _ops(ROUND_TRIP.format(dtype="float", wide=10, back=1)) == ["Cast", "Cast", "Relu"]


def test_identity_cast_folds_and_counts():
    converted = model(
        """
g (float[3] x) => (float[3] y) {
  a = Cast <to = 1> (x)
  y = Relu(a)
}
"""
    )
    ctx = context()
    assert FoldCastsPass(ctx)(converted).modified
    assert [node.op_type for node in converted.graph] == ["Relu"] and ctx.stats.casts_folded == 1
