"""The base of the conversion passes: an in-place onnx-ir pass holding the conversion context."""

from __future__ import annotations

import onnx_ir as ir

from mpcompile.core.context import ConversionContext


class ConversionPass(ir.passes.InPlacePass):
    """An in-place pass that reads options from, and reports into, one ``ConversionContext``."""

    def __init__(self, context: ConversionContext):
        super().__init__()
        self.context = context

    def __repr__(self) -> str:  # PassError messages name passes by repr()
        return f"{type(self).__name__}()"
