"""tree: the base-N tree of the NAS cell search space (Zoph & Le 2017), state (h, c).

Leaf k (k = 0..N-1) combines W_k x and U_k h, by addition (one linear node W_k x + U_k h) or by
multiplication (W_k x * U_k h), then applies its activation. Internal nodes, numbered level by level
from the leaves up (node 0..N/2-1 read the leaves pairwise, the next N/4 read those, ..., node N-2
is the root), combine their two children by add or mul and apply their activation. Cell-state
injection: the output o of internal node `inject.node` is replaced by act_inject(combine_inject(o,
c_{t-1})) before its parent reads it; c_t is the output (after any injection) of internal node
`new_c.node`; h_t is the root's output. An `identity` activation adds no node. No biases and no
projection, as in TensorFlow's NASCell.

Repair: a leaf W x * U h is zero while h is, and h starts at zero; when every path to the root
multiplies by such a zero (or by the injection c * o while c stays zero), h stays zero forever and
CellSpec refuses the cell (17% of uniformly random samples, 1000 RandomSampler trials). Such a cell
is repaired: the leaves' `mul` combines, in leaf order, then the injection's, are read as `add`
until the cell is valid (all `add` always is). So every sample is valid, and a given set of
params always gives the same cell; NASCell (leaf 3 a product) needs no repair.

With N = 8 this reproduces NASCell (nas.cell.known.nas_cell): its l2_0 is internal node 0, injected
with add and tanh after its own tanh; its l3_0 is node 4 (mul, identity), which becomes c_t; the root
node 6 is tanh(l3_0 * l3_1).

Departure from Zoph & Le: their controller also picks which tree node to inject and which gives c_t,
but from every node including the leaves; here both are internal nodes (as in their cell), so that
c_{t-1} always meets a combination of several leaves.

Options (keyword arguments of `sample`, e.g. from conf/search_space/tree.yaml):
    base: int = 8    number of leaves N, a power of two >= 2 (the paper uses 8; 2 and 4 are
                     the small variants).

Parameters (define-by-run; each name has one choice set for given options):
    leaf{k}.combine, node{i}.combine, inject.combine   "add" or "mul"
    leaf{k}.act, node{i}.act, inject.act              "tanh", "sigmoid", "relu", "identity"
    inject.node, new_c.node                           0 .. N-2 (internal nodes)
"""

from __future__ import annotations

from typing import Any

from optuna.trial import BaseTrial

from nas.cell import CellError, CellSpec

NAME = "tree"
COMBINES = ("add", "mul")
ACTIVATIONS = ("tanh", "sigmoid", "relu", "identity")


def sample(trial: BaseTrial, *, base: int = 8) -> CellSpec:
    """A cell from the trial's decisions (see the module docstring for the parameters)."""
    check_options(base)
    internal = list(range(base - 1))
    inject = trial.suggest_categorical("inject.node", internal)
    new_c = trial.suggest_categorical("new_c.node", internal)
    nodes: dict[str, dict[str, Any]] = {}
    level = [_leaf(trial, k, nodes) for k in range(base)]
    outs: list[str] = []  # internal node i's output (after any injection)
    while len(level) > 1:
        for a, b in zip(level[::2], level[1::2]):
            i = len(outs)
            out = _apply(trial, f"node{i}", f"v{i}", a, b, nodes)
            if i == inject:
                out = _apply(trial, "inject", f"inj{i}", out, "c", nodes)
            outs.append(out)
        level = outs[-len(level) // 2:]
    return _repaired(nodes, {"h": outs[-1], "c": outs[new_c]}, base, inject)


def _repaired(nodes: dict[str, dict[str, Any]], outputs: dict[str, str], base: int, inject: int) -> CellSpec:
    """The cell, valid: while h would stay zero (see the module docstring), the next `mul` among
    the leaves (in order), then the injection's, is read as `add`. With all of them `add` every
    leaf is act(W x + U h) and the injection c + o, never zero, so the last build cannot fail."""
    repairs = [k for k in range(base) if f"m{k}" in nodes]
    if nodes[f"inj{inject}_pre"]["op"] == "mul":
        repairs.append(None)
    for k in repairs:
        try:
            return CellSpec.from_dict({"name": NAME, "state": ["h", "c"], "nodes": nodes, "outputs": outputs})
        except CellError:
            if k is None:  # the injection (its own dict: _apply made it for this call)
                nodes[f"inj{inject}_pre"] = {**nodes[f"inj{inject}_pre"], "op": "add"}
            else:  # W_k x * U_k h -> W_k x + U_k h, one linear node as in _leaf (p_k, q_k now dead)
                nodes[f"m{k}"] = {"op": "linear", "in": ["x", "h"], "bias": False}
    return CellSpec.from_dict({"name": NAME, "state": ["h", "c"], "nodes": nodes, "outputs": outputs})


def _leaf(trial: BaseTrial, k: int, nodes: dict[str, dict[str, Any]]) -> str:
    """combine(W_k x, U_k h) as known.nas_cell writes it: addition is one linear node."""
    if trial.suggest_categorical(f"leaf{k}.combine", COMBINES) == "add":
        nodes[f"s{k}"] = {"op": "linear", "in": ["x", "h"], "bias": False}
        value = f"s{k}"
    else:
        nodes[f"p{k}"] = {"op": "linear", "in": ["x"], "bias": False}
        nodes[f"q{k}"] = {"op": "linear", "in": ["h"], "bias": False}
        nodes[f"m{k}"] = {"op": "mul", "in": [f"p{k}", f"q{k}"]}
        value = f"m{k}"
    return _activate(trial, f"leaf{k}", f"l{k}", value, nodes)


def _apply(trial: BaseTrial, param: str, name: str, a: str, b: str,
           nodes: dict[str, dict[str, Any]]) -> str:
    """act(combine(a, b)) with the decisions `{param}.combine` and `{param}.act`."""
    nodes[f"{name}_pre"] = {"op": trial.suggest_categorical(f"{param}.combine", COMBINES), "in": [a, b]}
    return _activate(trial, param, name, f"{name}_pre", nodes)


def _activate(trial: BaseTrial, param: str, name: str, value: str, nodes: dict[str, dict[str, Any]]) -> str:
    act = trial.suggest_categorical(f"{param}.act", ACTIVATIONS)
    if act == "identity":  # no node: NASCell's l3_0 is the bare product
        return value
    nodes[name] = {"op": act, "in": [value]}
    return name


def check_options(base: int) -> None:
    """ValueError (never CellError: a bad option is not a bad cell) unless base is a power of 2 >= 2."""
    if not (isinstance(base, int) and base >= 2 and base & (base - 1) == 0):
        raise ValueError(f"tree: base must be a power of two >= 2 (2, 4, 8, ...), got {base!r}")


# NASCell (Zoph & Le 2017), see nas.cell.known.nas_cell: leaf and internal (combine, act) in order.
_NAS_CELL_LEAVES = [("add", "sigmoid"), ("add", "relu"), ("add", "sigmoid"), ("mul", "relu"),
                    ("add", "tanh"), ("add", "sigmoid"), ("add", "tanh"), ("add", "sigmoid")]
_NAS_CELL_NODES = [("mul", "tanh"), ("add", "tanh"), ("mul", "tanh"), ("add", "sigmoid"),
                   ("mul", "identity"), ("add", "tanh"), ("mul", "tanh")]


def known_params(*, base: int = 8) -> dict[str, dict[str, Any]]:
    """Parameters of the published cell (nas_cell) when the options can express it (base 8)."""
    check_options(base)
    if base != 8:
        return {}
    params: dict[str, Any] = {"inject.node": 0, "inject.combine": "add", "inject.act": "tanh",
                              "new_c.node": 4}
    for kind, pairs in (("leaf", _NAS_CELL_LEAVES), ("node", _NAS_CELL_NODES)):
        for k, (combine, act) in enumerate(pairs):
            params.update({f"{kind}{k}.combine": combine, f"{kind}{k}.act": act})
    return {"nas_cell": params}
