"""networkx exchange format of a CellSpec: the graph's structure is the cell.

`to_networkx(spec)` gives a `networkx.MultiDiGraph` in which everything that defines the cell is
structure or a scalar attribute of the node or edge it belongs to, so any networkx operation that
keeps the structure (relabelling, copying, composing with parts of the same cell, writing and
reading GraphML or node-link JSON) keeps the cell and its canonical hash:

- the input `x`: a node with `kind="input"` (and no `state`);
- the previous value of state vector k: a node with `kind="input", state=k` (labelled by its name);
- an op node: `kind="op"`, `op` and the op's options (`bias`, `bias_init`, ...) as attributes;
- one edge operand -> node per operand, with `pos` (its index in the operand list); a repeated
  operand (`mul(a, a)`) is two parallel edges, hence a multigraph;
- the new value of state vector k: a sink node with `kind="output", state=k` (labelled `h'`) and one
  in-edge from the node (or input) that holds it, so the marker moves with its node;
- graph attributes `format` and `name` (a label, not part of the cell's identity).

`from_networkx` reads it back. Node labels become the spec's names where they are identifiers
(`nx.relabel_nodes(g, {"i_lin": "gate"})` renames that node); any other label (an integer, after
`nx.convert_node_labels_to_integers`) gets a generated name. Attributes other than the ones above
are op options, so an unknown one is an error, not silently dropped. (The `inputs` attribute of
the previous layout, operand names, is ignored: it went stale under relabelling.)

Graphs built by hand may also use the older, name-based layout: no marker nodes, inputs labelled
`x` and by the state names listed in the graph attribute `state` (default ["h"]), and the graph
attribute `outputs` ({state: node label}). Edges then still carry `pos` (or `positions`, a list);
`pos` may be left out where the op is commutative.
"""

from __future__ import annotations

from typing import Any

import networkx as nx

from nas.cell.ops import OPS
from nas.cell.parts import IDENT, INPUT, MAX_NODES, MAX_STATE, Cell, CellError, Node, Parts, show, str_list

GRAPH_FORMAT = "nas-cell-graph/2"  # informative: the layout is recognised by its marker nodes
_RESERVED = {"op", "kind", "state", "inputs", "positions", "pos"}


def to_networkx(spec: Cell) -> nx.MultiDiGraph:
    """The cell as a MultiDiGraph in the layout of the module docstring."""
    g = nx.MultiDiGraph(format=GRAPH_FORMAT, name=spec.name)
    g.add_node(INPUT, kind="input")
    for k, s in enumerate(spec.state):
        g.add_node(s, kind="input", state=k)
    for n in spec.nodes:
        g.add_node(n.name, kind="op", op=n.op, **dict(n.options))
        for pos, operand in enumerate(n.inputs):
            g.add_edge(operand, n.name, pos=pos)
    for k, (s, out) in enumerate(zip(spec.state, spec.outputs)):
        g.add_node(f"{s}'", kind="output", state=k)
        g.add_edge(out, f"{s}'")
    return g


def from_networkx(graph: Any) -> Parts:
    """The parts of the cell a graph describes (either layout of the module docstring), for
    `CellSpec` to validate; CellError for a graph that describes none."""
    if not isinstance(graph, nx.DiGraph):
        raise CellError(f"cell: expected a networkx DiGraph, got {type(graph).__name__}")
    if graph.number_of_nodes() > MAX_NODES + 2 * MAX_STATE + 1:  # refused before any per-node work
        raise CellError(f"cell graph: at most {MAX_NODES} nodes are allowed (plus x and the state "
                        f"vectors), got {graph.number_of_nodes()}")
    marked = any(a.get("kind") in ("input", "output") for _, a in graph.nodes(data=True))
    state, names, outputs = _read_markers(graph) if marked else _read_names(graph)
    nodes = []
    for label, attrs in graph.nodes(data=True):
        if "op" not in attrs:
            continue
        options = sorted(((k, v) for k, v in attrs.items() if k not in _RESERVED), key=lambda kv: str(kv[0]))
        nodes.append(Node(names[label], str(attrs["op"]), tuple(_operands(graph, label, attrs, names)),
                          tuple(options)))
    label = graph.graph.get("name", "")
    label = label if isinstance(label, str) else show(label)
    return Parts(tuple(state), tuple(nodes), tuple(outputs), label)


def _read_markers(graph: nx.DiGraph) -> tuple[list[str], dict[Any, str], list[str]]:
    """State names, label -> name, and the new value of each state, from the marker nodes."""
    inputs: dict[int, Any] = {}
    sinks: dict[int, Any] = {}
    xs = []
    for label, attrs in graph.nodes(data=True):
        kind = attrs.get("kind", "op" if "op" in attrs else None)
        if "op" in attrs and kind == "op":
            continue
        if kind not in ("input", "output") or "op" in attrs:
            raise CellError(f"node {show(label)}: expected an op node (with 'op') or a marker "
                            f"(kind 'input' or 'output'), got kind {show(kind)}")
        if kind == "input" and "state" not in attrs:
            xs.append(label)
            continue
        k = attrs.get("state")
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < MAX_STATE:
            raise CellError(f"node {show(label)}: 'state' must be a state index 0..{MAX_STATE - 1}, "
                            f"got {show(k)}")
        table = inputs if kind == "input" else sinks
        if k in table:
            raise CellError(f"nodes {show(table[k])} and {show(label)}: both are the {kind} marker "
                            f"of state {k}")
        table[k] = label
    if len(xs) > 1:
        raise CellError(f"nodes {show(xs[0])} and {show(xs[1])}: both are marked as the input {INPUT!r}")
    want = list(range(len(sinks)))
    if sorted(sinks) != want or sorted(inputs) != want:
        raise CellError(f"cell graph: expected input and output markers for the states 0..{len(sinks) - 1} "
                        f"once each, got inputs {sorted(inputs)} and outputs {sorted(sinks)}")
    names = _names(graph, xs, [inputs[k] for k in want])
    outputs = []
    for k in want:
        sources = [src for src, _ in graph.in_edges(sinks[k])]
        if len(sources) != 1 or sources[0] in sinks.values():
            raise CellError(f"output marker {show(sinks[k])} (state {k}): expected one in-edge from "
                            f"the node holding the new value, got {len(sources)}")
        outputs.append(names[sources[0]])
    return [names[inputs[k]] for k in want], names, outputs


def _names(graph: nx.DiGraph, xs: list[Any], states: list[Any]) -> dict[Any, str]:
    """label -> spec name: the label where it is a free identifier, else a generated name."""
    names = {label: INPUT for label in xs}
    taken = {INPUT}
    pending = []
    for label in states + [n for n, a in graph.nodes(data=True) if "op" in a]:
        if isinstance(label, str) and IDENT.match(label) and label not in taken:
            names[label] = label
            taken.add(label)
        else:
            pending.append(label)
    counter = 0
    for label in pending:
        prefix = "s" if label in states else "n"
        while f"{prefix}{counter}" in taken:
            counter += 1
        names[label] = f"{prefix}{counter}"
        taken.add(names[label])
    return names


def _read_names(graph: nx.DiGraph) -> tuple[list[str], dict[Any, str], list[str]]:
    """The name-based layout (no markers): inputs by label, outputs from the graph attribute."""
    # Checked like the JSON field: a non-list raised TypeError, a string "hc" became ("h", "c").
    state = str_list(graph.graph.get("state", ["h"]), "cell graph: 'state'")
    outputs = graph.graph.get("outputs")
    if not isinstance(outputs, dict):
        raise CellError("cell graph: no marker nodes (kind 'input'/'output') and no graph attribute "
                        "'outputs' ({state: node}) says which node holds each new state")
    missing = [s for s in state if s not in outputs]
    if missing:
        raise CellError(f"state {missing[0]!r}: no entry in the graph's 'outputs' gives its new value")
    names = {}
    for label, attrs in graph.nodes(data=True):
        if "op" not in attrs and label != INPUT and label not in state:
            raise CellError(f"node {show(label)}: has no 'op' and is not {INPUT!r} or a state vector")
        names[label] = str(label)
    # str() as in CellSpec.from_dict: an unhashable value would fail as TypeError in pruning.
    return state, names, [str(outputs[s]) for s in state]


def _operands(graph: nx.DiGraph, label: Any, attrs: dict[str, Any], names: dict[Any, str]) -> list[str]:
    """The node's operands, in order, from its in-edges' `pos` / `positions`."""
    placed: list[tuple[Any, str]] = []
    for src, _, data in graph.in_edges(label, data=True):
        if src not in names:
            raise CellError(f"node {show(label)}: operand {show(src)} is an output marker, not a value")
        positions = data.get("positions", [data["pos"]] if "pos" in data else [None])
        if not isinstance(positions, (list, tuple)):  # was a TypeError below
            raise CellError(f"node {show(label)}: the edge from {show(src)} has positions "
                            f"{show(positions)}, expected a list of operand indices")
        placed.extend((p, names[src]) for p in positions)
    if not placed and "inputs" in attrs:
        raise CellError(f"node {show(label)}: operands are the node's in-edges (with 'pos'), "
                        "not its 'inputs' attribute")
    if any(p is None for p, _ in placed):
        op = OPS.get(str(attrs["op"]))
        if op is not None and not op.commutative and len(placed) > 1:
            raise CellError(f"node {show(label)}: op {op.name!r} is not commutative, so its in-edges need "
                            "a 'pos' attribute")
        return [src for _, src in placed]
    # Positions must number the operands 0..n-1: mixed types made sorted() raise TypeError, and
    # gaps or repeats silently dropped or reordered operands.
    positions = [p for p, _ in placed]
    if (not all(isinstance(p, int) and not isinstance(p, bool) for p in positions)
            or sorted(positions) != list(range(len(positions)))):
        raise CellError(f"node {show(label)}: in-edge positions must be the integers "
                        f"0..{len(positions) - 1} once each, got {sorted(positions, key=repr)}")
    return [src for _, src in sorted(placed)]
