"""Tests for nas.cell.spec and nas.cell.graph: building, normalising, exchanging and rejecting cells."""

import json

import networkx as nx
import pytest

from nas.cell import FORMAT, KNOWN_CELLS, CellError, CellSpec, Node, known_cell
from nas.cell.known import f, lin


def rnn(**extra_nodes):
    """The Elman cell's JSON layout, plus `extra_nodes`."""
    return {"state": ["h"], "nodes": {"a": lin("x", "h"), "out": f("tanh", "a"), **extra_nodes},
            "outputs": {"h": "out"}}


def is_topological(spec):
    seen = set(spec.inputs)
    for n in spec.nodes:
        if not set(n.inputs) <= seen:
            return False
        seen.add(n.name)
    return True


# -- round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", KNOWN_CELLS)
def test_json_round_trip(name):
    spec = known_cell(name)
    back = CellSpec.from_json(spec.to_json())
    assert back == spec
    assert back.name == name
    assert back.canonical_hash() == spec.canonical_hash()
    assert CellSpec.from_dict(spec.to_dict()) == spec
    assert json.loads(spec.to_json())["format"] == FORMAT


@pytest.mark.parametrize("name", KNOWN_CELLS)
def test_networkx_round_trip(name):
    spec = known_cell(name)
    graph = spec.to_networkx()
    assert nx.is_directed_acyclic_graph(graph)
    back = CellSpec.from_networkx(graph)
    assert back == spec
    assert back.name == name


def test_to_dict_leaves_out_default_options():
    data = known_cell("lstm").to_dict()
    assert data["nodes"]["i_lin"] == {"op": "linear", "in": ["x", "h"]}
    assert data["nodes"]["f_lin"] == {"op": "linear", "in": ["x", "h"], "bias_init": 1.0}


def test_networkx_edges_carry_operand_positions():
    spec = CellSpec.from_dict(rnn(m=f("mul", "a", "a"), out2=f("sub", "m", "h")) | {"outputs": {"h": "out2"}})
    g = spec.to_networkx()
    assert sorted(d["pos"] for d in g.get_edge_data("a", "m").values()) == [0, 1]  # parallel edges
    assert [d["pos"] for d in g.get_edge_data("m", "out2").values()] == [0]
    assert [d["pos"] for d in g.get_edge_data("h", "out2").values()] == [1]
    assert g.nodes["x"] == {"kind": "input"}
    assert g.nodes["h"] == {"kind": "input", "state": 0}
    assert g.nodes["h'"] == {"kind": "output", "state": 0}
    assert list(g.predecessors("h'")) == ["out2"]


def hand_built_graph(first="p", second="q"):
    """out = tanh(sub(first, second)), p = W x + b, q = U h (no bias): edges with `pos` only."""
    g = nx.DiGraph(state=["h"], outputs={"h": "out"})
    g.add_node("p", op="linear")
    g.add_node("q", op="linear", bias=False)
    g.add_node("d", op="sub")
    g.add_node("out", op="tanh")
    g.add_edge("x", "p")
    g.add_edge("h", "q")
    g.add_edge(first, "d", pos=0)
    g.add_edge(second, "d", pos=1)
    g.add_edge("d", "out", pos=0)
    return g


def test_networkx_by_hand():
    spec = CellSpec.from_networkx(hand_built_graph())
    want = CellSpec.from_dict({"state": ["h"], "nodes": {
        "p": lin("x"), "q": lin("h", bias=False), "d": f("sub", "p", "q"), "out": f("tanh", "d")},
        "outputs": {"h": "out"}})
    assert spec == want
    swapped = CellSpec.from_networkx(hand_built_graph("q", "p"))
    assert swapped.node("d").inputs == ("q", "p")
    assert swapped.canonical_hash() != spec.canonical_hash()


def test_networkx_by_hand_with_repeated_operand():
    g = nx.DiGraph(state=["h"], outputs={"h": "out"})
    g.add_node("a", op="linear")
    g.add_node("out", op="mul")
    g.add_edges_from([("x", "a"), ("h", "a")])
    g.add_edge("a", "out", positions=[0, 1])
    assert CellSpec.from_networkx(g).node("out").inputs == ("a", "a")


# -- normal form ------------------------------------------------------------------------------
def test_dead_nodes_are_pruned():
    spec = CellSpec.from_dict(rnn(dead=lin("x"), deader=f("tanh", "dead"), unused=f("relu", "a")))
    assert [n.name for n in spec.nodes] == ["a", "out"]
    assert set(spec.to_dict()["nodes"]) == {"a", "out"}
    assert spec == CellSpec.from_dict(rnn())


def test_second_state_output_keeps_its_nodes_alive():
    spec = known_cell("lstm")
    assert {"keep", "write", "c_new"} <= {n.name for n in spec.nodes}


@pytest.mark.parametrize("name", KNOWN_CELLS)
def test_nodes_come_out_in_topological_order(name):
    assert is_topological(known_cell(name))


def test_node_order_is_normalised():
    # out before its operand, a before nothing it needs: sorted, and stable where valid.
    spec = CellSpec.from_dict({"state": ["h"], "nodes": {
        "out": f("add", "t", "u"), "t": f("tanh", "a"), "a": lin("x", "h"), "u": lin("h")},
        "outputs": {"h": "out"}})
    assert [n.name for n in spec.nodes] == ["a", "t", "u", "out"]
    again = CellSpec(spec.state, spec.nodes[::-1], spec.outputs)
    assert [n.name for n in again.nodes] == ["u", "a", "t", "out"]
    assert again.canonical_hash() == spec.canonical_hash()
    # Idempotent: a normalised order is its own normal form.
    assert CellSpec(spec.state, spec.nodes, spec.outputs).nodes == spec.nodes


def test_valid_order_is_kept():
    nodes = {"a": lin("x"), "t": f("tanh", "a"), "u": lin("h"), "out": f("add", "t", "u")}
    spec = CellSpec.from_dict({"state": ["h"], "nodes": nodes, "outputs": {"h": "out"}})
    assert [n.name for n in spec.nodes] == list(nodes)


def test_options_are_completed_with_defaults():
    spec = CellSpec.from_dict(rnn())
    assert spec.node("a").option("bias") is True
    assert spec.node("a").option("bias_init") == 0.0
    int_init = CellSpec.from_dict(rnn(a={"op": "linear", "in": ["x", "h"], "bias_init": 1}))
    assert isinstance(int_init.node("a").option("bias_init"), float)


def test_views():
    spec = known_cell("lstm")
    assert spec.inputs == ("x", "h", "c")
    assert spec.depends_on("c_new") == {"x", "h", "c"}
    assert spec.depends_on("i") == {"x", "h"}
    assert spec.num_linear_terms() == 8
    assert "h'=h_new" in str(spec)
    with pytest.raises(CellError, match="no node named 'nope'"):
        spec.node("nope")


def test_spec_is_immutable_and_hashable():
    spec = known_cell("gru")
    with pytest.raises(AttributeError):
        spec.nodes = ()
    assert {spec: 1}[known_cell("gru")] == 1


def test_known_cell_errors():
    with pytest.raises(CellError, match="unknown reference cell 'lsmt'"):
        known_cell("lsmt")
    with pytest.raises(CellError, match="unsupported options"):
        known_cell("gru", forget_bias=1.0)


# -- invalid cells ----------------------------------------------------------------------------
def with_nodes(**nodes):
    return {"state": ["h"], "nodes": nodes, "outputs": {"h": "out"}}


HOSTILE = "x); import os #"

INVALID = {
    "unknown op": (rnn(out=f("conv", "a")), ["node 'out'", "unknown op 'conv'"]),
    "too few operands": (rnn(out=f("sub", "a")), ["node 'out'", "'sub' takes 2 operands, got 1"]),
    "too many operands": (rnn(out=f("tanh", "a", "h")), ["node 'out'", "takes 1 operands, got 2"]),
    "no operands": (rnn(a={"op": "linear", "in": []}), ["node 'a'", "1 or more operands, got 0"]),
    "unknown option": (rnn(out={**f("tanh", "a"), "bias": True}), ["node 'out'", "no option 'bias'"]),
    "bool option not bool": (rnn(a={**lin("x", "h"), "bias": "yes"}),
                             ["node 'a'", "'bias' must be true or false"]),
    "bool option as int": (rnn(a={**lin("x", "h"), "bias": 1}), ["node 'a'", "'bias' must be true or false"]),
    "float option a string": (rnn(a={**lin("x", "h"), "bias_init": "1"}),
                              ["node 'a'", "'bias_init' must be a finite number"]),
    "float option a bool": (rnn(a={**lin("x", "h"), "bias_init": True}), ["'bias_init' must be a finite"]),
    "float option nan": (rnn(a={**lin("x", "h"), "bias_init": float("nan")}), ["must be a finite number"]),
    "float option inf": (rnn(out={"op": "leaky_relu", "in": ["a"], "negative_slope": float("inf")}),
                         ["node 'out'", "'negative_slope' must be a finite number"]),
    "float option too big": (rnn(a={**lin("x", "h"), "bias_init": 10 ** 400}), ["must be a finite number"]),
    "operand not defined": (rnn(out=f("tanh", "nowhere")),
                            ["node 'out'", "operand 'nowhere' is not a node"]),
    "cycle": (with_nodes(out=f("tanh", "p"), p=f("add", "q", "x"), q=f("mul", "p", "h")),
              ["lies on a cycle", "p <- q <- p"]),
    "self loop": (with_nodes(out=f("add", "out", "x")), ["node 'out'", "cycle (out <- out)"]),
    "state with no output": ({**rnn(), "state": ["h", "c"]}, ["state 'c'", "no entry in 'outputs'"]),
    "output not a state": ({**rnn(), "outputs": {"h": "out", "m": "a"}}, ["'m' is not a state vector"]),
    "output not a node": ({**rnn(), "outputs": {"h": "nope"}}, ["state 'h'", "output 'nope' is not a node"]),
    "output ignores x": (with_nodes(a=lin("h"), out=f("tanh", "a")),
                         ["state 'h'", "does not depend on the input 'x'"]),
    "output ignores the state": (with_nodes(a=lin("x"), out=f("tanh", "a")),
                                 ["state 'h'", "does not depend on the previous state"]),
    "output is x": ({**rnn(), "outputs": {"h": "x"}}, ["state 'h'", "does not depend on the previous state"]),
    "bad node name": (rnn(**{"1a": lin("x")}), ["node '1a'", "names must be identifiers"]),
    "hostile node name": (rnn(**{HOSTILE: lin("x")}), [f"node {HOSTILE!r}", "names must be identifiers"]),
    "empty node name": (rnn(**{"": lin("x")}), ["node ''", "names must be identifiers"]),
    "long node name": (rnn(**{"a" * 65: lin("x")}), ["at most 64 characters"]),
    "hostile state name": ({**rnn(), "state": [HOSTILE], "outputs": {HOSTILE: "out"}},
                           [f"state {HOSTILE!r}", "names must be identifiers"]),
    "hostile operand": (rnn(out=f("tanh", HOSTILE)), [f"operand {HOSTILE!r} is not a node"]),
    "node named x": (rnn(x=lin("h")), ["node 'x'", "taken by an input"]),
    "node named after a state": (rnn(h=lin("x")), ["node 'h'", "taken by an input"]),
    "state named x": ({**rnn(), "state": ["x"], "outputs": {"x": "out"}},
                      ["state 'x'", "reserved for the input"]),
    "duplicate state": ({**rnn(), "state": ["h", "h"]}, ["state", "names must be unique"]),
    "no state": ({**rnn(), "state": [], "outputs": {}}, ["state", "expected 1 to 8 state vectors, got 0"]),
    "too many states": ({**rnn(), "state": [f"s{i}" for i in range(9)],
                         "outputs": {f"s{i}": "out" for i in range(9)}}, ["expected 1 to 8", "got 9"]),
    "state a string": ({**rnn(), "state": "h"}, ["state", "expected a list of names"]),
    "linear reads an operand twice": (rnn(a=lin("x", "x", "h")),
                                      ["node 'a'", "'linear' reads the same operand twice"]),
    "wrong format version": ({**rnn(), "format": "nas-cell/2"},
                             ["unsupported format 'nas-cell/2'", FORMAT]),
    "unknown field": ({**rnn(), "nodez": {}}, ["unknown field(s) ['nodez']"]),
    "nodes not an object": ({**rnn(), "nodes": [1]}, ["'nodes' must be an object"]),
    "outputs not an object": ({**rnn(), "outputs": ["out"]}, ["'outputs' must be an object"]),
    "node not an object": (rnn(out="tanh"), ["node 'out'", "expected an object"]),
    "node without op": (rnn(out={"in": ["a"]}), ["node 'out'", "missing 'op'"]),
    "operands a string": (rnn(out={"op": "tanh", "in": "a"}), ["node 'out': 'in'", "expected a list"]),
    "operand not a string": (rnn(out={"op": "tanh", "in": [3]}), ["node 'out': 'in'", "got 3"]),
    "non-object": ([1, 2], ["expected a JSON object, got list"]),
}


@pytest.mark.parametrize("data, fragments", INVALID.values(), ids=INVALID.keys())
def test_invalid_cells_raise_cell_error(data, fragments):
    with pytest.raises(CellError) as err:
        CellSpec.from_dict(data)
    for fragment in fragments:
        assert fragment in str(err.value)


INVALID_JSON = {
    "malformed": ("{not json", ["invalid JSON"]),
    "truncated": ('{"state": ["h"], ', ["invalid JSON"]),
    "a list": ("[1, 2]", ["expected a JSON object, got list"]),
    "a number": ("3", ["expected a JSON object, got int"]),
    "null": ("null", ["expected a JSON object, got NoneType"]),
    "duplicate node": (('{"state": ["h"], "nodes": {"out": {"op": "linear", "in": ["x", "h"]}, '
                        '"out": {"op": "tanh", "in": ["x"]}}, "outputs": {"h": "out"}}'),
                       ["key 'out' appears twice"]),
    "infinity": (('{"nodes": {"a": {"op": "linear", "in": ["x", "h"], "bias_init": -Infinity}}, '
                  '"outputs": {"h": "a"}}'), ["node 'a'", "must be a finite number"]),
    "wrong format": (json.dumps({**rnn(), "format": "nas-cell/0"}), ["unsupported format"]),
}


@pytest.mark.parametrize("text, fragments", INVALID_JSON.values(), ids=INVALID_JSON.keys())
def test_invalid_json_raises_cell_error(text, fragments):
    with pytest.raises(CellError) as err:
        CellSpec.from_json(text)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_duplicate_node_names_in_the_constructor():
    nodes = (Node("out", "tanh", ("a",)), Node("a", "linear", ("x", "h")), Node("a", "linear", ("x",)))
    with pytest.raises(CellError, match="node 'a': defined twice"):
        CellSpec(("h",), nodes, ("out",))


def test_constructor_checks_like_from_dict():
    with pytest.raises(CellError, match="expected one per state vector"):
        CellSpec(("h", "c"), (Node("out", "linear", ("x", "h")),), ("out",))
    with pytest.raises(CellError, match=r"node 'out': unknown op 'nope'"):
        CellSpec(("h",), (Node("out", "nope", ("x", "h")),), ("out",))


def graph(state=("h",), outputs=None):
    return nx.DiGraph(state=state, outputs=outputs if outputs is not None else {"h": "out"})


def invalid_graphs():
    cases = {}
    cases["not a DiGraph"] = (nx.Graph(), ["expected a networkx DiGraph, got Graph"])
    cases["no outputs"] = (nx.DiGraph(state=["h"]), ["graph attribute 'outputs'"])
    g = graph(state=["h", "c"])
    cases["state with no output"] = (g, ["state 'c'", "no entry in the graph's 'outputs'"])
    cases["state not a list"] = (graph(state=5), ["'state'", "expected a list of names, got 5"])
    g = graph()
    g.add_node("a")
    g.add_node("out", op="tanh")
    g.add_edge("a", "out")
    cases["node without op"] = (g, ["node 'a'", "has no 'op'"])
    g = graph()
    g.add_node("a", op="linear")
    g.add_node("out", op="sub")
    g.add_edges_from([("x", "a"), ("a", "out"), ("h", "out")])
    cases["sub without pos"] = (g, ["node 'out'", "'sub' is not commutative", "'pos'"])
    g = graph()
    g.add_node("a", op="linear")
    g.add_node("out", op="sub")
    g.add_edges_from([("x", "a")])
    g.add_edge("a", "out", pos="0")
    g.add_edge("h", "out", pos=1)
    cases["pos not an int"] = (g, ["node 'out'", "in-edge positions must be the integers 0..1"])
    g = graph()
    g.add_node("a", op="linear")
    g.add_node("out", op="sub")
    g.add_edges_from([("x", "a")])
    g.add_edge("a", "out", pos=0)
    g.add_edge("h", "out", pos=2)
    cases["pos with a gap"] = (g, ["node 'out'", "in-edge positions"])
    g = graph()
    g.add_node("out", op="add")
    g.add_edge("x", "out", positions=3)
    g.add_edge("h", "out")
    cases["positions not a list"] = (g, ["node 'out'", "the edge from 'x' has positions 3"])
    g = graph()
    g.add_node("out", op="linear", inputs=["x", "h"])  # the name-based operands of an older layout
    cases["operands as an attribute"] = (g, ["node 'out'", "not its 'inputs' attribute"])
    g = graph()
    g.add_node("out", op="frobnicate")
    g.add_edges_from([("x", "out"), ("h", "out")])
    cases["unknown op"] = (g, ["node 'out'", "unknown op 'frobnicate'"])
    g = graph()
    g.add_node("out", op="linear", colour="red")
    g.add_edges_from([("x", "out"), ("h", "out")])
    cases["unknown attribute"] = (g, ["node 'out'", "no option 'colour'"])
    g = graph()
    g.add_node("out", op="add")
    g.add_edge("x", "out")
    g.add_edge("out", "out")
    cases["self loop"] = (g, ["lies on a cycle"])
    g = graph(outputs={"h": ["out"]})
    g.add_node("out", op="linear")
    g.add_edges_from([("x", "out"), ("h", "out")])
    cases["output not a name"] = (g, ["state 'h'", "is not a node"])
    g = graph(outputs={"h": "out"})
    g.add_node(3, op="linear")
    g.add_node("out", op="tanh")
    g.add_edges_from([("x", 3), ("h", 3), (3, "out")])
    cases["node name not an identifier"] = (g, ["node '3'", "names must be identifiers"])
    g = known_cell("rnn_tanh").to_networkx()
    g.nodes["h'"]["state"] = 1
    cases["outputs not numbered 0..K-1"] = (g, ["markers for the states 0..0", "outputs [1]"])
    g = known_cell("rnn_tanh").to_networkx()
    g.add_node("x2", kind="input")
    cases["two x markers"] = (g, ["nodes 'x' and 'x2'", "marked as the input 'x'"])
    g = known_cell("rnn_tanh").to_networkx()
    g.add_edge("x", "h'")
    cases["output marker with two in-edges"] = (g, ["output marker \"h'\"", "got 2"])
    g = known_cell("rnn_tanh").to_networkx()
    g.add_edge("h'", "h_new", pos=1)
    cases["output marker as an operand"] = (g, ["\"h'\" is an output marker"])
    g = known_cell("rnn_tanh").to_networkx()
    g.nodes["a"]["kind"] = "input"
    cases["op node marked as an input"] = (g, ["node 'a'", "expected an op node"])
    return cases


INVALID_GRAPHS = invalid_graphs()


@pytest.mark.parametrize("g, fragments", INVALID_GRAPHS.values(), ids=INVALID_GRAPHS.keys())
def test_invalid_graphs_raise_cell_error(g, fragments):
    with pytest.raises(CellError) as err:
        CellSpec.from_networkx(g)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_a_broken_dead_node_is_still_an_error():
    data = {"state": ["h"], "outputs": {"h": "o"}, "nodes": {
        "a": {"op": "linear", "in": ["x", "h"]}, "o": {"op": "tanh", "in": ["a"]},
        "dead": {"op": "tanh", "in": ["nowhere"]}}}
    with pytest.raises(CellError, match="dead.*nowhere"):
        CellSpec.from_dict(data)
