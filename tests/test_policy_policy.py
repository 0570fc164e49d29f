"""policy/policy.py: the default op classes plus the user's overrides; block_nodes compiled once."""

from __future__ import annotations

import pytest

from mpcompile.errors import PolicyError
from mpcompile.policy import OpClass, Policy


def test_user_lists_win_over_the_defaults():
    policy = Policy.from_options(allow_ops=["Exp"], block_ops=["MatMul"])
    assert policy.classify("", "Exp").op_class == OpClass.ALLOW
    assert policy.classify("", "MatMul").rule == "user.block_ops[MatMul]"
    assert Policy().classify("", "MatMul").rule == "policy.allow[MatMul]"
    assert Policy().classify("", "NoSuchOp").op_class == OpClass.UNLISTED


def test_measured_ops_follow_only_where_measured():
    policy = Policy.from_options(measured_ops=["Exp"])
    assert policy.classify("", "Exp").rule == "auto.measured[Exp]"
    assert policy.classify("", "Exp", measured=False).op_class == OpClass.BLOCK


def test_block_nodes_match_whole_names_or_exactly():
    policy = Policy.from_options(block_nodes=["enc.*/mm", "a+b"])
    assert policy.node_blocked("enc1/mm") == "enc.*/mm"
    assert policy.node_blocked("enc1/mm2") is None
    assert policy.node_blocked("a+b") == "a+b"  # the exact name, though a regex would not match it
    assert policy.node_blocked("aab") == "a+b"


def test_block_node_patterns_are_compiled_once(monkeypatch):
    import re

    policy = Policy.from_options(block_nodes=[f"n{i}" for i in range(600)])
    calls = []
    monkeypatch.setattr(re, "compile", lambda *args: calls.append(args))
    assert policy.node_blocked("n599") == "n599" and policy.node_blocked("x") is None
    assert calls == []


def test_invalid_pattern_and_contradictions_are_refused():
    with pytest.raises(PolicyError, match="invalid --block-node pattern"):
        Policy.from_options(block_nodes=["("])
    with pytest.raises(PolicyError, match="both allowed and blocked"):
        Policy.from_options(allow_ops=["Exp"], block_ops=["Exp"])
