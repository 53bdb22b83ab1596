"""networkx exchange format of a CellSpec (for analysis and for users who build graphs by hand).

Layout of the DiGraph:
- graph attributes: `format`, `name`, `state` (list of state names), `outputs` ({state: node});
- input nodes `x` and one per state name, with attribute `kind="input"`;
- op nodes with attributes `op`, `inputs` (operand list, the truth for operand order and
  repeats) and the op's options;
- an edge operand -> node for each distinct operand, with attribute `positions` (operand indices).

`from_networkx` also accepts graphs without the `inputs` attribute: operands are then read from
the in-edges, ordered by their `pos` / `positions` attribute (needed for non-commutative ops).
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from nas.cell.ops import OPS
from nas.cell.spec import FORMAT, INPUT, MAX_NODES, MAX_STATE, CellError, CellSpec, Node, _str_list

_RESERVED = {"op", "inputs", "kind", "positions", "pos"}


def to_networkx(spec: CellSpec) -> nx.DiGraph:
    g = nx.DiGraph(format=FORMAT, name=spec.name, state=list(spec.state),
                   outputs=dict(zip(spec.state, spec.outputs)))
    for name in spec.inputs:
        g.add_node(name, kind="input")
    for n in spec.nodes:
        g.add_node(n.name, kind="op", op=n.op, inputs=list(n.inputs), **dict(n.options))
        for pos, operand in enumerate(n.inputs):
            if g.has_edge(operand, n.name):
                g.edges[operand, n.name]["positions"].append(pos)
            else:
                g.add_edge(operand, n.name, positions=[pos])
    return g


def from_networkx(graph: Any) -> CellSpec:
    if not isinstance(graph, nx.DiGraph):
        raise CellError(f"cell: expected a networkx DiGraph, got {type(graph).__name__}")
    if graph.number_of_nodes() > MAX_NODES + MAX_STATE + 1:  # refused before any per-node work
        raise CellError(f"cell graph: at most {MAX_NODES} nodes are allowed (plus x and the state "
                        f"vectors), got {graph.number_of_nodes()}")
    # Checked like the JSON field: a non-list raised TypeError, a string "hc" became ("h", "c").
    state = _str_list(graph.graph.get("state", ["h"]), "cell graph: 'state'")
    outputs = graph.graph.get("outputs")
    if not isinstance(outputs, dict):
        raise CellError("cell graph: graph attribute 'outputs' ({state: node}) is missing")
    missing = [s for s in state if s not in outputs]
    if missing:
        raise CellError(f"state {missing[0]!r}: no entry in the graph's 'outputs' gives its new value")
    nodes = []
    for name, attrs in graph.nodes(data=True):
        if "op" not in attrs:
            if name != INPUT and name not in state:
                raise CellError(f"node {name!r}: has no 'op' and is not {INPUT!r} or a state vector")
            continue
        nodes.append(Node(str(name), str(attrs["op"]), tuple(_operands(graph, name, attrs)),
                          tuple(sorted((k, v) for k, v in attrs.items() if k not in _RESERVED))))
    # str() as in CellSpec.from_dict: an unhashable value would fail as TypeError in pruning.
    return CellSpec(tuple(state), tuple(nodes), tuple(str(outputs[s]) for s in state),
                    str(graph.graph.get("name", "")))


def _operands(graph: nx.DiGraph, name: Any, attrs: dict[str, Any]) -> list[str]:
    if "inputs" in attrs:
        # Checked like the JSON 'in' list: a non-list raised TypeError.
        return _str_list(attrs["inputs"], f"node {name!r}: 'inputs'")
    placed: list[tuple[int, str]] = []
    for src, _, data in graph.in_edges(name, data=True):
        positions = data.get("positions", [data["pos"]] if "pos" in data else [None])
        if not isinstance(positions, (list, tuple)):  # was a TypeError below
            raise CellError(f"node {name!r}: the edge from {src!r} has positions {positions!r}, "
                            "expected a list of operand indices")
        placed.extend((p, str(src)) for p in positions)
    if any(p is None for p, _ in placed):
        op = OPS.get(str(attrs["op"]))
        if op is not None and not op.commutative and len(placed) > 1:
            raise CellError(f"node {name!r}: op {op.name!r} is not commutative, so its in-edges need "
                            "a 'pos' attribute (or give the node an 'inputs' list)")
        return [src for _, src in placed]
    # Positions must number the operands 0..n-1: mixed types made sorted() raise TypeError, and
    # gaps or repeats silently dropped or reordered operands.
    positions = [p for p, _ in placed]
    if (not all(isinstance(p, int) and not isinstance(p, bool) for p in positions)
            or sorted(positions) != list(range(len(positions)))):
        raise CellError(f"node {name!r}: in-edge positions must be the integers 0..{len(positions) - 1} "
                        f"once each, got {sorted(positions, key=repr)}")
    return [src for _, src in sorted(placed)]
