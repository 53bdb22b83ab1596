"""NAS-Bench-NLP recipes in and out: `from_recipe(recipe) -> Parts` (which `CellSpec.from_nasbench_nlp`
builds) and `to_recipe(spec) -> dict`.

NAS-Bench-NLP (N. Klyuchnikov, I. Trofimov, E. Artemova, M. Salnikov, M. Fedorov, A. Filippov,
E. Burnaev: "NAS-Bench-NLP: Neural Architecture Search Benchmark for Natural Language Processing",
arXiv:2006.07116, 2020; IEEE Access 10, 2022; repository fmsnew/nas-bench-nlp-release) trained about
14k recurrent cells, each written as a JSON "recipe": an object mapping node names to
{"op": op, "input": [operand, ...]}. Operands are `x`, the previous state vectors `h_prev_0`,
`h_prev_1`, ... and other nodes; the node named `h_new_k` holds the new value of state vector k,
and h_new_0 is the cell's output h. Their cell builder (custom_rnn.py) gives the ops these meanings,
each the same function as one of ours:

    linear                  W_1 a_1 + ... + W_n a_n + b  (one matrix per operand, one bias)  linear
    blend                   z * a + (1 - z) * b for operands (z, a, b)                        blend
    elementwise_sum / _prod a + b / a * b                                                     add / mul
    activation_tanh / _sigm / _leaky_relu  (torch's default slope 0.01)        tanh / sigmoid / leaky_relu

Here state vector k is named `h_prev_k` and the node for its new value keeps its name `h_new_k`, so
a recipe read and written back is the same recipe, and a cell written out and read back has the same
canonical hash. A recipe describes an architecture only: their training protocol (word-level PTB,
every parameter initialised uniformly in +-1/sqrt(hidden size)) is not part of it.

What their format has that ours does not (refused, with a CellError naming the node):
- elementwise_sum / _prod over more than two operands (the format allows it, their builder fails
  on it and their generator never makes it);
- node names that are not identifiers, and a `linear` that reads one operand twice;
- dead nodes: their builder computes them, a CellSpec prunes them, so they do not come back out.
What ours has that theirs does not (`to_recipe` refuses it, naming the node or state):
- the ops sub, relu, mean and identity; `linear` without a bias; leaky_relu with another slope;
- a new state that is an input (c' = c) or the same node as another state's;
- state and cell names (theirs are numbered; the name is lost, the states become h_prev_k);
- `bias_init`, an initialisation rather than an architecture: written as an extra key "bias_init"
  of the node, which their builder ignores and `from_recipe` reads, so the LSTM's forget bias survives.
Their log files ({"recepie": "<recipe as JSON text>", ...}) are read as the recipe they hold.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from nas.cell.parts import (
    INPUT,
    MAX_FILE_BYTES,
    MAX_NODES,
    MAX_STATE,
    Cell,
    CellError,
    Node,
    Parts,
    check_depth,
    show,
    str_list,
)

OPS_IN = {"linear": "linear", "blend": "blend", "elementwise_sum": "add", "elementwise_prod": "mul",
          "activation_tanh": "tanh", "activation_sigm": "sigmoid", "activation_leaky_relu": "leaky_relu"}
OPS_OUT = {ours: theirs for theirs, ours in OPS_IN.items()}
# Operand counts their builder accepts (elementwise ops: two, see the module docstring).
_ARITY = {"linear": (1, None), "blend": (3, 3), "elementwise_sum": (2, 2), "elementwise_prod": (2, 2),
          "activation_tanh": (1, 1), "activation_sigm": (1, 1), "activation_leaky_relu": (1, 1)}
_KEYS = {"op", "input", "bias_init"}
_NEW = re.compile(r"h_new_(\d+)\Z")
_PREV = re.compile(r"h_prev_(\d+)\Z")
_SLOPE = 0.01  # torch.nn.LeakyReLU's default, which their builder uses


def is_recipe(data: Any) -> bool:
    """Whether parsed JSON has a recipe's shape: a recipe (node entries with "op" and "input"), a
    log file of theirs (with "recepie"), or a list of recipes (their recepies_example.json). A cell
    JSON (which has "outputs") is never taken for one."""
    if isinstance(data, list):
        return bool(data) and all(is_recipe(d) for d in data)
    if not isinstance(data, Mapping) or "format" in data or "outputs" in data:
        return False
    return "recepie" in data or any(isinstance(v, Mapping) and {"op", "input"} <= set(v) for v in data.values())


def from_recipe(recipe: Any, name: str = "") -> Parts:
    """The parts of the cell of a NAS-Bench-NLP recipe (a mapping, its JSON text, one of their log
    files or a one-recipe list), named `name`, for `CellSpec` to validate. CellError for a recipe
    their builder cannot hold (what our cells cannot hold, CellSpec refuses)."""
    recipe = _unwrap(recipe)
    if len(recipe) > MAX_NODES:
        raise CellError(f"recipe: at most {MAX_NODES} nodes are allowed, got {len(recipe)}")
    new = {}
    for key in recipe:
        match = _NEW.match(key) if isinstance(key, str) else None
        if match:
            if str(int(match[1])) != match[1]:
                raise CellError(f"recipe: node {key!r}: write state indices without leading zeros")
            new[int(match[1])] = key
    count = max(new, default=-1) + 1
    if not count or sorted(new) != list(range(count)) or count > MAX_STATE:
        raise CellError(f"recipe: expected nodes h_new_0 .. h_new_K-1 (the new state vectors, "
                        f"K <= {MAX_STATE}), got {sorted(new.values(), key=str) or 'none'}")
    nodes = [_node_in(key, entry, count) for key, entry in recipe.items()]
    return Parts(tuple(f"h_prev_{k}" for k in range(count)), tuple(nodes),
                 tuple(f"h_new_{k}" for k in range(count)), name)


def to_recipe(spec: Cell) -> dict[str, dict[str, Any]]:
    """The NAS-Bench-NLP recipe of `spec` (nodes in topological order). CellError naming the node or
    state where the cell uses something a recipe cannot say (module docstring)."""
    try:
        return _recipe(spec)
    except CellError as e:
        hint = ""
        canonical = spec.canonical()
        if canonical is not spec:
            try:
                _recipe(canonical)
                hint = " (its canonical form, spec.canonical(), computes the same and converts)"
            except CellError:
                pass
        raise CellError(f"{e}{hint}") from None


def _unwrap(recipe: Any) -> Mapping[str, Any]:
    if isinstance(recipe, list):
        if len(recipe) != 1:
            raise CellError(f"recipe: expected one recipe, got a list of {len(recipe)} (save the one you "
                            "want on its own)")
        recipe = recipe[0]
    if isinstance(recipe, Mapping) and "recepie" in recipe:  # one of their log files
        recipe = recipe["recepie"]
    if isinstance(recipe, str):
        if len(recipe) > MAX_FILE_BYTES:
            raise CellError(f"recipe: at most {MAX_FILE_BYTES} characters of JSON are allowed, "
                            f"got {len(recipe)}")
        check_depth(recipe)
        try:
            recipe = json.loads(recipe)
        except ValueError as e:
            raise CellError(f"recipe: invalid JSON: {show(str(e))}") from None
    if not isinstance(recipe, Mapping) or not recipe:
        raise CellError("recipe: expected an object mapping node names to {'op', 'input'}, "
                        f"got {show(recipe)}")
    return recipe


def _node_in(key: Any, entry: Any, count: int) -> Node:
    where = f"recipe: node {show(key)}"
    if not isinstance(entry, Mapping) or "op" not in entry or "input" not in entry:
        raise CellError(f"{where}: expected an object with 'op' and 'input', got {show(entry)}")
    unknown = sorted(set(entry) - _KEYS, key=str)
    if unknown:
        raise CellError(f"{where}: unknown key(s) {show(unknown)} (a recipe node has 'op' and 'input')")
    op = entry["op"]
    if not isinstance(op, str) or op not in OPS_IN:
        raise CellError(f"{where}: op {show(op)} is not a NAS-Bench-NLP op (known: {', '.join(OPS_IN)})")
    if isinstance(key, str) and (key == INPUT or _PREV.match(key)):
        raise CellError(f"{where}: the name is taken by an input (x or h_prev_k)")
    inputs = str_list(entry["input"], f"{where}: 'input'")
    lo, hi = _ARITY[op]
    if len(inputs) < lo or (hi is not None and len(inputs) > hi):
        want = f"{lo}" if lo == hi else f"{lo} or more"
        raise CellError(f"{where}: {op} takes {want} operands, got {len(inputs)}")
    for operand in inputs:
        match = _PREV.match(operand)
        if match and int(match[1]) >= count:
            raise CellError(f"{where}: reads {operand!r}, but the recipe has {count} state vector(s) "
                            f"(h_new_0 .. h_new_{count - 1})")
    options: tuple[tuple[str, Any], ...] = ()
    if "bias_init" in entry:
        if op != "linear":
            raise CellError(f"{where}: 'bias_init' belongs to a linear node, not to {op}")
        options = (("bias_init", entry["bias_init"]),)
    return Node(key if isinstance(key, str) else show(key), OPS_IN[op], tuple(inputs), options)


def _recipe(spec: Cell) -> dict[str, dict[str, Any]]:
    rename = {INPUT: INPUT} | {s: f"h_prev_{k}" for k, s in enumerate(spec.state)}
    owner: dict[str, str] = {}
    for k, (s, out) in enumerate(zip(spec.state, spec.outputs)):
        if out in spec.inputs:
            raise CellError(f"state {s!r}: its new value is the input {out!r} itself, but a recipe computes "
                            f"each new state in a node of its own (h_new_{k})")
        if out in owner:
            raise CellError(f"state {s!r}: its new value is node {out!r}, as for state {owner[out]!r}, but a "
                            "recipe computes each new state in a node of its own")
        owner[out], rename[out] = s, f"h_new_{k}"
    taken = {n.name for n in spec.nodes} | set(rename.values())
    for n in spec.nodes:
        if n.name not in rename:
            name = n.name
            while _NEW.match(name) or _PREV.match(name) or (name != n.name and name in taken):
                name = f"{name}_"  # a name of theirs that means something else here
            rename[n.name] = name
            taken.add(name)
    return {rename[n.name]: _node_out(n, rename) for n in spec.nodes}


def _node_out(n: Node, rename: dict[str, str]) -> dict[str, Any]:
    if n.op not in OPS_OUT:
        raise CellError(f"node {n.name!r}: op {n.op!r} has no NAS-Bench-NLP counterpart "
                        f"(theirs: {', '.join(OPS_OUT)})")
    options = dict(n.options)
    if n.op == "linear" and not options["bias"]:
        raise CellError(f"node {n.name!r}: a linear without bias has no NAS-Bench-NLP counterpart "
                        "(their linear always adds one)")
    if n.op == "leaky_relu" and options["negative_slope"] != _SLOPE:
        raise CellError(f"node {n.name!r}: leaky_relu with slope {options['negative_slope']} has no "
                        f"NAS-Bench-NLP counterpart (theirs has slope {_SLOPE})")
    entry: dict[str, Any] = {"op": OPS_OUT[n.op], "input": [rename[i] for i in n.inputs]}
    if n.op == "linear" and options["bias_init"] != 0.0:
        entry["bias_init"] = options["bias_init"]
    return entry
