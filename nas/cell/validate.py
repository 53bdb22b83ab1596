"""Validation of a cell's parts, each rule on its own: names, state vectors, one node's op, operands
and options, topological order (with the cycle named) and pruning of dead nodes. `CellSpec` runs
these when it is built (spec.py); the rules read on the canonical form live there."""

from __future__ import annotations

import heapq

from nas.cell.ops import OPS
from nas.cell.parts import FLOAT32_MAX, IDENT, INPUT, MAX_OPERANDS, MAX_STATE, CellError, Node, show


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not IDENT.match(name):
        raise CellError(f"{what} {show(name)}: names must be identifiers ([A-Za-z_][A-Za-z0-9_]*, "
                        "at most 64 characters)")


def check_state(state: tuple[str, ...], outputs: tuple[str, ...]) -> None:
    if not 1 <= len(state) <= MAX_STATE:
        raise CellError(f"state: expected 1 to {MAX_STATE} state vectors, got {len(state)}")
    for s in state:
        _check_name(s, "state")
        if s == INPUT:
            raise CellError(f"state {s!r}: the name {INPUT!r} is reserved for the input")
    if len(set(state)) != len(state):
        raise CellError(f"state: names must be unique, got {list(state)}")
    if len(outputs) != len(state):
        raise CellError(f"outputs: expected one per state vector ({len(state)}), got {len(outputs)}")


def check_node(node: Node, state: tuple[str, ...]) -> Node:
    """Check one node on its own and return it with its options completed by the op defaults."""
    _check_name(node.name, "node")
    if node.name == INPUT or node.name in state:
        raise CellError(f"node {node.name!r}: the name is taken by an input (x or a state vector)")
    op = OPS.get(node.op)
    if op is None:
        raise CellError(f"node {node.name!r}: unknown op {node.op!r} (known: {', '.join(OPS)})")
    inputs = tuple(node.inputs)
    if len(inputs) > MAX_OPERANDS:
        raise CellError(f"node {node.name!r}: at most {MAX_OPERANDS} operands are allowed, got {len(inputs)}")
    if not op.accepts(len(inputs)):
        lo, hi = op.arity
        want = f"{lo}" if lo == hi else f"{lo} or more" if hi is None else f"{lo} to {hi}"
        raise CellError(f"node {node.name!r}: op {op.name!r} takes {want} operands, got {len(inputs)}")
    if op.has_weights and len(set(inputs)) != len(inputs):
        raise CellError(f"node {node.name!r}: op {op.name!r} reads the same operand twice "
                        "(W1 a + W2 a is one weight matrix: list each operand once)")
    options = dict(op.options)
    for key, value in dict(node.options).items():
        if key not in op.options:
            allowed = ", ".join(op.options) or "none"
            raise CellError(f"node {node.name!r}: op {op.name!r} has no option {show(key)} (options: {allowed})")
        default = op.options[key]
        if isinstance(default, bool) and not isinstance(value, bool):
            raise CellError(f"node {node.name!r}: option {key!r} must be true or false, got {show(value)}")
        if isinstance(default, float):
            # `not abs(v) <= max` rejects nan, ±inf (which the step code would render as the
            # undefined name `inf`) and numbers that overflow float32, the precision the cell
            # computes in (bias_init=1e308 became an inf bias), in one comparison.
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not abs(value) <= FLOAT32_MAX):
                raise CellError(f"node {node.name!r}: option {key!r} must be a finite number representable "
                                f"in float32 (|v| <= {FLOAT32_MAX:.7g}), got {show(value)}")
            # + 0.0 turns -0.0 into 0.0: the two compare equal (so to_dict drops -0.0 as the
            # default) but would serialise, and hash, differently.
            value = float(value) + 0.0
        options[key] = value
    return Node(node.name, node.op, inputs, tuple(sorted(options.items())))


def prune(nodes: tuple[Node, ...], outputs: tuple[str, ...]) -> tuple[Node, ...]:
    """Drop nodes that no output depends on (checking names as it goes)."""
    by_name: dict[str, Node] = {}
    for n in nodes:
        if n.name in by_name:
            raise CellError(f"node {n.name!r}: defined twice")
        by_name[n.name] = n
    live: set[str] = set()
    stack = [o for o in outputs]
    while stack:
        cur = stack.pop()
        if cur in live or cur not in by_name:
            continue
        live.add(cur)
        stack.extend(by_name[cur].inputs)
    return tuple(n for n in nodes if n.name in live)


def toposort(nodes: tuple[Node, ...], state: tuple[str, ...]) -> tuple[Node, ...]:
    """Stable topological order (the given order wherever it is valid); rejects cycles.

    Kahn's algorithm taking the first ready node in the given order each time (a heap of
    positions): O((nodes + operands) log nodes), where rescanning the pending list was quadratic.
    """
    known = {INPUT, *state}
    by_name = {n.name: n for n in nodes}
    for n in nodes:
        for i in n.inputs:
            if i not in known and i not in by_name:
                raise CellError(f"node {n.name!r}: operand {show(i)} is not a node, {INPUT!r} or a state "
                                f"vector ({', '.join(state)})")
    waiting = [len({i for i in n.inputs if i not in known}) for n in nodes]
    users: dict[str, list[int]] = {}
    for k, n in enumerate(nodes):
        for i in set(n.inputs) - known:
            users.setdefault(i, []).append(k)
    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[Node] = []
    while ready:
        k = heapq.heappop(ready)
        order.append(nodes[k])
        for u in users.get(nodes[k].name, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) < len(nodes):
        placed = {n.name for n in order}
        cycle = _cycle([n for n in nodes if n.name not in placed])
        # Name a node on the cycle: the first pending node may only depend on it.
        raise CellError(f"node {cycle[0]!r}: lies on a cycle ({' <- '.join(cycle)})")
    return tuple(order)


def _cycle(pending: list[Node]) -> list[str]:
    """A cycle among the nodes that could not be ordered, first node repeated at the end."""
    by_name = {n.name: n for n in pending}
    path, cur = [], pending[0].name
    while cur not in path:
        path.append(cur)
        cur = next(i for i in by_name[cur].inputs if i in by_name)
    return path[path.index(cur):] + [cur]
