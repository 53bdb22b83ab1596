"""CellSpec: a recurrent cell as an immutable, validated DAG of elementwise ops.

A cell maps the input x_t and the previous state (s_1, ..., s_K) to the new state; s_1 is the
output h_t. Nodes read `x`, the previous state vectors (by their names) and other nodes; `outputs`
names, for each state vector, the node (or input) that gives its new value.

The spec knows nothing of torch: it is a value that the compiler, the exporter, the drawing and the
search read. Building one validates it completely (or raises `CellError` naming the node and the
rule), fills in op option defaults, orders the nodes topologically and prunes dead nodes, so two
specs that compare equal describe the same computation in the same spelling.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nas.cell.ops import OPS

FORMAT = "nas-cell/1"
INPUT = "x"
MAX_STATE = 8
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")


class CellError(ValueError):
    """A cell spec breaks a rule; the message names the node (or field) and the rule."""


@dataclass(frozen=True)
class Node:
    """One op applied to named operands. `options` is a sorted tuple of (key, value) pairs."""

    name: str
    op: str
    inputs: tuple[str, ...]
    options: tuple[tuple[str, Any], ...] = ()

    def option(self, key: str) -> Any:
        return dict(self.options)[key]


@dataclass(frozen=True)
class CellSpec:
    """An immutable, validated recurrent cell.

    state:   names of the state vectors; state[0] is the output h. LSTM: ("h", "c").
    nodes:   the live nodes in topological order.
    outputs: for each state vector, the name of the node (or input) holding its new value.
    name:    a label (not part of the cell's identity: `canonical_hash` ignores it).
    """

    state: tuple[str, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        state, outputs = tuple(self.state), tuple(self.outputs)
        _check_state(state, outputs)
        nodes = tuple(_check_node(n, state) for n in self.nodes)
        # Order (and so check operands and cycles of) every node, dead ones included, then prune:
        # a broken node is an error even where no output reads it.
        nodes = _prune(_toposort(nodes, state), outputs)
        object.__setattr__(self, "state", state)
        object.__setattr__(self, "outputs", outputs)
        object.__setattr__(self, "nodes", nodes)
        _check_recurrent(self)

    # -- views -------------------------------------------------------------------------------
    @property
    def inputs(self) -> tuple[str, ...]:
        """Names a node may read besides other nodes: x, then the previous state vectors."""
        return (INPUT,) + self.state

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise CellError(f"cell {self.name!r}: no node named {name!r}")

    def depends_on(self, name: str) -> frozenset[str]:
        """The inputs (x and state names) that `name`'s value depends on."""
        by_name = {n.name: n for n in self.nodes}
        seen: set[str] = set()
        stack = [name]
        while stack:
            cur = stack.pop()
            if cur in seen:
                continue
            seen.add(cur)
            if cur in by_name:
                stack.extend(by_name[cur].inputs)
        return frozenset(seen & set(self.inputs))

    def num_linear_terms(self) -> int:
        """Number of weight matrices (one per operand of each `linear` node)."""
        return sum(len(n.inputs) for n in self.nodes if OPS[n.op].has_weights)

    def canonical_hash(self) -> str:
        from nas.cell.hashing import canonical_hash

        return canonical_hash(self)

    # -- exchange formats --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        nodes = {}
        for n in self.nodes:
            entry: dict[str, Any] = {"op": n.op, "in": list(n.inputs)}
            defaults = OPS[n.op].options
            entry.update({k: v for k, v in n.options if defaults.get(k) != v})
            nodes[n.name] = entry
        return {"format": FORMAT, "name": self.name, "state": list(self.state), "nodes": nodes,
                "outputs": dict(zip(self.state, self.outputs))}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellSpec:
        if not isinstance(data, Mapping):
            raise CellError(f"cell: expected a JSON object, got {type(data).__name__}")
        fmt = data.get("format", FORMAT)
        if fmt != FORMAT:
            raise CellError(f"cell: unsupported format {fmt!r} (this version reads {FORMAT!r})")
        unknown = set(data) - {"format", "name", "state", "nodes", "outputs"}
        if unknown:
            raise CellError(f"cell: unknown field(s) {sorted(unknown)}")
        state = _str_list(data.get("state", ["h"]), "state")
        raw_nodes = data.get("nodes", {})
        if not isinstance(raw_nodes, Mapping):
            raise CellError("cell: 'nodes' must be an object mapping node names to nodes")
        outputs = data.get("outputs")
        if not isinstance(outputs, Mapping):
            raise CellError("cell: 'outputs' must be an object mapping each state name to a node")
        missing = [s for s in state if s not in outputs]
        if missing:
            raise CellError(f"state {missing[0]!r}: no entry in 'outputs' gives its new value")
        extra = [k for k in outputs if k not in state]
        if extra:
            raise CellError(f"outputs: {extra[0]!r} is not a state vector (state: {state})")
        nodes = [node_from_dict(name, entry) for name, entry in raw_nodes.items()]
        return cls(tuple(state), tuple(nodes), tuple(str(outputs[s]) for s in state),
                   str(data.get("name", "")))

    @classmethod
    def from_json(cls, text: str) -> CellSpec:
        try:
            data = json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
            raise CellError(f"cell: invalid JSON: {e}") from None
        return cls.from_dict(data)

    def to_networkx(self):
        from nas.cell.graph import to_networkx

        return to_networkx(self)

    @classmethod
    def from_networkx(cls, graph) -> CellSpec:
        from nas.cell.graph import from_networkx

        return from_networkx(graph)

    def __str__(self) -> str:
        body = "; ".join(f"{n.name}={n.op}({', '.join(n.inputs)})" for n in self.nodes)
        outs = ", ".join(f"{s}'={o}" for s, o in zip(self.state, self.outputs))
        return f"CellSpec({self.name or 'cell'}: {body} -> {outs})"


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads hook: a repeated key (e.g. two nodes of one name) is an error, not last-wins."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise CellError(f"cell: key {key!r} appears twice in one JSON object (a node defined twice?)")
        out[key] = value
    return out


def node_from_dict(name: str, entry: Any) -> Node:
    """A Node from its JSON entry {"op": ..., "in": [...], **options}."""
    if not isinstance(entry, Mapping):
        raise CellError(f"node {name!r}: expected an object with 'op' and 'in', got {entry!r}")
    if "op" not in entry:
        raise CellError(f"node {name!r}: missing 'op'")
    options = {k: v for k, v in entry.items() if k not in ("op", "in")}
    return Node(str(name), str(entry["op"]), tuple(_str_list(entry.get("in", []), f"node {name!r}: 'in'")),
                tuple(sorted(options.items())))


# -- validation ---------------------------------------------------------------------------------
def _str_list(value: Any, what: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise CellError(f"{what}: expected a list of names, got {value!r}")
    out = list(value)
    bad = [v for v in out if not isinstance(v, str)]
    if bad:
        raise CellError(f"{what}: expected names (strings), got {bad[0]!r}")
    return out


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not _IDENT.match(name):
        raise CellError(f"{what} {name!r}: names must be identifiers ([A-Za-z_][A-Za-z0-9_]*, "
                        "at most 64 characters)")


def _check_state(state: tuple[str, ...], outputs: tuple[str, ...]) -> None:
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


def _check_node(node: Node, state: tuple[str, ...]) -> Node:
    """Check one node on its own and return it with its options completed by the op defaults."""
    _check_name(node.name, "node")
    if node.name == INPUT or node.name in state:
        raise CellError(f"node {node.name!r}: the name is taken by an input (x or a state vector)")
    op = OPS.get(node.op)
    if op is None:
        raise CellError(f"node {node.name!r}: unknown op {node.op!r} (known: {', '.join(OPS)})")
    inputs = tuple(node.inputs)
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
            raise CellError(f"node {node.name!r}: op {op.name!r} has no option {key!r} (options: {allowed})")
        default = op.options[key]
        if isinstance(default, bool) and not isinstance(value, bool):
            raise CellError(f"node {node.name!r}: option {key!r} must be true or false, got {value!r}")
        if isinstance(default, float):
            # `not abs(v) <= max` rejects nan, ±inf (which the step code would render as the
            # undefined name `inf`) and ints too large for a float, in one comparison.
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not abs(value) <= sys.float_info.max):
                raise CellError(f"node {node.name!r}: option {key!r} must be a finite number, got {value!r}")
            # + 0.0 turns -0.0 into 0.0: the two compare equal (so to_dict drops -0.0 as the
            # default) but would serialise, and hash, differently.
            value = float(value) + 0.0
        options[key] = value
    return Node(node.name, node.op, inputs, tuple(sorted(options.items())))


def _prune(nodes: tuple[Node, ...], outputs: tuple[str, ...]) -> tuple[Node, ...]:
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


def _toposort(nodes: tuple[Node, ...], state: tuple[str, ...]) -> tuple[Node, ...]:
    """Stable topological order (the given order wherever it is valid); rejects cycles."""
    known = {INPUT, *state}
    by_name = {n.name: n for n in nodes}
    for n in nodes:
        for i in n.inputs:
            if i not in known and i not in by_name:
                raise CellError(f"node {n.name!r}: operand {i!r} is not a node, {INPUT!r} or a state "
                                f"vector ({', '.join(state)})")
    done: set[str] = set(known)
    order: list[Node] = []
    pending = list(nodes)
    while pending:
        # Take the *first* ready node, not every ready node at once: placing whole layers
        # reordered specs whose given order was already topological, against the contract above.
        ready = next((n for n in pending if all(i in done for i in n.inputs)), None)
        if ready is None:
            cycle = _cycle(pending)
            # Name a node on the cycle: pending[0] may only depend on it.
            raise CellError(f"node {cycle[0]!r}: lies on a cycle ({' <- '.join(cycle)})")
        done.add(ready.name)
        order.append(ready)
        pending.remove(ready)
    return tuple(order)


def _cycle(pending: list[Node]) -> list[str]:
    """A cycle among the nodes that could not be ordered, first node repeated at the end."""
    by_name = {n.name: n for n in pending}
    path, cur = [], pending[0].name
    while cur not in path:
        path.append(cur)
        cur = next(i for i in by_name[cur].inputs if i in by_name)
    return path[path.index(cur):] + [cur]


def _check_recurrent(spec: CellSpec) -> None:
    known = set(spec.inputs) | {n.name for n in spec.nodes}
    for s, out in zip(spec.state, spec.outputs):
        if out not in known:
            raise CellError(f"state {s!r}: output {out!r} is not a node or an input")
    h = spec.state[0]
    deps = spec.depends_on(spec.outputs[0])
    if INPUT not in deps:
        raise CellError(f"state {h!r}: the output ({spec.outputs[0]!r}) does not depend on the input "
                        f"{INPUT!r}, so the cell ignores its input")
    if not deps & set(spec.state):
        raise CellError(f"state {h!r}: the output ({spec.outputs[0]!r}) does not depend on the previous "
                        "state, so the cell is not recurrent")
