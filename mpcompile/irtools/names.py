"""The one name authority: every node, value and initializer name mpcompile generates comes from
a ``NameAuthority``, so generated names never collide with the model's or with each other
(two unnamed multi-axis Unsqueezes once both asked for ``Unsqueeze_axis0_axes``)."""

from __future__ import annotations

import onnx_ir as ir

from mpcompile.irtools.graphs import model_graphs


class NameAuthority:
    """Hands out names not used anywhere in the model (all graphs and functions).

    ``unique(base)`` returns ``base`` itself when it is free, else ``base_1``, ``base_2``, ...;
    each name it returns is taken from then on. Made without a model, it reads the names of the
    model it is first ``bind``-ed to: a pipeline's passes name things in the model they are given,
    which is not the one the pipeline was built for once a pass returns a new model (--optimize).
    """

    def __init__(self, model: ir.Model | None = None):
        self._used: set[str] | None = None
        # Per base, the suffix to try next: names are never released, so every smaller suffix is
        # still taken (one base asked for 10k times costs 10k probes, not 50M).
        self._next: dict[str, int] = {}
        if model is not None:
            self.bind(model)

    def bind(self, model: ir.Model) -> None:
        """Take every name ``model`` uses, unless this authority has read a model already."""
        if self._used is not None:
            return
        self._used = set()
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
        assert self._used is not None, "NameAuthority.bind(model) before unique()"
        counter = self._next.get(base, 0)  # 0: base itself
        name = f"{base}_{counter}" if counter else base
        while name in self._used:
            counter += 1
            name = f"{base}_{counter}"
        self._next[base] = counter + 1
        self._used.add(name)
        return name
