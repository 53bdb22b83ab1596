"""The canonical hash of a cell: equal for isomorphic cells, stable across processes and versions.

Method: colour refinement (1-dimensional Weisfeiler-Lehman) on the typed DAG, written with hashlib.
A node's first colour is its op, its options and which state vectors it feeds; each round a node's
colour absorbs its operands' colours (sorted for commutative ops, in order otherwise) and its
consumers' colours (with the operand position when the consumer is not commutative). Inputs are
coloured by role (x, state vector i), never by name. The hash covers the multiset of final colours
and the colours of the outputs in state order.

Properties this gives, pinned by tests:
- node names, node order and the operand order of commutative ops do not change it;
- the operand order of `sub` / `blend` does;
- two `linear` nodes with the same operands are two nodes (distinct weights), so mul(a, b) with
  a, b alike differs from mul(a, a): the node multiset differs.
Colour refinement can in principle merge non-isomorphic, highly regular graphs; cells anchored to
x and the state vectors are far from that regime.

HASH_VERSION is part of every hash: change it whenever the hashed content changes, so that stored
results (dedup, MLflow) are never matched against hashes computed another way.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from nas.cell.ops import OPS

if TYPE_CHECKING:
    from nas.cell.spec import CellSpec

HASH_VERSION = "c1"


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, separators=(",", ":")).encode()).hexdigest()


def canonical_hash(spec: CellSpec) -> str:
    roles = {"x": "in:x", **{s: f"state:{i}" for i, s in enumerate(spec.state)}}
    feeds: dict[str, list[int]] = {}
    for i, out in enumerate(spec.outputs):
        feeds.setdefault(out, []).append(i)

    colour = {name: _digest([role, feeds.get(name, [])]) for name, role in roles.items()}
    for n in spec.nodes:
        colour[n.name] = _digest([n.op, list(n.options), feeds.get(n.name, [])])

    consumers: dict[str, list[tuple[str, str]]] = {name: [] for name in colour}
    for n in spec.nodes:
        commutative = OPS[n.op].commutative
        for pos, operand in enumerate(n.inputs):
            consumers[operand].append((n.name, "*" if commutative else str(pos)))

    by_name = {n.name: n for n in spec.nodes}
    distinct = len(set(colour.values()))
    for _ in range(len(colour)):
        new = {}
        for name, c in colour.items():
            node = by_name.get(name)
            operands = [colour[i] for i in node.inputs] if node else []
            if node is not None and OPS[node.op].commutative:
                operands.sort()
            users = sorted(colour[u] + pos for u, pos in consumers[name])
            new[name] = _digest([c, operands, users])
        colour = new
        now = len(set(colour.values()))
        if now == distinct:
            break
        distinct = now

    body = [HASH_VERSION, len(spec.state), sorted(colour[n.name] for n in spec.nodes),
            [colour[o] for o in spec.outputs]]
    return f"{HASH_VERSION}-{_digest(body)[:20]}"
