"""graph: a free DAG of linear and elementwise nodes (NAS-Bench-NLP style, Klyuchnikov et al. 2020).

The cell has 1 to 3 state vectors (h, c, m) and `n_nodes` nodes n0, n1, ... in order. n0 is always
linear(x, h) (W x + U h + b); node i >= 1 applies one op to operands drawn from x, the previous
state vectors and the nodes before it; a `linear` node sums 1 to 3 distinct operands
(W_1 a_1 + ... + W_k a_k + b). Each linear's bias is initialised to 0.0 or 1.0 (the LSTM's forget
gate uses 1.0). h' is the last node that depends on both x and the previous state and makes a
valid cell (n0 at worst, see below);
every further state vector takes its new value from a node of its choice. Nodes that no output
reads are dead and pruned by `CellSpec`, so a cell of m live nodes is expressible with any
n_nodes >= m (rnn_tanh needs 2, gru 10, lstm 13): see `params_of`.

Options (keyword arguments of `sample`, e.g. from conf/search_space/graph.yaml):
    min_nodes: int = 4, max_nodes: int = 16   range of `n_nodes` (fix it with min_nodes = max_nodes).
    ops: sequence of op names = DEFAULT_OPS   the ops of nodes 1.. : `linear` or any registered op
                                              of fixed arity (so not `mean`); n0 is linear anyway.

Parameters (define-by-run; each name has one choice set for given options):
    n_state                 1, 2 or 3
    n_nodes                 min_nodes .. max_nodes
    node0.bias_init         0.0 or 1.0
    node{i}.op              ops (i >= 1)
    node{i}.n_in            1 .. 3, for a linear node
    node{i}.bias_init       0.0 or 1.0, for a linear node
    s{S}.node{i}.in{j}      operand j of node i when there are S state vectors: x, the S state
                            names, n0 .. n{i-1}. S is in the name because it changes the choices.
    nodes{N}.out.{s}        the node giving state vector s (c, m) its new value: n0 .. n{N-1}.

The op set: NAS-Bench-NLP uses linear, blend, elementwise sum and product, tanh, sigmoid and
leaky_relu; DEFAULT_OPS adds relu. `identity` is left out because it computes nothing: it only gives
one function several spellings (and hashes), so a search would pay to evaluate each. `sub` is left
out because a - b is covered where it matters: a linear learns the sign of each term and
blend(z, a, b) = b + z (a - b) is the gated difference, so it would mostly add near-duplicates of
add. Either can be put back with the `ops` option. A repeated operand of a linear (W_1 a + W_2 a) is
one term and is merged deterministically (first occurrence kept) rather than rejected.

Invalid cells, and the two departures from "h' = the last node": CellSpec rejects a cell whose h'
does not depend on both x and the previous state, or has no weight on its path, judged on the
canonical form (state vectors that stay zero from the zero initial state folded away). With h' =
the last node and n0 free, 55% of uniformly random samples broke the dependence rule (default
options, 1000 RandomSampler trials); fixing n0 to linear(x, h) alone left 37%, taking h' = the last
node reading x and the state alone left 17%. So h' is the last node that makes a valid cell, among
those reading x and the state: n0 = linear(x, h) always does, so every sample is valid (0%, pinned
by a 1,000-sample test). The last such node was refused in 21% of samples (with the weight and
zero-state rules; 1000 RandomSampler trials, seed 0): mostly h' = mul(x, h)-like cells with no
weight on their path (n0 dead), or an h' whose state operand stays zero (c' = relu(c)). No valid
cell is lost: a cell whose last x-and-state node is valid comes out as before, and a cell without
a linear(x, h) needs one more node (n0, left dead). Choices are not biased, so random search still
draws each decision uniformly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optuna.trial import BaseTrial, FixedTrial

from nas.cell import KNOWN_CELLS, OPS, CellError, CellSpec, Node, known_cell

NAME = "graph"
STATE_NAMES = ("h", "c", "m")
DEFAULT_OPS = ("linear", "blend", "add", "mul", "tanh", "sigmoid", "relu", "leaky_relu")
MAX_LINEAR_IN = 3
BIAS_INITS = (0.0, 1.0)


def sample(trial: BaseTrial, *, min_nodes: int = 4, max_nodes: int = 16,
           ops: Sequence[str] = DEFAULT_OPS) -> CellSpec:
    """A cell from the trial's decisions (see the module docstring for the parameters)."""
    ops = check_options(min_nodes, max_nodes, ops)
    n_state = trial.suggest_categorical("n_state", [1, 2, 3])
    state = STATE_NAMES[:n_state]
    n_nodes = trial.suggest_int("n_nodes", min_nodes, max_nodes)
    bias_init = trial.suggest_categorical("node0.bias_init", BIAS_INITS)
    nodes: dict[str, dict[str, Any]] = {"n0": {"op": "linear", "in": ["x", "h"], "bias_init": bias_init}}
    # What each value depends on, to find h' (the last node that reads x and the state).
    reads = {"x": {"x"}, **{s: {"state"} for s in state}, "n0": {"x", "state"}}
    for i in range(1, n_nodes):
        pool = ["x", *state, *nodes]
        name = f"n{i}"
        nodes[name] = _node(trial, i, pool, n_state, ops)
        reads[name] = set().union(*(reads[a] for a in nodes[name]["in"]))
    names = list(nodes)
    others = {s: trial.suggest_categorical(f"nodes{n_nodes}.out.{s}", names) for s in state[1:]}
    return _with_valid_output(state, nodes, others, [n for n in names if reads[n] == {"x", "state"}])


def _with_valid_output(state: tuple[str, ...], nodes: dict[str, dict[str, Any]], others: dict[str, str],
                       candidates: list[str]) -> CellSpec:
    """The cell whose h' is the last candidate that makes it valid (CellSpec's rules, read on the
    canonical form). n0 = linear(x, h), the first candidate, always does: h' then reads x and h
    through a weight, whatever c and m do, so this never raises."""
    for h_out in reversed(candidates[1:]):
        try:
            return CellSpec.from_dict({"name": NAME, "state": list(state), "nodes": nodes,
                                       "outputs": {"h": h_out, **others}})
        except CellError:
            continue  # e.g. no weight on its path, or its state operands stay zero: try the one before
    return CellSpec.from_dict({"name": NAME, "state": list(state), "nodes": nodes,
                               "outputs": {"h": candidates[0], **others}})


def _node(trial: BaseTrial, i: int, pool: list[str], n_state: int, ops: list[str]) -> dict[str, Any]:
    op = trial.suggest_categorical(f"node{i}.op", ops)

    def operand(j: int) -> str:
        return trial.suggest_categorical(f"s{n_state}.node{i}.in{j}", pool)

    if op == "linear":
        k = trial.suggest_int(f"node{i}.n_in", 1, MAX_LINEAR_IN)
        operands = list(dict.fromkeys(operand(j) for j in range(k)))  # W a + W' a is one term
        bias_init = trial.suggest_categorical(f"node{i}.bias_init", BIAS_INITS)
        return {"op": op, "in": operands, "bias_init": bias_init}
    return {"op": op, "in": [operand(j) for j in range(OPS[op].arity[0])]}


def check_options(min_nodes: int, max_nodes: int, ops: Sequence[str]) -> list[str]:
    """Validate the options (ValueError, never CellError: a bad option is not a bad cell) and
    return the op list."""
    if not (isinstance(min_nodes, int) and isinstance(max_nodes, int) and 1 <= min_nodes <= max_nodes):
        raise ValueError(f"graph: expected integers 1 <= min_nodes <= max_nodes, got "
                         f"min_nodes={min_nodes!r}, max_nodes={max_nodes!r}")
    ops = [str(o) for o in ops]
    usable = [name for name, op in OPS.items()
              if name == "linear" or (not op.has_weights and op.arity[0] == op.arity[1])]
    bad = [o for o in ops if o not in usable]
    if bad or not ops or len(set(ops)) != len(ops):
        raise ValueError(f"graph: ops must be distinct names among {usable}, got {ops}")
    return ops


def params_of(spec: CellSpec, *, min_nodes: int = 4, max_nodes: int = 16,
              ops: Sequence[str] = DEFAULT_OPS) -> dict[str, Any] | None:
    """The parameters with which `sample` rebuilds `spec` (same canonical hash), or None when the
    space cannot express it. A linear(x, h) of the spec becomes n0 if there is one (else n0 is an
    extra, dead, linear(x, h)); dead filler nodes reading only x pad the cell to min_nodes; the
    node giving h' goes last."""
    ops = check_options(min_nodes, max_nodes, ops)
    if len(spec.state) > len(STATE_NAMES) or not set(spec.outputs) <= {n.name for n in spec.nodes}:
        return None
    h_node = spec.node(spec.outputs[0])
    if any(h_node.name in n.inputs for n in spec.nodes):
        return None  # h' must be the last node
    first = next((n for n in spec.nodes if n is not h_node and n.op == "linear"
                  and sorted(n.inputs) == sorted(("x", spec.state[0]))), None)
    rest = [n for n in spec.nodes if n not in (first, h_node)] + [h_node]
    if not all(_fits(n, ops) for n in rest) or (first is not None and not _fits(first, ["linear"])):
        return None
    pad = max(min_nodes - 1 - len(rest), 0)
    n_nodes, n_state = 1 + pad + len(rest), len(spec.state)
    if n_nodes > max_nodes:
        return None
    rename = dict(zip(("x", *spec.state), ("x", *STATE_NAMES)))
    rename.update({n.name: f"n{1 + pad + i}" for i, n in enumerate(rest)})
    params: dict[str, Any] = {"n_state": n_state, "n_nodes": n_nodes, "node0.bias_init": 0.0}
    if first is not None:
        rename[first.name] = "n0"
        params["node0.bias_init"] = first.option("bias_init")
    filler = ops[0]
    for i in range(1, 1 + pad):  # they read only x: nothing reads them, so CellSpec prunes them
        operands = ["x"] * (1 if filler == "linear" else OPS[filler].arity[0])
        params.update(_node_params(i, n_state, filler, operands, 0.0))
    for i, n in enumerate(rest, start=1 + pad):
        bias_init = n.option("bias_init") if n.op == "linear" else None
        params.update(_node_params(i, n_state, n.op, [rename[a] for a in n.inputs], bias_init))
    for s, out in zip(STATE_NAMES[1:], spec.outputs[1:]):
        params[f"nodes{n_nodes}.out.{s}"] = rename[out]
    # The rule for h' (the last node reading x and the state) may pick another node: replay to check.
    options = {"min_nodes": min_nodes, "max_nodes": max_nodes, "ops": ops}
    if sample(FixedTrial(params), **options).canonical_hash() != spec.canonical_hash():
        return None
    return params


def _fits(node: Node, ops: list[str]) -> bool:
    """Whether a node of this space can compute `node`."""
    if node.op != "linear":
        return node.op in ops
    return ("linear" in ops and node.option("bias") and node.option("bias_init") in BIAS_INITS
            and len(node.inputs) <= MAX_LINEAR_IN)


def _node_params(i: int, n_state: int, op: str, operands: list[str], bias_init: Any) -> dict[str, Any]:
    params: dict[str, Any] = {f"node{i}.op": op}
    params.update({f"s{n_state}.node{i}.in{j}": a for j, a in enumerate(operands)})
    if op == "linear":
        params.update({f"node{i}.n_in": len(operands), f"node{i}.bias_init": bias_init})
    return params


# The space protocol's optional `encode(spec, **options)`: seeds a search with the user's own cells.
encode = params_of


def known_params(*, min_nodes: int = 4, max_nodes: int = 16,
                 ops: Sequence[str] = DEFAULT_OPS) -> dict[str, dict[str, Any]]:
    """Parameters of every reference cell (nas.cell.known) the space can express with these options."""
    found = {name: params_of(known_cell(name), min_nodes=min_nodes, max_nodes=max_nodes, ops=ops)
             for name in KNOWN_CELLS}
    return {name: params for name, params in found.items() if params is not None}
