"""Apply a precision plan: retype the nodes, convert the constants, insert the Casts.

The rewrite half of the pipeline. ``ApplyPrecisionPass`` is a ``Sequential`` of three passes
that each read only the plan (``mpcompile.core.plan.PrecisionPlan``) and the model, so each can
also run alone (the pass manager times, checks and dumps each step on its own):

1. ``RetypeNodesPass`` (``retype_nodes``): converted outputs and dtype-carrying attributes of the
   low-precision nodes, and the graph inputs that go low precision (keep_io_types);
2. ``ConvertConstantsPass`` (``convert_constants``): float constants read in low precision,
   and the attention masks the plan says to clamp;
3. ``InsertCastsPass`` (``insert_casts``): a Cast wherever an input's dtype is not the one the
   plan requires, and to the planned dtype at graph outputs.
"""

from __future__ import annotations

import onnx_ir as ir

from mpcompile.core.casts import CastFactory
from mpcompile.core.plan import PrecisionPlan
from mpcompile.irtools.names import NameAuthority
from mpcompile.passes.context import ConversionContext
from mpcompile.passes.convert_constants import ConvertConstantsPass
from mpcompile.passes.insert_casts import InsertCastsPass
from mpcompile.passes.retype_nodes import RetypeNodesPass


class ApplyPrecisionPass(ir.passes.Sequential):
    """Retype, convert constants, insert Casts: the plan made real (one pass of three steps)."""

    def __init__(self, context: ConversionContext, plan: PrecisionPlan, names: NameAuthority):
        super().__init__(
            RetypeNodesPass(context, plan),
            ConvertConstantsPass(context, plan, names),
            InsertCastsPass(context, plan, CastFactory(names)),
        )

    def __repr__(self) -> str:
        return "ApplyPrecisionPass()"
