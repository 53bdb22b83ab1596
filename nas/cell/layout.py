"""Where each part of a cell's picture goes (nas.cell.draw draws it): a Sugiyama-style layered
layout, in inches, with no plotting library. See draw.py's docstring for the method."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations, pairwise

import numpy as np

from nas.cell.ops import OPS
from nas.cell.parts import INPUT, Node
from nas.cell.spec import CellSpec

# One colour per input (x + at most 8 state vectors) for its node border and its outgoing edges.
INPUT_COLOURS = ("#5e3c99", "#00897b", "#b8860b", "#c2185b", "#3949ab", "#6d4c41", "#7cb342",
                 "#f4511e", "#546e7a")
EDGE_COLOUR = "#505050"
# Operand marks of the non-commutative ops whose operands have conventional names.
_MARKS = {"sub": ("+", "−"), "blend": ("z", "a", "b")}

# Sizes in inches (one data unit) and points.
_GAP_X, _GAP_Y = 0.75, 0.3
_BOX_H, _MIN_W = 0.5, 0.6
LABEL_PT, NAME_PT = 11, 6.5
_MAX_NAME = 16


@dataclass
class Item:
    """A box (input, op node, output) or an edge waypoint ("dummy") in the layout."""

    key: str
    layer: int
    kind: str
    gid: str = ""  # the box's id in SVG output
    label: str = ""
    name: str = ""
    width: float = 0.0
    height: float = 0.0
    x: float = 0.0
    y: float = 0.0


@dataclass
class Edge:
    chain: list[str]  # source key, waypoint keys, target key
    mark: str
    colour: str


def layout(spec: CellSpec) -> tuple[dict[str, Item], list[Edge]]:
    """Items (boxes and waypoints) with their layer and centre (x, y) in inches, y downwards."""
    items, edges = _build(spec)
    _place(items, _order(items, edges), edges)
    return items, edges


# -- graph -> layered items ----------------------------------------------------------------------
def _kind(op_name: str) -> str:
    op = OPS[op_name]
    if op.has_weights:
        return "linear"
    return "act" if op.arity == (1, 1) else "arith"


def _marks(node: Node) -> tuple[str, ...]:
    op = OPS[node.op]
    n = len(node.inputs)
    if op.commutative or n < 2:
        return ("",) * n
    return _MARKS.get(op.name, tuple(str(i + 1) for i in range(n)))


def _math_label(name: str, time: str) -> str:
    body = name if len(name) == 1 else r"\mathrm{" + name.replace("_", r"\_") + "}"
    return f"${body}_{{{time}}}$"


def _box_size(label: str, name: str, operands: int, marked: bool) -> tuple[float, float]:
    # Text widths are estimated from character counts (about 0.6 em per character), which is
    # fast and close enough for DejaVu Sans; mathtext labels count their visible characters.
    visible = label.replace("$", "").replace("\\mathrm", "").replace("{", "").replace("}", "")
    text_w = max(len(visible) * 0.6 * LABEL_PT, len(name) * 0.6 * NAME_PT) / 72
    port_h = 0.17 if marked else 0.08
    return max(_MIN_W, text_w + 0.22), max(_BOX_H, port_h * (operands + 1))


def _build(spec: CellSpec) -> tuple[dict[str, Item], list[Edge]]:
    """Items keyed by input name, node name, "<state>'" (outputs) and "~<n>" (waypoints)."""
    depth = {name: 0 for name in spec.inputs}
    for n in spec.nodes:
        depth[n.name] = 1 + max(depth[i] for i in n.inputs)
    items: dict[str, Item] = {}
    for name in spec.inputs:
        items[name] = Item(name, 0, "input", f"input-{name}",
                            _math_label(name, "t" if name == INPUT else "t-1"))
    operands: list[tuple[str, str, str]] = []
    for n in spec.nodes:
        symbol = OPS[n.op].symbol or n.op
        short = n.name if len(n.name) <= _MAX_NAME else n.name[:_MAX_NAME - 1] + "…"
        items[n.name] = Item(n.name, depth[n.name], _kind(n.op), f"node-{n.name}",
                              "−" if symbol == "-" else symbol, short)
        operands += [(i, n.name, m) for i, m in zip(n.inputs, _marks(n))]
    last = max(depth.values()) + 1
    for s, out in zip(spec.state, spec.outputs):
        items[f"{s}'"] = Item(f"{s}'", last, "output", f"output-{s}", _math_label(s, "t"))
        operands.append((out, f"{s}'", ""))
    colours = dict(zip(spec.inputs, INPUT_COLOURS))
    edges = []
    for src, dst, mark in operands:
        chain = [src]
        for layer in range(items[src].layer + 1, items[dst].layer):
            chain.append(f"~{len(items)}")
            items[chain[-1]] = Item(chain[-1], layer, "dummy")
        edges.append(Edge(chain + [dst], mark, colours.get(src, EDGE_COLOUR)))
    fan_in = defaultdict(list)
    for e in edges:
        fan_in[e.chain[-1]].append(e.mark)
    for it in items.values():
        if it.kind != "dummy":
            marks = fan_in[it.key]
            it.width, it.height = _box_size(it.label, it.name, len(marks), any(marks))
    return items, edges


# -- ordering within layers ----------------------------------------------------------------------
def _neighbours(edges: list[Edge]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    preds: dict[str, list[str]] = defaultdict(list)
    succs: dict[str, list[str]] = defaultdict(list)
    for e in edges:
        for u, v in pairwise(e.chain):
            succs[u].append(v)
            preds[v].append(u)
    return preds, succs


def _crossings(layers: list[list[str]], succs: dict[str, list[str]]) -> int:
    total = 0
    for upper, lower in pairwise(layers):
        pos = {k: i for i, k in enumerate(lower)}
        segs = [(i, pos[v]) for i, u in enumerate(upper) for v in succs[u]]
        total += sum((a - c) * (b - d) < 0 for (a, b), (c, d) in combinations(segs, 2))
    return total


def _order(items: dict[str, Item], edges: list[Edge], sweeps: int = 12) -> list[list[str]]:
    """Order each layer by the barycenter of its neighbours' positions, sweeping down and up.

    The inputs keep their natural order (x, then the state in order); the ordering with the
    fewest crossings seen is returned.
    """
    layers: list[list[str]] = [[] for _ in range(1 + max(it.layer for it in items.values()))]
    for key, it in items.items():  # insertion order: inputs, nodes in topological order, ...
        layers[it.layer].append(key)
    preds, succs = _neighbours(edges)
    best, best_crossings = [list(layer) for layer in layers], _crossings(layers, succs)
    for sweep in range(sweeps):
        down = sweep % 2 == 0
        for li in range(1, len(layers)) if down else range(len(layers) - 2, 0, -1):
            layers[li] = _by_barycenter(layers[li], layers[li - 1 if down else li + 1],
                                        preds if down else succs)
        crossings = _crossings(layers, succs)
        if crossings < best_crossings:
            best, best_crossings = [list(layer) for layer in layers], crossings
    return best


def _by_barycenter(keys: list[str], ref_layer: list[str], nbrs: dict[str, list[str]]) -> list[str]:
    """`keys` sorted by the mean position of their neighbours in `ref_layer` (stable; a key
    without neighbours there keeps its own position)."""
    ref = {k: i for i, k in enumerate(ref_layer)}
    bary = [sum(ref[n] for n in nbrs[k]) / len(nbrs[k]) if nbrs[k] else i for i, k in enumerate(keys)]
    return [k for _, k in sorted(zip(bary, keys), key=lambda pair: pair[0])]


# -- coordinates ---------------------------------------------------------------------------------
def _pack(desired: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """The y closest (least squares) to `desired` with y[i+1] - y[i] >= gaps[i] (pool adjacent
    violators on y minus the cumulative gaps)."""
    offsets = np.concatenate([[0.0], np.cumsum(gaps)])
    blocks: list[list[float]] = []  # [mean, count]
    for v in desired - offsets:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, n2 = blocks.pop()
            v1, n1 = blocks.pop()
            blocks.append([(v1 * n1 + v2 * n2) / (n1 + n2), n1 + n2])
    return np.concatenate([[m] * int(n) for m, n in blocks]) + offsets


def _gap(a: Item, b: Item) -> float:
    """Least distance between the centres of neighbours in a column: a full gap between two
    boxes, two thirds of it between a box and a waypoint, one third between two waypoints."""
    boxes = (a.kind != "dummy") + (b.kind != "dummy")
    return (a.height + b.height) / 2 + _GAP_Y * (boxes + 1) / 3


def _place(items: dict[str, Item], layers: list[list[str]], edges: list[Edge], rounds: int = 16) -> None:
    """Set x by layer (columns as wide as their widest box) and y by repeated neighbour averaging."""
    preds, succs = _neighbours(edges)
    x, prev_w = 0.0, 0.0
    gaps = []
    for li, keys in enumerate(layers):
        w = max([items[k].width for k in keys] + [0.3])
        x += (prev_w / 2 + _GAP_X + w / 2) if li else w / 2
        prev_w = w
        its = [items[k] for k in keys]
        for it in its:
            if it.kind == "dummy":  # an edge crosses the column horizontally, clear of its boxes
                it.width = w
        gaps.append(np.array([_gap(a, b) for a, b in pairwise(its)]))
        for it, y in zip(its, _pack(np.zeros(len(its)), gaps[li]) - gaps[li].sum() / 2):
            it.x, it.y = x, y
    for r in range(rounds):
        # Down sweeps pull towards predecessors, up sweeps towards successors; the last rounds
        # use both, which centres a node between what it reads and what reads it.
        both = r >= rounds - 2
        order = range(1, len(layers)) if r % 2 == 0 else range(len(layers) - 2, -1, -1)
        for li in order:
            its = [items[k] for k in layers[li]]
            desired = []
            for it in its:
                ns = preds[it.key] + succs[it.key] if both else (preds if r % 2 == 0 else succs)[it.key]
                desired.append(np.mean([items[n].y for n in ns]) if ns else it.y)
            for it, y in zip(its, _pack(np.array(desired), gaps[li])):
                it.y = y
