"""policy/op_classes.py: the default lists are disjoint and the measurable ops are block ops."""

from __future__ import annotations

from mpcompile.policy import op_classes


def test_the_default_classes_are_disjoint():
    classes = [op_classes.ALLOW, op_classes.FOLLOW, op_classes.PASS_THROUGH, op_classes.BLOCK]
    for index, first in enumerate(classes):
        for second in classes[index + 1 :]:
            assert not set(first) & set(second)


def test_measurable_ops_are_on_the_block_list():
    assert op_classes.MEASURABLE <= op_classes.BLOCK
    assert ("", "MatMul") in op_classes.ALLOW and ("", "Exp") in op_classes.BLOCK
