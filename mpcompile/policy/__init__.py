"""Precision policy: op classes plus user overrides."""

from mpcompile.policy.policy import OpClass, Policy, load_policy_file

__all__ = ["OpClass", "Policy", "load_policy_file"]
