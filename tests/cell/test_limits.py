"""Bounded work for any cell input: each pathological input is refused with the rule that it breaks,
or accepted, without RecursionError.

How quickly is benchmarks/cell_limits.py's question (wall time is no test assertion: CI is noisy);
it times these same inputs, built by the functions here.
"""

import json
import re

import networkx as nx
import pytest

from nas.cell import CellError, CellSpec
from nas.cell.draw import draw_cell
from nas.cell.known import f, lin
from nas.cell.spec import FLOAT32_MAX, MAX_FILE_BYTES, MAX_NODES, MAX_OPERANDS


def chain(n, reverse=False):
    """A chain of n nodes alternating linear(prev, x) and tanh(prev); reversed: the worst order
    for a sort that rescans."""
    nodes = {"n0": lin("x", "h")}
    for i in range(1, n):
        nodes[f"n{i}"] = lin(f"n{i - 1}", "x") if i % 2 else f("tanh", f"n{i - 1}")
    if reverse:
        nodes = dict(reversed(nodes.items()))
    return {"state": ["h"], "nodes": nodes, "outputs": {"h": f"n{n - 1}"}}


def dense(n, k):
    """n nodes, each reading the k nodes before it: the most work the limits allow."""
    nodes = {"n0": lin("x", "h")}
    for i in range(1, n):
        reads = [f"n{j}" for j in range(max(0, i - k), i)]
        nodes[f"n{i}"] = lin(*reads) if i % 2 else f("mean", *reads)
    return {"state": ["h"], "nodes": dict(reversed(nodes.items())), "outputs": {"h": f"n{n - 1}"}}


def refused(text, *fragments):
    with pytest.raises(CellError) as err:
        CellSpec.from_json(text)
    for fragment in fragments:
        assert fragment in str(err.value)
    return str(err.value)


def test_ten_thousand_nodes_are_refused_first():
    refused(json.dumps(chain(10_000)), f"at most {MAX_NODES} nodes", "got 10000")


def test_the_constructor_checks_the_node_limit_too():
    spec = CellSpec.from_dict(chain(4))
    with pytest.raises(CellError, match=f"at most {MAX_NODES} nodes"):
        CellSpec(spec.state, spec.nodes * 400, spec.outputs)


def test_long_chains_are_accepted():
    for n in (300, MAX_NODES):
        spec = CellSpec.from_json(json.dumps(chain(n, reverse=True)))
        value = spec.canonical_hash()
        assert len(spec.nodes) == n and value.startswith("c2-")
        assert [node.name for node in spec.nodes] == [f"n{i}" for i in range(n)]


def test_a_cell_at_the_limits_is_accepted():
    spec = CellSpec.from_json(json.dumps(dense(MAX_NODES, MAX_OPERANDS)))
    assert spec.canonical_hash().startswith("c2-")
    assert len(spec.nodes) == MAX_NODES


def test_the_hash_of_a_chain_depends_on_every_node():
    # A hash that stopped refining early would miss a change far from the ends.
    data = chain(301)
    other = json.loads(json.dumps(data))
    other["nodes"]["n150"] = f("sigmoid", "n149")
    assert CellSpec.from_dict(data).canonical_hash() != CellSpec.from_dict(other).canonical_hash()


def test_deep_json_is_refused_without_recursion_error():
    refused("[" * 100_000 + "]" * 100_000, "nested deeper than 16 levels")
    refused('{"nodes": {"a": {"op": "linear", "in": ["x"], "bias_init": ' + "[" * 5000 + "]" * 5000 + "}}}",
            "nested deeper")
    # Brackets inside strings are text, not nesting.
    assert CellSpec.from_json(json.dumps({**chain(2), "name": '"[\\' * 5000})).name == '"[\\' * 5000


def test_deep_python_values_are_refused_without_recursion_error():
    deep = []
    for _ in range(5000):
        deep = [deep]
    message = refused_dict({**chain(2), "nodes": {"n0": {**lin("x", "h"), "bias_init": deep},
                                                  "n1": f("tanh", "n0")}}, "'bias_init' must be a finite number")
    assert len(message) < 300


def refused_dict(data, *fragments):
    with pytest.raises(CellError) as err:
        CellSpec.from_dict(data)
    for fragment in fragments:
        assert fragment in str(err.value)
    return str(err.value)


def test_many_operands_are_refused():
    data = {"state": ["h"], "nodes": {"a": lin("x", "h"), "m": f("mean", *["a"] * 5000)}, "outputs": {"h": "m"}}
    refused(json.dumps(data), "node 'm'", f"at most {MAX_OPERANDS} operands", "got 5000")


def test_huge_text_and_file_are_refused(tmp_path):
    text = json.dumps({**chain(2), "name": "n" * (2 * MAX_FILE_BYTES)})
    refused(text, f"at most {MAX_FILE_BYTES} characters")
    path = tmp_path / "big.json"
    path.write_text(text)
    with pytest.raises(CellError, match=re.escape(f"cell file '{path}': larger than the limit of {MAX_FILE_BYTES} bytes")):
        CellSpec.from_file(path)


def test_from_file_names_the_file(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(chain(3)))
    assert len(CellSpec.from_file(good).nodes) == 3
    latin = tmp_path / "latin.json"
    latin.write_bytes(json.dumps({**chain(3), "name": "caf\u00e9"}, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(CellError, match=re.escape(f"cell file '{latin}': not UTF-8 text")):
        CellSpec.from_file(latin)
    with pytest.raises(CellError, match=re.escape(f"cell file '{tmp_path / 'nope.json'}': cannot read it")):
        CellSpec.from_file(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**chain(3), "outputs": {"h": "x"}}))
    with pytest.raises(CellError, match=re.escape(f"cell file '{bad}': state 'h'") + ".*previous state"):
        CellSpec.from_file(bad)


def test_huge_integer_literal_is_a_cell_error():
    refused('{"nodes": {"a": {"op": "linear", "in": ["x", "h"], "bias_init": ' + "1" * 5000 + "}}}", "invalid JSON")


def test_long_names_give_short_messages():
    message = refused_dict({**chain(2), "nodes": {"n" * 100_000: lin("x", "h")}}, "names must be identifiers")
    assert len(message) < 300


@pytest.mark.parametrize("node, key, value", [
    ("n0", "bias_init", 1e308), ("n0", "bias_init", -1e39), ("n1", "negative_slope", 1e300),
])
def test_options_must_fit_float32(node, key, value):
    data = chain(2)
    data["nodes"]["n1"] = {"op": "leaky_relu", "in": ["n0"]}
    data["nodes"][node][key] = value
    refused_dict(data, f"node {node!r}", f"{key!r} must be a finite number representable in float32")


def test_the_largest_float32_option_is_accepted():
    data = chain(2)
    data["nodes"]["n0"]["bias_init"] = FLOAT32_MAX
    assert CellSpec.from_dict(data).node("n0").option("bias_init") == FLOAT32_MAX


def test_huge_graphs_are_refused_first():
    g = nx.DiGraph(state=["h"], outputs={"h": "n0"})
    g.add_nodes_from(f"n{i}" for i in range(20_000))
    with pytest.raises(CellError, match=f"at most {MAX_NODES} nodes"):
        CellSpec.from_networkx(g)


def test_large_cells_draw_as_a_card(tmp_path):
    spec = CellSpec.from_dict(chain(300))
    svg = draw_cell(spec, tmp_path / "chain.svg")
    assert "not drawn: 300 nodes" in svg.read_text()
    # Fewer nodes, but edges from x spanning many columns: too many waypoints.
    long = chain(120)
    long["nodes"] = {k: ({**v, "in": [*v["in"], "h"]} if v["op"] == "linear" else v)
                     for k, v in long["nodes"].items()}
    long["nodes"]["n0"] = lin("x", "h")
    assert "edge waypoints" in draw_cell(CellSpec.from_dict(long), tmp_path / "long.svg").read_text()
