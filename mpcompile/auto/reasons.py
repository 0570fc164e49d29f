"""Reason codes stamped by ``--auto`` (alongside those of ``mpcompile.plan.Reason``).

Nodes the automatic search keeps in FP32 carry one of these in ``mpcompile.reason``; the
``mpcompile.rule`` says which measurement decided it.
"""

from __future__ import annotations

AUTO_RANGE = "auto:range"  # FP32 reference values or reduction depth unsafe in low precision
AUTO_SENSITIVITY = "auto:sensitivity"  # the accuracy search had to keep it FP32 to meet the tolerance

AUTO_REASONS = (AUTO_RANGE, AUTO_SENSITIVITY)
