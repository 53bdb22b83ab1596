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
from itertools import pairwise
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch
from matplotlib.path import Path as MplPath

from nas.cell.layout import INPUT_COLOURS, LABEL_PT, NAME_PT, Edge, Item, layout
from nas.cell.spec import CellSpec

FORMATS = (".png", ".svg")
DPI = 110
MAX_DRAW_NODES = 150
MAX_DRAW_WAYPOINTS = 1000

# kind: (fill, border, legend label). The op kinds are read off the registry (layout.py, `_kind`).
_KINDS = {
    "input": ("#ece6f7", "#5e3c99", "input / previous state"),
    "linear": ("#d5e5f6", "#2b6cb0", "linear (weights)"),
    "arith": ("#fde8cc", "#d9822b", "arithmetic"),
    "act": ("#daefd3", "#4f9a3f", "activation"),
    "output": ("#f8d5d5", "#c0392b", "new state"),
}
# Sizes in inches (one data unit) and points (the boxes' sizes are the layout's).
_MIN_FIG_W, _MARGIN, _HEAD, _FOOT = 7.0, 0.3, 0.7, 0.45
_MARK_PT = 8


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
        items, edges = layout(spec)
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


# -- drawing -------------------------------------------------------------------------------------
def _edge_path(points: list[tuple[float, float]]) -> MplPath:
    """A smooth path through `points`, horizontal at each of them (S-curves between columns)."""
    verts, codes = [points[0]], [MplPath.MOVETO]
    for (x0, y0), (x1, y1) in pairwise(points):
        dx = (x1 - x0) / 2
        verts += [(x0 + dx, y0), (x1 - dx, y1), (x1, y1)]
        codes += [MplPath.CURVE4] * 3
    return MplPath(verts, codes)


def _draw_edges(ax, items: dict[str, Item], edges: list[Edge]) -> None:
    by_target: dict[str, list[Edge]] = defaultdict(list)
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


def _draw_box(ax, it: Item, border: str) -> None:
    fill, _, _ = _KINDS[it.kind]
    pill = it.kind in ("input", "output")
    rounding = it.height / 2 if pill else 0.09
    box = FancyBboxPatch((it.x - it.width / 2, it.y - it.height / 2), it.width, it.height,
                         boxstyle=f"round,pad=0,rounding_size={rounding}", fc=fill, ec=border,
                         lw=2.2 if pill else 1.2, zorder=2)
    box.set_gid(it.gid)
    ax.add_patch(box)
    label_y = it.y - 0.06 if it.name else it.y
    ax.text(it.x, label_y, it.label, fontsize=LABEL_PT + (1 if pill else 0), ha="center", va="center",
            zorder=3, color="#202020")
    if it.name:
        ax.text(it.x, it.y + 0.15, it.name, fontsize=NAME_PT, ha="center", va="center", zorder=3,
                color="#555555")


def _figure(spec: CellSpec, items: dict[str, Item], edges: list[Edge], title: str | None) -> Figure:
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
    colours = dict(zip(spec.inputs, INPUT_COLOURS))
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
