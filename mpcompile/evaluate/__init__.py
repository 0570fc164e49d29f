"""Evaluating models on CPU without hiding what low precision does to them.

``faithful.run`` evaluates a mixed-precision model with every FP16/BF16 node output rounded
to its declared type, as a GPU stores it; ``faithful.run_reference`` runs an FP32 model with
its intermediates exposed.
"""

from mpcompile.evaluate.faithful import (
    FaithfulSession,
    ReferenceSession,
    build_faithful_model,
    run,
    run_reference,
)

__all__ = ["FaithfulSession", "ReferenceSession", "build_faithful_model", "run", "run_reference"]
