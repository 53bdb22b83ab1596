"""Pictures of cells: `draw_cell(spec, path)` writes a PNG or SVG of a CellSpec, with matplotlib alone.

The picture reads left to right, one column per topological depth:

- first column: the inputs x_t and the previous state vectors h_{t-1}, c_{t-1}, ... (purple pills,
  each with its own border colour; the edges leaving an input share that colour, so the input and
  each state vector can be followed through the cell);
- op nodes: rounded boxes labelled with the op's registry symbol (W for `linear`, σ, tanh, +, ×,
  blend, ...) and, small, the node's name; filled by kind: blue for `linear` (the only op with
  weights), orange for arithmetic (combines several operands), green for activations (one operand);
- last column: one red pill per state vector, h_t, c_t, ..., fed by the node that gives its new
  value, or straight by an input when a state is passed through unchanged;
- edges: one arrow per operand (an operand read twice gets two arrows). Into non-commutative ops a
  small mark gives the operand's position: + and − for `sub` (a − b), z, a, b for
  `blend(z, a, b) = z·a + (1 − z)·b`, and 1, 2, ... for any other such op.

Layout (Sugiyama style): a node's column is its longest path from the inputs; an edge spanning
several columns runs through a waypoint in each column it crosses; the nodes and waypoints of a
column are ordered by a barycenter heuristic (the ordering with the fewest crossings is kept), then
placed vertically as near the mean of their neighbours as the spacing allows (isotonic regression),
so chains run straight. One data unit is one inch, so labels keep their size and the figure grows
with the cell.

Size limit: the layout's work grows faster than the cell (waypoints grow with the square of a
chain's length, crossing counts with the square of a column), so a cell of more than
MAX_DRAW_NODES nodes or MAX_DRAW_WAYPOINTS edge waypoints is drawn as a small card saying so
(a picture of hundreds of columns would be unreadable anyway). Either way `draw_cell` takes well
under a second.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations, pairwise
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
from matplotlib.path import Path as MplPath

from nas.cell.ops import OPS
from nas.cell.spec import INPUT, CellSpec, Node

FORMATS = (".png", ".svg")
DPI = 110
MAX_DRAW_NODES = 150
MAX_DRAW_WAYPOINTS = 1000

# kind: (fill, border, legend label). The op kinds are read off the registry (see `_kind`).
_KINDS = {
    "input": ("#ece6f7", "#5e3c99", "input / previous state"),
    "linear": ("#d5e5f6", "#2b6cb0", "linear (weights)"),
    "arith": ("#fde8cc", "#d9822b", "arithmetic"),
    "act": ("#daefd3", "#4f9a3f", "activation"),
    "output": ("#f8d5d5", "#c0392b", "new state"),
}
# One colour per input (x + at most 8 state vectors) for its node border and its outgoing edges.
_INPUT_COLOURS = ("#5e3c99", "#00897b", "#b8860b", "#c2185b", "#3949ab", "#6d4c41", "#7cb342",
                  "#f4511e", "#546e7a")
_EDGE_COLOUR = "#505050"
# Operand marks of the non-commutative ops whose operands have conventional names.
_MARKS = {"sub": ("+", "−"), "blend": ("z", "a", "b")}

# Sizes in inches (one data unit) and points.
_GAP_X, _GAP_Y = 0.75, 0.3
_BOX_H, _MIN_W, _MIN_FIG_W, _MARGIN, _HEAD, _FOOT = 0.5, 0.6, 7.0, 0.3, 0.7, 0.45
_LABEL_PT, _NAME_PT, _MARK_PT = 11, 6.5, 8
_MAX_NAME = 16


@dataclass
class _Item:
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
class _Edge:
    chain: list[str]  # source key, waypoint keys, target key
    mark: str
    colour: str


def draw_cell(spec: CellSpec, path: str | Path, title: str | None = None) -> Path:
    """Draw `spec` to `path` (PNG or SVG, chosen by the suffix) and return the path.

    Parent directories are created. `title` defaults to the cell's name. The figure is built
    without pyplot on an Agg canvas, so nothing is registered globally and nothing needs closing:
    drawing thousands of cells in a search does not accumulate figures. SVG text is kept as text
    (searchable); boxes carry ids `input-<name>`, `node-<name>` and `output-<state>`.
    """
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"draw_cell: expected a path ending in {' or '.join(FORMATS)}, got {str(path)!r}")
    too_large = _too_large(spec)
    if too_large:
        fig = _card(spec, too_large, title)
    else:
        items, edges = _layout(spec)
        fig = _figure(spec, items, edges, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "nas-cell"}):
        metadata = {"Date": None} if path.suffix.lower() == ".svg" else None
        fig.savefig(path, dpi=DPI, metadata=metadata)
    fig.clear()
    return path


def _too_large(spec: CellSpec) -> str:
    """Why the cell is too large to lay out ("" if it is not), counted in linear time."""
    if len(spec.nodes) > MAX_DRAW_NODES:
        return f"{len(spec.nodes)} nodes (the drawing's limit is {MAX_DRAW_NODES})"
    depth = {name: 0 for name in spec.inputs}
    waypoints = 0
    for n in spec.nodes:
        depth[n.name] = 1 + max(depth[i] for i in n.inputs)
    last = max(depth.values()) + 1
    for n in spec.nodes:
        waypoints += sum(depth[n.name] - depth[i] - 1 for i in n.inputs)
    waypoints += sum(last - depth[o] - 1 for o in spec.outputs)
    if waypoints > MAX_DRAW_WAYPOINTS:
        return f"{waypoints} edge waypoints (the drawing's limit is {MAX_DRAW_WAYPOINTS})"
    return ""


def _card(spec: CellSpec, reason: str, title: str | None) -> Figure:
    """The picture of a cell too large to draw: its title, size and why it is not drawn."""
    fig = Figure(figsize=(_MIN_FIG_W, 1.4))
    FigureCanvasAgg(fig)
    fig.text(0.04, 0.72, title if title is not None else spec.name or "cell", fontsize=13, fontweight="bold")
    fig.text(0.04, 0.45, f"{len(spec.nodes)} ops, {spec.num_linear_terms()} weight matrices; "
             f"state ({', '.join(spec.state)})", fontsize=8.5, color="#555555")
    fig.text(0.04, 0.2, f"not drawn: {reason}; its JSON has every node", fontsize=9)
    return fig


def _layout(spec: CellSpec) -> tuple[dict[str, _Item], list[_Edge]]:
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
    text_w = max(len(visible) * 0.6 * _LABEL_PT, len(name) * 0.6 * _NAME_PT) / 72
    port_h = 0.17 if marked else 0.08
    return max(_MIN_W, text_w + 0.22), max(_BOX_H, port_h * (operands + 1))


def _build(spec: CellSpec) -> tuple[dict[str, _Item], list[_Edge]]:
    """Items keyed by input name, node name, "<state>'" (outputs) and "~<n>" (waypoints)."""
    depth = {name: 0 for name in spec.inputs}
    for n in spec.nodes:
        depth[n.name] = 1 + max(depth[i] for i in n.inputs)
    items: dict[str, _Item] = {}
    for name in spec.inputs:
        items[name] = _Item(name, 0, "input", f"input-{name}",
                            _math_label(name, "t" if name == INPUT else "t-1"))
    operands: list[tuple[str, str, str]] = []
    for n in spec.nodes:
        symbol = OPS[n.op].symbol or n.op
        short = n.name if len(n.name) <= _MAX_NAME else n.name[:_MAX_NAME - 1] + "…"
        items[n.name] = _Item(n.name, depth[n.name], _kind(n.op), f"node-{n.name}",
                              "−" if symbol == "-" else symbol, short)
        operands += [(i, n.name, m) for i, m in zip(n.inputs, _marks(n))]
    last = max(depth.values()) + 1
    for s, out in zip(spec.state, spec.outputs):
        items[f"{s}'"] = _Item(f"{s}'", last, "output", f"output-{s}", _math_label(s, "t"))
        operands.append((out, f"{s}'", ""))
    colours = dict(zip(spec.inputs, _INPUT_COLOURS))
    edges = []
    for src, dst, mark in operands:
        chain = [src]
        for layer in range(items[src].layer + 1, items[dst].layer):
            chain.append(f"~{len(items)}")
            items[chain[-1]] = _Item(chain[-1], layer, "dummy")
        edges.append(_Edge(chain + [dst], mark, colours.get(src, _EDGE_COLOUR)))
    fan_in = defaultdict(list)
    for e in edges:
        fan_in[e.chain[-1]].append(e.mark)
    for it in items.values():
        if it.kind != "dummy":
            marks = fan_in[it.key]
            it.width, it.height = _box_size(it.label, it.name, len(marks), any(marks))
    return items, edges


# -- ordering within layers ----------------------------------------------------------------------
def _neighbours(edges: list[_Edge]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
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


def _order(items: dict[str, _Item], edges: list[_Edge], sweeps: int = 12) -> list[list[str]]:
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


def _gap(a: _Item, b: _Item) -> float:
    """Least distance between the centres of neighbours in a column: a full gap between two
    boxes, two thirds of it between a box and a waypoint, one third between two waypoints."""
    boxes = (a.kind != "dummy") + (b.kind != "dummy")
    return (a.height + b.height) / 2 + _GAP_Y * (boxes + 1) / 3


def _place(items: dict[str, _Item], layers: list[list[str]], edges: list[_Edge], rounds: int = 16) -> None:
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


# -- drawing -------------------------------------------------------------------------------------
def _edge_path(points: list[tuple[float, float]]) -> MplPath:
    """A smooth path through `points`, horizontal at each of them (S-curves between columns)."""
    verts, codes = [points[0]], [MplPath.MOVETO]
    for (x0, y0), (x1, y1) in pairwise(points):
        dx = (x1 - x0) / 2
        verts += [(x0 + dx, y0), (x1 - dx, y1), (x1, y1)]
        codes += [MplPath.CURVE4] * 3
    return MplPath(verts, codes)


def _draw_edges(ax, items: dict[str, _Item], edges: list[_Edge]) -> None:
    by_target: dict[str, list[_Edge]] = defaultdict(list)
    for e in edges:
        by_target[e.chain[-1]].append(e)
    for target, incoming in by_target.items():
        t = items[target]
        # Operands enter at ports spread along the box's left side, in the vertical order of where
        # they come from, so they do not cross at the box.
        incoming.sort(key=lambda e: items[e.chain[-2]].y)
        for k, e in enumerate(incoming):
            port = t.y - t.height / 2 + t.height * (k + 1) / (len(incoming) + 1)
            s = items[e.chain[0]]
            points = [(s.x + s.width / 2, s.y)]
            for w in (items[key] for key in e.chain[1:-1]):
                points += [(w.x - w.width / 2, w.y), (w.x + w.width / 2, w.y)]
            end = (t.x - t.width / 2, port)
            ax.add_patch(FancyArrowPatch(path=_edge_path(points + [end]), arrowstyle="-|>",
                                         mutation_scale=11, color=e.colour, lw=1.1, alpha=0.85,
                                         shrinkA=0, shrinkB=0, zorder=1))
            if e.mark:  # just above the edge: a "−" drawn on the line would merge with it
                ax.text(end[0] - 0.15, port - 0.075, e.mark, fontsize=_MARK_PT, ha="center", va="center",
                        color=e.colour, fontweight="bold", zorder=4,
                        bbox={"boxstyle": "round,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.9})


def _draw_box(ax, it: _Item, border: str) -> None:
    fill, _, _ = _KINDS[it.kind]
    pill = it.kind in ("input", "output")
    rounding = it.height / 2 if pill else 0.09
    box = FancyBboxPatch((it.x - it.width / 2, it.y - it.height / 2), it.width, it.height,
                         boxstyle=f"round,pad=0,rounding_size={rounding}", fc=fill, ec=border,
                         lw=2.2 if pill else 1.2, zorder=2)
    box.set_gid(it.gid)
    ax.add_patch(box)
    label_y = it.y - 0.06 if it.name else it.y
    ax.text(it.x, label_y, it.label, fontsize=_LABEL_PT + (1 if pill else 0), ha="center", va="center",
            zorder=3, color="#202020")
    if it.name:
        ax.text(it.x, it.y + 0.15, it.name, fontsize=_NAME_PT, ha="center", va="center", zorder=3,
                color="#555555")


def _figure(spec: CellSpec, items: dict[str, _Item], edges: list[_Edge], title: str | None) -> Figure:
    boxes = [it for it in items.values() if it.kind != "dummy"]
    x0 = min(it.x - it.width / 2 for it in boxes) - _MARGIN
    x1 = max(it.x + it.width / 2 for it in boxes) + _MARGIN
    y0 = min(it.y - it.height / 2 for it in items.values()) - _MARGIN - _HEAD
    y1 = max(it.y + it.height / 2 for it in items.values()) + _MARGIN + _FOOT
    width = max(x1 - x0, _MIN_FIG_W)
    x0 -= (width - (x1 - x0)) / 2
    fig = Figure(figsize=(width, y1 - y0))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(x0, x0 + width)
    ax.set_ylim(y1, y0)  # y grows downwards: the first node of a layer is drawn at the top
    ax.axis("off")
    _draw_edges(ax, items, edges)
    colours = dict(zip(spec.inputs, _INPUT_COLOURS))
    for it in boxes:
        _draw_box(ax, it, colours.get(it.key, _KINDS[it.kind][1]))
    ax.text(x0 + _MARGIN, y0 + 0.2, title if title is not None else spec.name or "cell", fontsize=13,
            fontweight="bold", va="top")
    summary = (f"{len(spec.nodes)} ops, {spec.num_linear_terms()} weight matrices; "
               f"state ({', '.join(spec.state)})")
    ax.text(x0 + _MARGIN, y0 + 0.48, summary, fontsize=8.5, va="top", color="#555555")
    handles = [Patch(fc=fill, ec=border, label=label) for fill, border, label in _KINDS.values()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=8,
               bbox_to_anchor=(0.5, 0.0))
    return fig
