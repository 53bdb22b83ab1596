"""CellSpec: a recurrent cell as an immutable, validated DAG of elementwise ops.

A cell maps the input x_t and the previous state (s_1, ..., s_K) to the new state; s_1 is the
output h_t. Nodes read `x`, the previous state vectors (by their names) and other nodes; `outputs`
names, for each state vector, the node (or input) that gives its new value.

The spec knows nothing of torch: it is a value that the compiler, the exporter, the drawing and the
search read. Building one validates it completely (or raises `CellError` naming the node and the
rule), fills in op option defaults, orders the nodes topologically and prunes dead nodes, so two
specs that compare equal describe the same computation in the same spelling. The rules for names,
ops, operands and order are nas.cell.validate's; the networkx and NAS-Bench-NLP formats (graph.py,
nasbench_nlp.py) and the canonical form (hashing.py) work on a cell's parts (nas.cell.parts), and
this module composes them into the value and its JSON format.

Validity is judged on the canonical form (`canonical()`, nas.cell.hashing): from the zero initial
state, h' must depend on x and on the previous state, and at least one weight matrix (a `linear`
operand, the only trainable weights) must remain, after state vectors that stay zero are folded
away. So h' = tanh(W x + U c) with c' = relu(c) is refused: c stays zero and h' ignores the state.

Limits, checked before any other work so that any input is accepted or refused quickly (within
about 1 s at the limits: file to hash, 0.25 s measured for 1,000 nodes of 64 operands each, 0.7 s
on a loaded machine, 0.03 s for a 1,000-node chain); a larger input is a CellError naming the limit:
    MAX_FILE_BYTES = 1 MiB    size of a cell file / JSON text
    MAX_JSON_DEPTH = 16       nesting of JSON arrays and objects (a cell needs 3)
    MAX_NODES = 1000          nodes listed in a cell (dead ones included)
    MAX_OPERANDS = 64         operands of one node
    MAX_STATE = 8             state vectors
Option values must be finite and representable in float32 (|v| <= 3.4028234663852886e38): the
compiled cell computes in float32, so 1e308 would become an infinite bias.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.cell import graph, hashing, nasbench_nlp
from nas.cell.hashing import Simplified, simplify
from nas.cell.ops import OPS
from nas.cell.parts import (
    FLOAT32_MAX,
    INPUT,
    MAX_FILE_BYTES,
    MAX_JSON_DEPTH,
    MAX_NODES,
    MAX_OPERANDS,
    MAX_STATE,
    CellError,
    Node,
    Parts,
    check_depth,
    show,
    str_list,
)
from nas.cell.validate import check_node, check_state, prune, toposort

# Re-exported: callers import the cell's names and limits from here.
__all__ = ["FLOAT32_MAX", "FORMAT", "INPUT", "MAX_FILE_BYTES", "MAX_JSON_DEPTH", "MAX_NODES", "MAX_OPERANDS",
           "MAX_STATE", "CellError", "CellSpec", "Node", "node_from_dict"]

FORMAT = "nas-cell/1"


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
        state, outputs, nodes = tuple(self.state), tuple(self.outputs), tuple(self.nodes)
        if len(nodes) > MAX_NODES:
            raise CellError(f"cell: at most {MAX_NODES} nodes are allowed, got {len(nodes)}")
        check_state(state, outputs)
        nodes = tuple(check_node(n, state) for n in nodes)
        # Order (and so check operands and cycles of) every node, dead ones included, then prune:
        # a broken node is an error even where no output reads it.
        nodes = prune(toposort(nodes, state), outputs)
        object.__setattr__(self, "state", state)
        object.__setattr__(self, "outputs", outputs)
        object.__setattr__(self, "nodes", nodes)
        # Not a field: derived from the fields, kept for canonical() and canonical_hash().
        object.__setattr__(self, "_simplified", _check_recurrent(self))

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

    def canonical(self) -> CellSpec:
        """The canonical form: the same h sequence from a zero initial state, in one spelling
        (state vectors that stay zero or never reach h dropped, identities and equal nodes merged,
        zeros folded: see nas.cell.hashing). A valid cell; its own canonical form."""
        simple: Simplified = self.__dict__.get("_simplified") or _check_recurrent(self)  # (unpickled from c1)
        if (simple.state, simple.nodes, simple.outputs) == (self.state, self.nodes, self.outputs):
            return self  # already canonical (most cells): no second validation
        return CellSpec(simple.state, simple.nodes, simple.outputs, self.name)

    def canonical_hash(self) -> str:
        """The hash of the canonical form: equal for cells that compute the same function in
        different spellings, node names or node orders (nas.cell.hashing)."""
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hashing.canonical_hash(self)
            object.__setattr__(self, "_hash", cached)
        return cached

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
            raise CellError(f"cell: unsupported format {show(fmt)} (this version reads {FORMAT!r})")
        unknown = set(data) - {"format", "name", "state", "nodes", "outputs"}
        if unknown:
            raise CellError(f"cell: unknown field(s) {show(sorted(unknown, key=str))}")
        raw_nodes = data.get("nodes", {})
        if not isinstance(raw_nodes, Mapping):
            raise CellError("cell: 'nodes' must be an object mapping node names to nodes")
        if len(raw_nodes) > MAX_NODES:
            raise CellError(f"cell: at most {MAX_NODES} nodes are allowed, got {len(raw_nodes)}")
        state = str_list(data.get("state", ["h"]), "state")
        outputs = data.get("outputs")
        if not isinstance(outputs, Mapping):
            raise CellError("cell: 'outputs' must be an object mapping each state name to a node")
        missing = [s for s in state if s not in outputs]
        if missing:
            raise CellError(f"state {show(missing[0])}: no entry in 'outputs' gives its new value")
        extra = [k for k in outputs if k not in state]
        if extra:
            raise CellError(f"outputs: {show(extra[0])} is not a state vector (state: {show(state)})")
        nodes = [node_from_dict(name, entry) for name, entry in raw_nodes.items()]
        # show, not str: a non-name output is reported as "not a node", never recursed into.
        return cls(tuple(state), tuple(nodes), tuple(o if isinstance(o, str) else show(o)
                                                     for o in (outputs[s] for s in state)),
                   _label(data.get("name", "")))

    @classmethod
    def from_json(cls, text: str, name: str = "") -> CellSpec:
        """The cell of a JSON text (CellError for any bad text, checked against the size and
        nesting limits before it is parsed). A NAS-Bench-NLP recipe is recognised by its shape
        and read by `from_nasbench_nlp`, named `name` (a recipe has no name of its own)."""
        if len(text) > MAX_FILE_BYTES:
            raise CellError(f"cell: at most {MAX_FILE_BYTES} characters of JSON are allowed, got {len(text)}")
        check_depth(text)
        try:
            data = json.loads(text, object_pairs_hook=_unique_keys)
        except RecursionError:  # a backstop: _check_depth refuses such nesting first
            raise CellError(f"cell: JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
        except ValueError as e:  # JSONDecodeError, and e.g. an integer of over 4300 digits
            if isinstance(e, CellError):
                raise
            raise CellError(f"cell: invalid JSON: {show(str(e))}") from None
        return cls.from_nasbench_nlp(data, name) if nasbench_nlp.is_recipe(data) else cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | Path) -> CellSpec:
        """The cell in a JSON file: a cell JSON or a NAS-Bench-NLP recipe (named after the file).
        Every failure (missing or unreadable file, over MAX_FILE_BYTES, not UTF-8, bad JSON, bad
        cell) is a CellError whose message starts with the file's path. Reads at most
        MAX_FILE_BYTES + 1 bytes, whatever the file's size."""
        where = f"cell file {str(path)!r}"
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            raise CellError(f"{where}: cannot read it ({e.strerror or e})") from None
        if len(raw) > MAX_FILE_BYTES:
            raise CellError(f"{where}: larger than the limit of {MAX_FILE_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CellError(f"{where}: not UTF-8 text (byte {e.start}: {e.reason})") from None
        try:
            return cls.from_json(text, name=Path(path).stem)
        except CellError as e:
            raise CellError(f"{where}: {str(e).removeprefix('cell: ')}") from None

    def to_networkx(self):
        """The cell as a networkx MultiDiGraph whose structure is the cell (nas.cell.graph)."""
        return graph.to_networkx(self)

    @classmethod
    def from_networkx(cls, g) -> CellSpec:
        """The cell a networkx graph describes (nas.cell.graph; relabelled or copied graphs too)."""
        return cls._of(graph.from_networkx(g))

    def to_nasbench_nlp(self) -> dict[str, Any]:
        """The NAS-Bench-NLP recipe of this cell (nas.cell.nasbench_nlp; CellError for what a recipe
        cannot say, e.g. a relu)."""
        return nasbench_nlp.to_recipe(self)

    @classmethod
    def from_nasbench_nlp(cls, recipe: Any, name: str = "") -> CellSpec:
        """The cell of a NAS-Bench-NLP recipe: a mapping, its JSON text, or one of their log files
        (nas.cell.nasbench_nlp). State k is named h_prev_k; h_prev_0 is h."""
        return cls._of(nasbench_nlp.from_recipe(recipe, name))

    @classmethod
    def _of(cls, parts: Parts) -> CellSpec:
        return cls(parts.state, parts.nodes, parts.outputs, parts.name)

    def __str__(self) -> str:
        body = "; ".join(f"{n.name}={n.op}({', '.join(n.inputs)})" for n in self.nodes)
        outs = ", ".join(f"{s}'={o}" for s, o in zip(self.state, self.outputs))
        return f"CellSpec({self.name or 'cell'}: {body} -> {outs})"


def _label(name: Any) -> str:
    """The cell's name as text; a non-string (from a hand-written file) is shown, not recursed into."""
    return name if isinstance(name, str) else show(name)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads hook: a repeated key (e.g. two nodes of one name) is an error, not last-wins."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise CellError(f"cell: key {show(key)} appears twice in one JSON object (a node defined twice?)")
        out[key] = value
    return out


def node_from_dict(name: str, entry: Any) -> Node:
    """A Node from its JSON entry {"op": ..., "in": [...], **options}."""
    if not isinstance(entry, Mapping):
        raise CellError(f"node {show(name)}: expected an object with 'op' and 'in', got {show(entry)}")
    if "op" not in entry:
        raise CellError(f"node {show(name)}: missing 'op'")
    if not isinstance(entry["op"], str):
        raise CellError(f"node {show(name)}: 'op' must be an op name, got {show(entry['op'])}")
    options = {k: v for k, v in entry.items() if k not in ("op", "in")}
    return Node(str(name), entry["op"], tuple(str_list(entry.get("in", []), f"node {show(name)}: 'in'")),
                tuple(sorted(options.items(), key=lambda kv: str(kv[0]))))



def _check_recurrent(spec: CellSpec) -> Simplified:
    """Check the outputs, then the rules read on the canonical form (module docstring)."""
    known = set(spec.inputs) | {n.name for n in spec.nodes}
    for s, out in zip(spec.state, spec.outputs):
        if out not in known:
            raise CellError(f"state {s!r}: output {show(out)} is not a node or an input")
    simple = simplify(spec.state, spec.nodes, spec.outputs)
    h, out = spec.state[0], spec.outputs[0]

    def why(folded: bool) -> str:  # say so when folding is what broke the rule: the spelling looks fine
        if not folded:
            return ""
        zeros = [s for s in spec.state if s in simple.zero_states]
        return " once terms that are always zero are folded away" + (
            f" (state vectors that stay zero from the zero initial state: {', '.join(zeros)})" if zeros else "")

    folded_deps = spec.depends_on(out) != simple.h_deps
    if INPUT not in simple.h_deps:
        raise CellError(f"state {h!r}: the output ({out!r}) does not depend on the input {INPUT!r}"
                        f"{why(folded_deps)}, so the cell ignores its input")
    if not simple.h_deps & set(spec.state):
        raise CellError(f"state {h!r}: the output ({out!r}) does not depend on the previous state"
                        f"{why(folded_deps)}, so the cell is not recurrent")
    if simple.weight_terms == 0:
        raise CellError(f"state {h!r}: no trainable weight on the path to the output ({out!r})"
                        f"{why(spec.num_linear_terms() > 0)}: only 'linear' nodes have weights, and "
                        "without one the cell is a fixed function")
    return simple
