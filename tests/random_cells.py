"""Random valid cells and random relabellings of them, shared by the hash and compiler tests.

A random cell is a random DAG of linear / elementwise nodes over x and 1-3 state vectors, redrawn
until h' reads x and the state, and repaired where CellSpec still refuses it (see `_valid`). A relabelling renames nodes
and state vectors, shuffles the node list and the operands of commutative ops: it describes the
same computation, so it must keep the canonical hash.
"""

from __future__ import annotations

import random

from nas.cell import OPS, CellError, CellSpec, Node
from nas.cell.known import f, lin

ELEMENTWISE = ("add", "mul", "sub", "blend", "tanh", "sigmoid", "relu")
STATE_NAMES = ("h", "c", "m")


def random_cell(rng: random.Random, max_nodes: int = 12, raw_x: bool = True) -> CellSpec:
    """A random valid cell. raw_x=False keeps x away from elementwise ops (so input_size may
    differ from hidden_size when compiling)."""
    while True:
        state = STATE_NAMES[:rng.randint(1, 3)]
        available = ["x", *state]
        nodes = []

        def pick(pool: list[str]) -> str:  # favour recent nodes, so that cells are deep
            return rng.choice(pool[-3:] if rng.random() < 0.6 else pool)

        for i in range(rng.randint(2, max_nodes)):
            name = f"n{i}"
            if rng.random() < 0.4:
                inputs = tuple(dict.fromkeys(pick(available) for _ in range(rng.randint(1, 3))))
                options = (("bias", rng.random() < 0.8), ("bias_init", rng.choice([0.0, 0.0, 1.0])))
                nodes.append(Node(name, "linear", inputs, options))
            else:
                op = rng.choice(ELEMENTWISE)
                pool = available if raw_x else [a for a in available if a != "x"]
                if not pool:
                    continue
                arity = OPS[op].arity[0]
                nodes.append(Node(name, op, tuple(pick(pool) for _ in range(arity))))
            available.append(name)
        made = [n.name for n in nodes]
        if not made:
            continue
        outputs = (made[-1],) + tuple(rng.choice(made + list(state)) for _ in state[1:])
        if not _reads_x_and_state(nodes, outputs[0], state):
            continue
        return _valid(state, nodes, outputs)


def _reads_x_and_state(nodes: list[Node], out: str, state: tuple[str, ...]) -> bool:
    """Whether h' reads x and a state vector, as spelled (the rule before canonical forms)."""
    by_name = {n.name: n for n in nodes}
    seen, stack = set(), [out]
    while stack:
        cur = stack.pop()
        if cur not in seen:
            seen.add(cur)
            stack.extend(by_name[cur].inputs if cur in by_name else ())
    return "x" in seen and bool(seen & set(state))


def _valid(state: tuple[str, ...], nodes: list[Node], outputs: tuple[str, ...]) -> CellSpec:
    """The cell, or where only the canonical form breaks a rule (a state operand that stays zero,
    no weight on h's path) the cell with h' = linear(h', x, h), which is always valid. Repairing
    instead of redrawing keeps every seed's other cells (and the tests seeded with them) as they
    were before those rules."""
    try:
        return CellSpec(state, tuple(nodes), outputs)
    except CellError:
        fix = Node(f"n{len(nodes)}", "linear", tuple(dict.fromkeys((outputs[0], "x", state[0]))))
        return CellSpec(state, (*nodes, fix), (fix.name,) + outputs[1:])


def relabel(spec: CellSpec, rng: random.Random) -> CellSpec:
    """The same cell under fresh node and state names, shuffled node order and shuffled operands
    of commutative ops."""
    fresh = rng.sample(range(10_000), len(spec.nodes) + len(spec.state))
    rename = {"x": "x"}
    for old, k in zip([n.name for n in spec.nodes] + list(spec.state), fresh):
        rename[old] = f"q{k}"
    nodes = []
    for n in spec.nodes:
        inputs = [rename[i] for i in n.inputs]
        if OPS[n.op].commutative:
            rng.shuffle(inputs)
        nodes.append(Node(rename[n.name], n.op, tuple(inputs), n.options))
    rng.shuffle(nodes)
    return CellSpec(tuple(rename[s] for s in spec.state), tuple(nodes),
                    tuple(rename[o] for o in spec.outputs))


def random_cells(seed: int, count: int, **kw: object) -> list[CellSpec]:
    rng = random.Random(seed)
    return [random_cell(rng, **kw) for _ in range(count)]


def marked_names(spec: CellSpec) -> CellSpec:
    """The same cell with every node name prefixed NODE_ and every state name STATE_, to check that
    generated code never contains a name taken from a spec."""
    rename = {n.name: f"NODE_{k}_{n.name}" for k, n in enumerate(spec.nodes)}
    rename |= {s: f"STATE_{s}" for s in spec.state}
    return CellSpec.from_dict({
        "state": [rename[s] for s in spec.state],
        "nodes": {rename[n.name]: {"op": n.op, "in": [rename.get(i, i) for i in n.inputs], **dict(n.options)}
                  for n in spec.nodes},
        "outputs": {rename[s]: rename.get(o, o) for s, o in zip(spec.state, spec.outputs)}})


# Every op of the registry, including those the random cells do not draw.
ALL_OPS = CellSpec.from_dict({"state": ["h", "c"], "nodes": {
    "a": lin("x", "h"), "b": lin("x", "c", bias=False), "m": f("mean", "a", "b", "c"),
    "l": {"op": "leaky_relu", "in": ["m"], "negative_slope": 0.2}, "i": f("identity", "l"),
    "d": lin("i", "h"), "out": f("blend", "a", "d", "x"), "c_new": f("sub", "i", "x"),
}, "outputs": {"h": "out", "c": "c_new"}})


# Two products of one round read one value (h, and an identity of h): the second must add to the
# first's gradient, not overwrite it.
SHARED_SOURCE = CellSpec.from_dict({"state": ["h"], "nodes": {
    "n1": {"op": "identity", "in": ["h"]}, "n2": {"op": "linear", "in": ["h", "n1", "x"]},
    "n3": {"op": "tanh", "in": ["n2"]}}, "outputs": {"h": "n3"}})

# A product's source in the columns of another product (b = tanh(W [x, h]) is activated in place):
# that G buffer must keep its values for the weight gradients after the loop, so it cannot also
# hold the backward's gradient (nas.compile.sequence.layout.Layout._hosts).
SOURCE_IN_SLAB = CellSpec.from_dict({"state": ["h"], "nodes": {
    "a": lin("x", "h"), "b": f("tanh", "a"), "c": lin("b"), "h_new": f("sigmoid", "c")},
    "outputs": {"h": "h_new"}})
# A product of an identity of x.
X_SOURCE = CellSpec.from_dict({"state": ["h"], "nodes": {
    "n1": {"op": "identity", "in": ["x"]}, "n2": {"op": "linear", "in": ["n1", "h"]},
    "n3": {"op": "sigmoid", "in": ["n2"]}}, "outputs": {"h": "n3"}})


# A large cell: its size is what the tests and benchmarks/compile_time.py vary.
def chain(n: int, name: str = "chain") -> CellSpec:
    """n nodes in a chain: linear(x, h), then tanh, add, mul of the last two nodes and a linear node
    on the previous one and h, in turn (each linear starts a stage of the generated kernels: the
    costliest shape to compile per node)."""
    nodes = {"n0": lin("x", "h")}
    for i in range(1, n):
        p, q = f"n{i - 1}", f"n{max(i - 2, 0)}"
        op = ("linear", "tanh", "add", "mul")[i % 4]
        nodes[f"n{i}"] = lin(p, "h") if op == "linear" else f(op, p) if op == "tanh" else f(op, p, q)
    return CellSpec.from_dict({"name": name, "state": ["h"], "nodes": nodes, "outputs": {"h": f"n{n - 1}"}})


# -- running a model on random data, for the tests that compare two paths of the same cell --------
def random_inputs(model, T: int, B: int, device=None) -> tuple:
    """(x, initial state, gradient of the output) for a CellRNN, on `device` (default: its own)."""
    import torch

    H, K = model.hidden_size, len(model.spec.state)
    device = device or next(model.parameters()).device
    x = torch.randn(T, B, model.input_size, device=device)
    state = tuple(torch.randn(model.num_layers, B, H, device=device) for _ in range(K))
    return x, state, torch.randn(T, B, H, device=device)


def outputs_and_grads(model, x, state, dout) -> list:
    """Output, final state, and the gradients of a loss reading both w.r.t. input, initial state
    and every parameter: everything a fast path must reproduce."""
    import torch

    x = x.clone().requires_grad_(True)
    state = tuple(s.clone().requires_grad_(True) for s in state)
    out, final = model(x, state)
    loss = (out * dout).sum() + sum((f * f).sum() for f in final)
    grads = torch.autograd.grad(loss, [x, *state, *model.parameters()])
    return [out.detach(), *(f.detach() for f in final), *grads]
