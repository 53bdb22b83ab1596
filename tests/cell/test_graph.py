"""networkx as an exchange format: operations that keep a graph's structure keep the cell and its hash.

The graph layout is nas.cell.graph's: operands are in-edges with `pos`, state inputs and new-state
outputs are marker nodes, so relabelling, copying, composing and writing to a file cannot leave a
name behind that points at a node that is no longer there.
"""

import io
import json

import networkx as nx
import pytest
from random_cells import ALL_OPS, random_cells

from nas.cell import KNOWN_CELLS, CellError, CellSpec, known_cell

CELLS = {name: known_cell(name) for name in KNOWN_CELLS}
CELLS |= {f"random{k}": spec for k, spec in enumerate(random_cells(17, 12))}
CELLS["all_ops"] = ALL_OPS


def same_spelling(a: CellSpec, b: CellSpec) -> bool:
    """Equal up to the order of the node list (which a graph's node order may change)."""
    return (a.state, a.outputs, set(a.nodes)) == (b.state, b.outputs, set(b.nodes))


def renamed(spec: CellSpec, prefix: str) -> dict:
    """label -> new label for every node and state input of `spec` (x and outputs keep theirs)."""
    return {name: f"{prefix}{name}" for name in [n.name for n in spec.nodes] + list(spec.state)}


@pytest.mark.parametrize("copy", [True, False])
@pytest.mark.parametrize("name", CELLS)
def test_relabel_nodes_renames_the_cell(name, copy):
    spec = CELLS[name]
    mapping = renamed(spec, "v_")
    g = nx.relabel_nodes(spec.to_networkx(), mapping, copy=copy)
    back = CellSpec.from_networkx(g)
    assert back.canonical_hash() == spec.canonical_hash()
    assert back.state == tuple(mapping[s] for s in spec.state)
    assert {n.name for n in back.nodes} == {mapping[n.name] for n in spec.nodes}
    if copy:  # relabel_nodes(copy=True) keeps the node order, so the spelling is the same too
        want = {mapping[n.name]: (n.op, tuple(mapping.get(i, i) for i in n.inputs), n.options) for n in spec.nodes}
        assert {n.name: (n.op, n.inputs, n.options) for n in back.nodes} == want


@pytest.mark.parametrize("name", ["lstm", "gru", "nas_cell", "random3"])
def test_relabelling_to_integers_generates_names(name):
    spec = CELLS[name]
    g = nx.convert_node_labels_to_integers(spec.to_networkx(), ordering="sorted")
    back = CellSpec.from_networkx(g)
    assert back.canonical_hash() == spec.canonical_hash()
    assert len(back.nodes) == len(spec.nodes)


def test_swapping_two_labels_swaps_the_names():
    spec = known_cell("lstm")
    g = nx.relabel_nodes(spec.to_networkx(), {"i_lin": "f_lin", "f_lin": "i_lin"})
    back = CellSpec.from_networkx(g)
    assert back.node("i_lin").option("bias_init") == 1.0  # the forget gate's bias moved with its node
    assert back.node("f_lin").option("bias_init") == 0.0
    assert back.canonical_hash() == spec.canonical_hash()


@pytest.mark.parametrize("how", ["copy", "deepcopy", "MultiDiGraph", "subgraph_view"])
def test_copies_are_the_same_cell(how):
    import copy

    spec = known_cell("lstm")
    g = spec.to_networkx()
    h = {"copy": g.copy, "deepcopy": lambda: copy.deepcopy(g), "MultiDiGraph": lambda: nx.MultiDiGraph(g),
         "subgraph_view": lambda: g.subgraph(g.nodes)}[how]()
    assert CellSpec.from_networkx(h) == spec


def test_a_repeated_operand_needs_the_multigraph():
    spec = CellSpec.from_dict({"state": ["h"], "nodes": {"a": {"op": "linear", "in": ["x", "h"]},
                                                         "sq": {"op": "mul", "in": ["a", "a"]}},
                               "outputs": {"h": "sq"}})
    g = spec.to_networkx()
    assert CellSpec.from_networkx(g) == spec
    with pytest.raises(CellError, match="node 'sq': in-edge positions must be the integers 0..0"):
        CellSpec.from_networkx(nx.DiGraph(g))  # a DiGraph keeps one of the two parallel edges


def halves(g: nx.MultiDiGraph) -> tuple[nx.MultiDiGraph, nx.MultiDiGraph]:
    """Two edge-induced parts of g (each with its nodes' attributes) whose union is g."""
    edges = list(g.edges(keys=True))
    first, second = g.edge_subgraph(edges[::2]).copy(), g.edge_subgraph(edges[1::2]).copy()
    first.add_nodes_from((n, g.nodes[n]) for n in nx.isolates(g))  # a state input nothing reads
    first.graph.update(g.graph)
    return first, second


@pytest.mark.parametrize("name", ["lstm", "gru", "darts_v2", "random5"])
def test_composing_the_parts_of_a_cell_gives_the_cell(name):
    spec = CELLS[name]
    first, second = halves(spec.to_networkx())
    whole = nx.compose(first, second)
    back = CellSpec.from_networkx(whole)
    assert same_spelling(back, spec)
    assert back.canonical_hash() == spec.canonical_hash()


def test_composing_with_a_dead_branch_keeps_the_cell():
    spec = known_cell("gru")
    branch = nx.MultiDiGraph()
    branch.add_node("probe", kind="op", op="tanh")
    branch.add_edge("r", "probe", pos=0)  # reads the cell, feeds no output: pruned
    back = CellSpec.from_networkx(nx.compose(spec.to_networkx(), branch))
    assert back == spec


def test_composing_two_whole_cells_is_refused():
    lstm = known_cell("lstm").to_networkx()
    gru = nx.relabel_nodes(known_cell("gru").to_networkx(), lambda n: f"g_{n}")
    with pytest.raises(CellError, match=r"nodes .* both are (marked as the input 'x'|the input marker)"):
        CellSpec.from_networkx(nx.compose(lstm, gru))


def via_graphml(g):
    buf = io.BytesIO()
    nx.write_graphml(g, buf)
    buf.seek(0)
    return nx.read_graphml(buf)


def via_node_link(g):
    text = json.dumps(nx.node_link_data(g, edges="edges"))
    return nx.node_link_graph(json.loads(text), edges="edges")


@pytest.mark.parametrize("fmt", [via_graphml, via_node_link], ids=["graphml", "node_link"])
@pytest.mark.parametrize("name", CELLS)
def test_file_round_trip(name, fmt):
    spec = CELLS[name]
    back = CellSpec.from_networkx(fmt(spec.to_networkx()))
    assert back == spec
    assert back.canonical_hash() == spec.canonical_hash()
    assert back.name == spec.name


def test_graphml_file_on_disk_after_relabelling(tmp_path):
    spec = known_cell("mut1")
    g = nx.relabel_nodes(spec.to_networkx(), renamed(spec, "m1_"))
    nx.write_graphml(g, tmp_path / "mut1.graphml")
    back = CellSpec.from_networkx(nx.read_graphml(tmp_path / "mut1.graphml"))
    assert back.canonical_hash() == spec.canonical_hash()
    assert back.state == ("m1_h",)


def test_layout_is_markers_and_positions():
    g = known_cell("lstm").to_networkx()
    assert isinstance(g, nx.MultiDiGraph) and nx.is_directed_acyclic_graph(g)
    assert g.nodes["c"] == {"kind": "input", "state": 1}
    assert g.nodes["c'"] == {"kind": "output", "state": 1}
    assert list(g.predecessors("c'")) == ["c_new"]
    assert {(u, d["pos"]) for u, _, d in g.in_edges("keep", data=True)} == {("f", 0), ("c", 1)}
    assert g.nodes["f_lin"] == {"kind": "op", "op": "linear", "bias": True, "bias_init": 1.0}
