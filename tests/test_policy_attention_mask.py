"""policy/attention_mask.py: a huge-negative constant reaching a Softmax through element-wise ops
is a mask (clamped, not kept FP32); anything else on the way, or too deep, is not."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from pass_support import model

from mpcompile.core.precision import low_precision_format
from mpcompile.core.ranges import ConstantRanges
from mpcompile.policy.attention_mask import MASK_SEARCH_DEPTH, mask_softmaxes


def _mask_and_range(body: str):
    converted = model(
        "g (float[4] x) => (float[4] y) <float[4] mask = {0, 0, -1e9, -1e9}> {\n" + body + "\n}"
    )
    mask = converted.graph.initializers["mask"]
    return converted, mask, ConstantRanges(low_precision_format("fp16")).of(mask)


def test_mask_through_add_reaches_its_softmax():
    _, mask, measured = _mask_and_range("[add] s = Add(x, mask)\n[sm] y = Softmax(s)")
    assert [node.name for node in mask_softmaxes(mask, measured, lambda node: True)] == ["sm"]


def test_an_op_off_the_path_list_or_not_following_ends_it():
    _, mask, measured = _mask_and_range("[exp] s = Exp(mask)\n[sm] y = Softmax(s)")
    assert mask_softmaxes(mask, measured, lambda node: True) == []
    _, mask, measured = _mask_and_range("[add] s = Add(x, mask)\n[sm] y = Softmax(s)")
    assert mask_softmaxes(mask, measured, lambda node: False) == []


def test_paths_deeper_than_the_search_depth_do_not_count():
    chain = ["[a0] s0 = Add(x, mask)"]
    chain += [f"[a{i}] s{i} = Identity(s{i - 1})" for i in range(1, MASK_SEARCH_DEPTH + 1)]
    chain.append(f"[sm] y = Softmax(s{MASK_SEARCH_DEPTH})")
    _, mask, measured = _mask_and_range("\n".join(chain))
    assert mask_softmaxes(mask, measured, lambda node: True) == []


def test_huge_positive_values_are_not_a_mask():
    _, mask, _ = _mask_and_range("[add] s = Add(x, mask)\n[sm] y = Softmax(s)")
    mask.const_value = ir.tensor(np.array([0, 0, 1e9, -1e9], np.float32))
    measured = ConstantRanges(low_precision_format("fp16")).of(mask)
    assert measured.overflowing_positive == 1
    assert mask_softmaxes(mask, measured, lambda node: True) == []
