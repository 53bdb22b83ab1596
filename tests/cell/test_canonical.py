"""The canonical form: functionally equal cells (from the zero initial state) share one hash.

Each folding rule is checked as a pair of spellings that must hash alike; ops that do not fold
(sigmoid(0) = 0.5, a bias-only linear) as pairs that must not. Known spellings the canonical form
does not unify are pinned at the end, as nasbench pins its hash's counterexample.
"""

import random

import pytest
from random_cells import random_cells, relabel

from nas.cell import KNOWN_CELLS, CellError, CellSpec, identify, known_cell
from nas.cell.known import f, lin

RANDOM_CELLS = random_cells(seed=99, count=200)


def cell(nodes, outputs=None, state=("h",)):
    return CellSpec.from_dict({"state": list(state), "nodes": nodes, "outputs": outputs or {"h": "out"}})


def same(a, b):
    return a.canonical_hash() == b.canonical_hash()


# -- the issue's cells --------------------------------------------------------------------------
def test_states_that_stay_zero_are_folded_away():
    # c' = leaky_relu(c) * h and m' = leaky_relu(c): from c = m = 0 both stay 0, so the cell is
    # h' = (W x + U h + b) * x.
    three = cell({"n0": lin("x", "h"), "lc": f("leaky_relu", "c"), "cn": f("mul", "lc", "h"),
                  "hn": f("mul", "n0", "x")}, {"h": "hn", "c": "cn", "m": "lc"}, state=("h", "c", "m"))
    one = cell({"n0": lin("x", "h"), "hn": f("mul", "n0", "x")}, {"h": "hn"})
    assert same(three, one)
    assert three.canonical() == one
    assert three.canonical().state == ("h",)


def test_a_state_no_node_reads_is_dropped():
    elman_relu = {"a": lin("x", "h"), "out": f("relu", "a")}
    unused_c = cell({**elman_relu, "cc": lin("x", "c"), "ct": f("tanh", "cc")}, {"h": "out", "c": "ct"},
                    state=("h", "c"))
    assert same(unused_c, cell(elman_relu))
    # c is read, but only by its own update: it never reaches h either.
    own = cell({**elman_relu, "cc": lin("x", "c")}, {"h": "out", "c": "cc"}, state=("h", "c"))
    assert same(own, cell(elman_relu))


def test_a_state_that_reaches_h_through_another_state_is_kept():
    # h reads c, c reads m: all three matter.
    spec = cell({"a": lin("x", "h", "c"), "out": f("tanh", "a"), "cn": lin("x", "m"), "mn": lin("x", "m")},
                {"h": "out", "c": "cn", "m": "mn"}, state=("h", "c", "m"))
    assert spec.canonical().state == ("h", "c", "m")


# -- folding rules: pairs of spellings of one function ------------------------------------------
BASE = {"a": lin("x", "h"), "b": lin("x", "h")}
ZERO_C = {"zc": f("relu", "c")}  # c' = relu(c): c stays zero
A = {"out": f("identity", "a")}  # h' = W x + U h + b
EQUAL = {
    "identity": ({"i": f("identity", "a"), "out": f("tanh", "i")}, {"out": f("tanh", "a")}),
    "relu of relu": ({"r": f("relu", "a"), "out": f("relu", "r")}, {"out": f("relu", "a")}),
    "relu of sigmoid": ({"s": f("sigmoid", "a"), "out": f("relu", "s")}, {"out": f("sigmoid", "a")}),
    # found in a search: relu(leaky_relu(W x + U h + b)) trained to the same bpc as relu(...)
    "relu of leaky_relu": ({"l": f("leaky_relu", "a"), "out": f("relu", "l")}, {"out": f("relu", "a")}),
    "leaky_relu of relu": ({"r": f("relu", "a"), "out": f("leaky_relu", "r")}, {"out": f("relu", "a")}),
    "add of zero": ({**ZERO_C, "out": f("add", "a", "zc")}, A),
    "mul by zero": ({**ZERO_C, "m": f("mul", "zc", "b"), "out": f("add", "a", "m")}, A),
    "sub of zero": ({**ZERO_C, "out": f("sub", "a", "zc")}, A),
    "sub of itself": ({"d": f("sub", "b", "b"), "out": f("add", "a", "d")}, A),
    "tanh of zero": ({**ZERO_C, "t": f("tanh", "zc"), "out": f("add", "a", "t")}, A),
    "leaky_relu of zero": ({**ZERO_C, "t": f("leaky_relu", "zc"), "out": f("add", "a", "t")}, A),
    "blend of equals": ({"z": f("sigmoid", "b"), "out": f("blend", "z", "a", "a")}, A),
    "blend with zero gate": ({**ZERO_C, "out": f("blend", "zc", "b", "a")}, A),
    "blend with zero last": ({**ZERO_C, "z": f("sigmoid", "b"), "out": f("blend", "z", "a", "zc")},
                             {"z": f("sigmoid", "b"), "out": f("mul", "z", "a")}),
    "mean of equals": ({"t": f("tanh", "a"), "out": f("mean", "t", "t")}, {"out": f("tanh", "a")}),
    "mean of one": ({"t": f("tanh", "a"), "out": f("mean", "t")}, {"out": f("tanh", "a")}),
    "equal nodes merged": ({"t": f("tanh", "a"), "u": f("tanh", "a"), "out": f("mul", "t", "u")},
                           {"t": f("tanh", "a"), "out": f("mul", "t", "t")}),
    "linear drops zero terms": ({**ZERO_C, "l": lin("x", "h", "zc"), "out": f("tanh", "l")},
                                {"l": lin("x", "h"), "out": f("tanh", "l")}),
    "linear reading one value twice": ({"i": f("identity", "h"), "l": lin("x", "h", "i"), "out": f("tanh", "l")},
                                       {"l": lin("x", "h"), "out": f("tanh", "l")}),
}


def with_c(nodes):
    """A cell of BASE + `nodes`; with state (h, c) and c' = relu(c) where `nodes` use ZERO_C."""
    if "zc" in nodes:
        return cell({**BASE, **nodes}, {"h": "out", "c": "zc"}, state=("h", "c"))
    return cell({**BASE, **nodes})


@pytest.mark.parametrize("one, other", EQUAL.values(), ids=EQUAL.keys())
def test_spellings_of_one_function_hash_alike(one, other):
    a, b = with_c(one), with_c(other)
    assert a != b
    assert same(a, b), (a.canonical(), b.canonical())


def test_the_hash_still_tells_functions_apart():
    hashes = {with_c(other).canonical_hash() for _, other in EQUAL.values()}
    # Six functions among the right-hand sides: a, tanh(a) (twice spelled), relu(a), sigmoid(a),
    # sigmoid(b) * a and tanh(a) * tanh(a).
    assert len(hashes) == 6


NOT_ZERO = {
    # sigmoid(0) = 0.5: a constant, not a zero, so b * sigmoid(0) is not 0.
    "sigmoid of zero": {**ZERO_C, "s": f("sigmoid", "zc"), "m": f("mul", "b", "s"), "out": f("add", "a", "m")},
    # linear(0) = its bias: a trainable constant.
    "bias-only linear": {**ZERO_C, "k": lin("zc"), "out": f("add", "a", "k")},
    # sub(0, b) = -b.
    "zero minus": {**ZERO_C, "d": f("sub", "zc", "b"), "out": f("add", "a", "d")},
    # mean(a, 0) = a / 2.
    "mean with a zero": {**ZERO_C, "out": f("mean", "a", "zc")},
}


@pytest.mark.parametrize("nodes", NOT_ZERO.values(), ids=NOT_ZERO.keys())
def test_what_does_not_fold_to_zero_stays(nodes):
    spec = with_c(nodes)
    assert not same(spec, with_c(A))
    canon = spec.canonical()
    assert canon.state == ("h",)  # c is gone; the zero it gave is one node sub(h, h)
    assert canon.node("zero").op == "sub" and canon.node("zero").inputs == ("h", "h")


def test_a_bias_only_linear_without_bias_is_zero():
    assert same(with_c({**ZERO_C, "k": lin("zc", bias=False), "out": f("add", "a", "k")}), with_c(A))


# -- properties over random cells ---------------------------------------------------------------
def test_canonical_form_is_a_valid_fixed_point():
    for spec in RANDOM_CELLS:
        canon = spec.canonical()
        assert canon.canonical() == canon, spec
        assert canon.canonical_hash() == spec.canonical_hash()
        assert len(canon.nodes) <= len(spec.nodes) + 1  # + the zero node at most
        assert canon.state[0] == spec.state[0] and set(canon.state) <= set(spec.state)


def test_simplification_happens_in_random_cells():
    # The random cells use sub, blend and several states: some fold. A canonical form that never
    # changed anything would pass the test above vacuously.
    assert sum(s.canonical() != s for s in RANDOM_CELLS) >= 10


def test_relabelled_canonical_forms_hash_alike():
    rng = random.Random(5)
    for spec in RANDOM_CELLS[:80]:
        assert relabel(spec, rng).canonical_hash() == spec.canonical_hash()


@pytest.mark.parametrize("name", KNOWN_CELLS)
def test_reference_cells_are_their_own_canonical_form(name):
    spec = known_cell(name)
    if name == "darts_v2":  # its identity activation is dropped: one node less
        assert len(spec.canonical().nodes) == len(spec.nodes) - 1
    else:
        assert spec.canonical() == spec


# -- validity is judged on the canonical form ---------------------------------------------------
REFUSED = {
    "state operand stays zero": (({"zc": f("relu", "c"), "a": lin("x", "zc"), "out": f("tanh", "a")},
                                  {"h": "out", "c": "zc"}, ("h", "c")),
                                 ["does not depend on the previous state", "stay zero", ": c)"]),
    "h stays zero": (({"p": lin("x", bias=False), "q": lin("h", bias=False), "out": f("mul", "p", "q")},
                      None, ("h",)), ["does not depend on the input 'x'", "stay zero", ": h)"]),
    "no weight": (({"t": f("tanh", "h"), "out": f("add", "x", "t")}, None, ("h",)),
                  ["no trainable weight", "only 'linear' nodes have weights"]),
    "weight only in a zero term": (({"zc": f("relu", "c"), "l": lin("zc"), "m": f("mul", "l", "zc"),
                                     "s": f("add", "x", "h"), "out": f("add", "s", "m")},
                                    {"h": "out", "c": "zc"}, ("h", "c")), ["no trainable weight"]),
    "x only through a zero": (({"a": lin("h"), "d": f("sub", "x", "x"), "out": f("add", "a", "d")}, None, ("h",)),
                              ["does not depend on the input 'x'", "always zero"]),
}


@pytest.mark.parametrize("args, fragments", REFUSED.values(), ids=REFUSED.keys())
def test_cells_degenerate_after_folding_are_refused(args, fragments):
    with pytest.raises(CellError) as err:
        cell(*args)
    for fragment in fragments:
        assert fragment in str(err.value)


# -- identify -----------------------------------------------------------------------------------
def test_identify_names_reference_cells_in_any_spelling():
    rng = random.Random(3)
    for name in KNOWN_CELLS:
        assert identify(known_cell(name)) == name
        assert identify(relabel(known_cell(name), rng)) == name
    # GRU with its blend spelled through an identity node and an unused extra state.
    data = known_cell("gru").to_dict()
    data["nodes"] |= {"hid": f("identity", "h_new"), "cl": lin("x", "c")}
    data |= {"state": ["h", "c"], "outputs": {"h": "hid", "c": "cl"}}
    assert identify(CellSpec.from_dict(data)) == "gru"


def test_identify_returns_none_for_other_cells():
    assert identify(known_cell("lstm", forget_bias=0.0)) is None
    assert all(identify(s) is None for s in RANDOM_CELLS[:50])


# -- known spellings that the canonical form does not unify (pinned, like nasbench's) ------------
def test_known_gap_two_biases_versus_one():
    # W x + b1 + U h + b2 and W x + U h + b compute the same family of functions, but the first
    # has two bias vectors (and another initialisation): not unified.
    split = cell({"p": lin("x"), "q": lin("h"), "out": f("add", "p", "q")})
    assert not same(split, cell({"out": lin("x", "h")}))


def test_known_gap_constants_are_not_evaluated():
    # sigmoid(0) * a is 0.5 * a, which a following linear absorbs; kept as spelled.
    half = with_c({**ZERO_C, "s": f("sigmoid", "zc"), "m": f("mul", "a", "s"), "out": lin("m")})
    assert not same(half, with_c({"out": lin("a")}))


def test_relu_of_a_leaky_relu_with_a_negative_slope_is_not_relu():
    # leaky_relu(a) with slope < 0 is positive where a < 0, so relu keeps it: another function
    negative = {"a": lin("x", "h"), "l": {**f("leaky_relu", "a"), "negative_slope": -0.5}, "out": f("relu", "l")}
    assert not same(cell(negative), cell({"a": lin("x", "h"), "out": f("relu", "a")}))
