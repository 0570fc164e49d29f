"""Reason codes stamped by ``--auto`` (alongside those of ``mpcompile.core.plan.Reason``).

Nodes the automatic search keeps in FP32 carry one of these in ``mpcompile.reason``; the
``mpcompile.rule`` says which measurement decided it.
"""

from __future__ import annotations

from mpcompile.core.plan import Reason

AUTO_RANGE = Reason.AUTO_RANGE
AUTO_SENSITIVITY = Reason.AUTO_SENSITIVITY
