"""policy/integer_casts.py: a Cast from integers to float starts low-precision paths only with
measured_casts, and only where --auto measured the values."""

from __future__ import annotations

from pass_support import model

from mpcompile.policy.integer_casts import casts_integers_to_float, starts_low_path


def _casts():
    converted = model(
        """
g (int64[3] i, float16[3] h) => (float[3] a, float[3] b) {
  [from_int] a = Cast <to = 1> (i)
  [from_half] b = Cast <to = 1> (h)
}
"""
    )
    return {node.name: node for node in converted.graph}


def test_only_casts_from_non_float_types_count():
    nodes = _casts()
    assert casts_integers_to_float(nodes["from_int"])
    assert not casts_integers_to_float(nodes["from_half"])


def test_the_rule_needs_measured_casts_and_a_measured_graph():
    cast = _casts()["from_int"]
    assert starts_low_path(cast, measured_casts=True, measured=True)
    assert not starts_low_path(cast, measured_casts=False, measured=True)
    assert not starts_low_path(cast, measured_casts=True, measured=False)
