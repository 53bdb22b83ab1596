"""The canonical form of a cell and its hash: one hash per function, stable across processes.

Canonical form (`simplify`, read by `CellSpec.canonical` and by CellSpec's recurrence check). The initial state
is zero (CellRNN's default, and how every evaluation starts), so some spellings compute the same
function; the canonical form keeps one of them:

- state vectors that provably stay zero are folded away: a state is zero if its update is zero
  when every zero state is zero (the greatest fixed point, so c' = relu(c) stays zero). Terms fold:
  relu/tanh/leaky_relu(0) = 0, mul(0, a) = 0, add(0, a) = a, sub(a, 0) = a, sub(a, a) = 0,
  blend(0, a, b) = b, blend(z, a, 0) = mul(z, a), blend(z, a, a) = a, mean(a, ..., a) = a, and a
  linear drops zero operands (a linear with none left is its bias: a trainable constant, kept as
  linear(zero), or 0 without a bias). Where a zero must stay an operand (sigmoid(0) = 0.5,
  sub(0, a), blend(z, 0, b), mean(a, 0)) it is one node `sub(h, h)`;
- identity nodes are dropped, relu(relu(a)) = relu(sigmoid(a)) = leaky_relu(relu(a)) ... = the inner
  node, relu(leaky_relu(a)) = relu(a) (for a slope >= 0), a linear's
  repeated operand is one term (W1 a + W2 a = W a), and equal weightless nodes (same op, options
  and operands) are merged; `linear` nodes are never merged (each owns its weights);
- state vectors that never influence h (nothing on h's path reads them, at any step) are dropped,
  with the nodes only they need.
The canonical form is itself a valid cell computing the same h sequence from a zero initial state.
Known spellings it does not unify are pinned in tests/cell/test_canonical.py (for example
add(linear(x), linear(h)) versus linear(x, h): one bias or two).

Hash (`canonical_hash`): colour refinement (1-dimensional Weisfeiler-Lehman) on the canonical
form's typed DAG, written with hashlib. First colours: a node's op, options and which state
vectors it feeds; inputs by role (x, state vector i), never by name. They are refined by one pass
down the DAG (a node absorbs its operands' colours, sorted for commutative ops, in order
otherwise) and one pass up (consumers' colours, with the operand position when the consumer is
not commutative), then by refinement rounds (both directions at once) until the partition is
stable, at most MAX_ROUNDS. The hash covers the multiset of node colours and the colours of the
outputs in state order. The two passes make chains and trees stable after one round, so the work
is about linear in the cell's size (a 1,000-node chain hashes in 0.06 s; c1's one round per node
took 8 s for 2,000 nodes).

Properties, pinned by tests: node names, node order and the operand order of commutative ops do
not change it; the operand order of `sub` / `blend` does; two `linear` nodes with the same operands
are two nodes (distinct weights). Colour refinement can in principle merge non-isomorphic, highly
regular graphs (and a cell still unstable after MAX_ROUNDS keeps the colours it has: an
invariant, merely coarser); cells anchored to x and the state vectors are far from that regime.

HASH_VERSION is part of every hash: change it whenever the hashed content changes, so that stored
results (dedup, MLflow) are never matched against hashes computed another way. c2: hashes the
canonical form (c1 hashed the spelling) with the two-pass start.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nas.cell.ops import OPS
from nas.cell.parts import INPUT, Cell, Node

HASH_VERSION = "c2"
# After the two passes, every random and reference cell tried (309) was stable after one round;
# the cap bounds a pathological cell's work (a round costs about 0.05 s at the size limits).
MAX_ROUNDS = 16
ZERO = "0"  # a value known to be zero; never a name (names are identifiers)
# Ops with f(0) = 0, and the ops after which relu changes nothing (their output is >= 0).
_ZERO_AT_ZERO = ("relu", "tanh", "leaky_relu")
_NON_NEGATIVE = ("relu", "sigmoid")


# -- canonical form ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Simplified:
    """The canonical form's parts (see the module docstring).

    state, nodes, outputs: the canonical cell (nodes topologically ordered, original names).
    zero_states:           the state vectors that stay zero.
    h_value:               what h' folds to (a node, an input name, or ZERO).
    h_deps:                the inputs (x, state names) that h' really depends on.
    weight_terms:          number of weight matrices (linear operands that are not zero) left.
    """

    state: tuple[str, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]
    zero_states: frozenset[str]
    h_value: str
    h_deps: frozenset[str]
    weight_terms: int


def simplify(state: Sequence[str], nodes: Sequence[Node], outputs: Sequence[str]) -> Simplified:
    """The canonical form of a cell given as checked, topologically ordered nodes."""
    zero = frozenset(state)
    while True:  # greatest fixed point: at most len(state) + 1 passes
        value, _ = _fold(state, nodes, zero)
        still = frozenset(s for s, out in zip(state, outputs) if s in zero and value[out] == ZERO)
        if still == zero:
            break
        zero = still
    value, folded = _fold(state, nodes, zero)
    by_name = {n.name: n for n in folded}
    live_state, live = _live(state, outputs, value, by_name)
    kept = tuple(n for n in folded if n.name in live)
    deps = _deps(kept)
    h_value = value[outputs[0]]
    canon_state = tuple(s for s in state if s in live_state)
    canon_outputs = tuple(value[out] for s, out in zip(state, outputs) if s in live_state)
    weight_terms = sum(sum(i != ZERO for i in n.inputs) for n in kept if OPS[n.op].has_weights)
    h_deps = deps.get(h_value, frozenset() if h_value == ZERO else frozenset({h_value}))
    kept = _with_zero_node(kept, canon_state)
    return Simplified(canon_state, kept, canon_outputs, zero, h_value, h_deps, weight_terms)


def _fold(state: Sequence[str], nodes: Sequence[Node], zero: frozenset[str]) -> tuple[dict[str, str], list[Node]]:
    """Fold `nodes` with the states in `zero` at zero: (value of every name, the nodes left)."""
    value: dict[str, str] = {INPUT: INPUT, **{s: ZERO if s in zero else s for s in state}}
    op_of: dict[str, str] = {}
    kept_of: dict[str, Node] = {}
    merged: dict[tuple[Any, ...], str] = {}
    out: list[Node] = []
    for n in nodes:
        operands = [value[i] for i in n.inputs]
        rule = _rule(n.op, operands, op_of, dict(n.options), kept_of)
        if isinstance(rule, str):
            value[n.name] = rule
            continue
        op, operands = rule
        options = n.options if op == n.op else ()
        spec_op = OPS[op]
        key = (op, options, tuple(sorted(operands)) if spec_op.commutative else tuple(operands))
        if not spec_op.has_weights and key in merged:
            value[n.name] = merged[key]
            continue
        merged[key] = value[n.name] = n.name
        op_of[n.name] = op
        out.append(Node(n.name, op, tuple(operands), options))
        kept_of[n.name] = out[-1]
    return value, out


def _rule(op: str, a: list[str], op_of: dict[str, str], options: dict[str, Any],
          kept_of: dict[str, Node] | None = None) -> str | tuple[str, list[str]]:
    """One node with folded operands `a`: the value it is (a name or ZERO) or (op, operands)."""
    if op == "identity":
        return a[0]
    if op in _ZERO_AT_ZERO and a[0] == ZERO:
        return ZERO
    if op in ("relu", "leaky_relu") and op_of.get(a[0]) in _NON_NEGATIVE:
        return a[0]  # both are the identity on values >= 0
    inner = (kept_of or {}).get(a[0])
    if op == "relu" and inner is not None and inner.op == "leaky_relu" and inner.option("negative_slope") >= 0:
        return "relu", [inner.inputs[0]]  # leaky_relu keeps the sign: relu(leaky_relu(a)) = relu(a)
    if op == "add" and ZERO in a:
        return a[0] if a[1] == ZERO else a[1]
    if op == "sub" and (a[1] == ZERO or a[0] == a[1]):
        return ZERO if a[0] == a[1] else a[0]
    if op == "mul" and ZERO in a:
        return ZERO
    if op == "blend":
        z, x, y = a
        if x == y or z == ZERO:
            return y
        if y == ZERO:  # z * a + (1 - z) * 0
            return _rule("mul", [z, x], op_of, {})
    if op == "mean" and len(set(a)) == 1:
        return a[0]
    if op == "linear":
        terms = list(dict.fromkeys(i for i in a if i != ZERO))  # W1 a + W2 a is one term
        if not terms:
            return (op, [ZERO]) if options["bias"] else ZERO
        return op, terms
    return op, a


def _live(state: Sequence[str], outputs: Sequence[str], value: dict[str, str],
          by_name: dict[str, Node]) -> tuple[set[str], set[str]]:
    """The states that influence h (at some step) and the folded nodes they need."""
    live_state, live = {state[0]}, set()
    todo = [state[0]]
    out_of = dict(zip(state, outputs))
    while todo:
        stack = [value[out_of[todo.pop()]]]
        while stack:
            cur = stack.pop()
            if cur in live:
                continue
            if cur in by_name:
                live.add(cur)
                stack.extend(by_name[cur].inputs)
            elif cur in out_of and cur not in live_state:
                live_state.add(cur)
                todo.append(cur)
    return live_state, live


def _deps(nodes: Sequence[Node]) -> dict[str, frozenset[str]]:
    """The inputs each value depends on, zeros (and so constants) depending on nothing."""
    deps: dict[str, frozenset[str]] = {ZERO: frozenset()}
    for n in nodes:
        deps[n.name] = frozenset().union(*(deps.get(i, frozenset({i})) for i in n.inputs))
    return deps


def _with_zero_node(nodes: tuple[Node, ...], state: tuple[str, ...]) -> tuple[Node, ...]:
    """Spell a remaining zero operand as one node sub(h, h), named apart from every other name."""
    if not any(ZERO in n.inputs for n in nodes):
        return nodes
    taken = {n.name for n in nodes} | set(state)
    name = next(c for c in ("zero", *(f"zero{k}" for k in range(len(taken) + 1))) if c not in taken)
    rename = {ZERO: name}
    zero = Node(name, "sub", (state[0], state[0]))
    return (zero,) + tuple(Node(n.name, n.op, tuple(rename.get(i, i) for i in n.inputs), n.options)
                           for n in nodes)


# -- hash ----------------------------------------------------------------------------------------
def _digest(*parts: bytes) -> bytes:
    return hashlib.blake2b(b"".join(parts), digest_size=16).digest()


def _tag(obj: object) -> bytes:
    return _digest(json.dumps(obj, separators=(",", ":")).encode())


def _count(items: Sequence[bytes]) -> bytes:
    return len(items).to_bytes(4, "big")


def canonical_hash(spec: Cell) -> str:
    """The hash of `spec.canonical()` (see the module docstring)."""
    return _hash(spec.canonical())


def _hash(spec: Cell) -> str:
    feeds: dict[str, list[int]] = {}
    for i, out in enumerate(spec.outputs):
        feeds.setdefault(out, []).append(i)
    roles = {INPUT: "in:x", **{s: f"state:{i}" for i, s in enumerate(spec.state)}}
    colour = {name: _tag([role, feeds.get(name, [])]) for name, role in roles.items()}
    consumers: dict[str, list[tuple[str, bytes]]] = {name: [] for name in roles}
    operands: dict[str, tuple[str, ...]] = {}
    commutative: set[str] = set()
    for n in spec.nodes:
        colour[n.name] = _tag([n.op, list(n.options), feeds.get(n.name, [])])
        consumers[n.name] = []
        operands[n.name] = n.inputs
        if OPS[n.op].commutative:
            commutative.add(n.name)
        for pos, operand in enumerate(n.inputs):
            consumers[operand].append((n.name, b"*" if n.name in commutative else pos.to_bytes(2, "big")))

    def down(name: str, c: dict[str, bytes]) -> list[bytes]:
        ops = [c[i] for i in operands.get(name, ())]
        return sorted(ops) if name in commutative else ops

    def up(name: str, c: dict[str, bytes]) -> list[bytes]:
        return sorted(c[u] + pos for u, pos in consumers[name])

    order = [n.name for n in spec.nodes]
    for name in order:  # down the DAG: a node's colour describes the expression it computes
        ops = down(name, colour)
        colour[name] = _digest(colour[name], _count(ops), *ops)
    for name in reversed(list(roles) + order):  # up: and where its value goes
        users = up(name, colour)
        colour[name] = _digest(colour[name], _count(users), *users)
    distinct = len(set(colour.values()))
    for _ in range(MAX_ROUNDS):
        new = {}
        for name, c in colour.items():
            ops, users = down(name, colour), up(name, colour)
            new[name] = _digest(c, _count(ops), *ops, _count(users), *users)
        colour = new
        now = len(set(colour.values()))
        if now == distinct:
            break
        distinct = now
    body = [HASH_VERSION, len(spec.state), sorted(colour[n.name].hex() for n in spec.nodes),
            [colour[o].hex() for o in spec.outputs]]
    return f"{HASH_VERSION}-{hashlib.sha256(json.dumps(body).encode()).hexdigest()[:20]}"
