"""The one name authority: every node, value and initializer name mpcompile generates comes from
a ``NameAuthority``, so generated names never collide with the model's or with each other
(two unnamed multi-axis Unsqueezes once both asked for ``Unsqueeze_axis0_axes``)."""

from __future__ import annotations

import onnx_ir as ir

from mpcompile.irtools.graphs import model_graphs


class NameAuthority:
    """Hands out names not used anywhere in the model (all graphs and functions).

    ``unique(base)`` returns ``base`` itself when it is free, else ``base_1``, ``base_2``, ...;
    each name it returns is taken from then on.
    """

    def __init__(self, model: ir.Model):
        self._used: set[str] = set()
        for graph in (*model_graphs(model), *model.functions.values()):
            for value in getattr(graph, "inputs", ()):
                self._used.add(value.name or "")
            for value in getattr(graph, "initializers", {}).values():
                self._used.add(value.name or "")
            for node in graph:
                self._used.add(node.name or "")
                for value in node.outputs:
                    self._used.add(value.name or "")

    def unique(self, base: str) -> str:
        name, counter = base, 1
        while name in self._used:
            name = f"{base}_{counter}"
            counter += 1
        self._used.add(name)
        return name
