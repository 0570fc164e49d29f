"""Precision policy: op classes plus user overrides."""

from mpcompile.policy.policy import OpClass, Policy
from mpcompile.policy.policy_file import PolicyFile, read_policy_file

__all__ = ["OpClass", "Policy", "PolicyFile", "read_policy_file"]
