"""Graph facts the search needs: unique node names, float producers, connected low-precision regions.

The search addresses nodes by name (``node_overrides``), so every node needs a unique one:
``name_nodes`` names unnamed nodes ``auto/<OpType>_<index>`` (index in the main graph's order,
or ``<graph>/<index>`` in subgraphs) and renames duplicates ``<name>__<index>``, on the private
copy the search works on; the returned model keeps those names.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx_ir as ir

from mpcompile.irtools.graphs import all_graphs


def name_nodes(model: ir.Model) -> int:
    """Give every node (all graphs and functions) a unique name, in place; returns how many changed."""
    graphs = [graph for graph, _ in all_graphs(model, every_function=True)]
    taken = {node.name for graph in graphs for node in graph if node.name}
    seen: set[str] = set()
    renamed = 0
    for graph_index, graph in enumerate(graphs):
        prefix = "auto" if graph_index == 0 else f"auto/g{graph_index}"
        for index, node in enumerate(graph):
            if node.name and node.name not in seen:
                seen.add(node.name)
                continue
            base = f"{node.name}__{index}" if node.name else f"{prefix}/{node.op_type}_{index}"
            name, suffix = base, 0
            while name in taken or name in seen:
                suffix += 1
                name = f"{base}_{suffix}"
            node.name = name
            taken.add(name)
            seen.add(name)
            renamed += 1
    return renamed


def main_nodes(model: ir.Model) -> dict[str, ir.Node]:
    """Main-graph nodes by name (names must be unique: see ``name_nodes``)."""
    return {node.name: node for node in model.graph if node.name}


def producers(node: ir.Node) -> list[ir.Node]:
    """Nodes producing the inputs of ``node`` (graph inputs and initializers have none)."""
    result = []
    for value in node.inputs:
        producer = value.producer() if value is not None else None
        if producer is not None and producer not in result:
            result.append(producer)
    return result


def connected_regions(nodes: dict[str, ir.Node], low: Iterable[str]) -> list[list[str]]:
    """Connected components of the ``low`` nodes (edges: one feeds the other), in graph order."""
    wanted = set(low)
    low_names = [name for name in nodes if name in wanted]
    low_set = set(low_names)
    parent = {name: name for name in low_names}

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for name in low_names:
        for producer in producers(nodes[name]):
            if producer.name in low_set:
                root_a, root_b = find(name), find(producer.name)
                if root_a != root_b:
                    parent[root_b] = root_a
    regions: dict[str, list[str]] = {}
    for name in low_names:
        regions.setdefault(find(name), []).append(name)
    return list(regions.values())
