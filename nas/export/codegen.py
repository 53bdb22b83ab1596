"""The generated module's source: `generate_module(spec, name)` writes `<Name>Cell` and `<Name>RNN` in
plain torch, one line per node, from the op registry's templates. Every value that reaches the code
is checked here first (`check_spec`; nas/export/cell.py's docstring says what is safe and why)."""

from __future__ import annotations

import builtins
import keyword
import math
import re
import sys
import textwrap

from nas.cell.ops import OPERANDS, OPS, Op, render
from nas.cell.spec import INPUT, CellSpec, Node
from nas.compile.plan import Plan, lower
from nas.export.lm import LM_FILES
from nas.export.templates import MODULE

_SAFE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# Names the generated step code uses itself, or that ruff flags as ambiguous (E741).
_TAKEN = {"self", "torch", "nn", "F", "Tensor", "State", "math", "H", "state", "x", "l", "O", "I"}
_RESERVED = _TAKEN | set(keyword.kwlist) | set(keyword.softkwlist) | set(dir(builtins))


class ExportError(ValueError):
    """The cell, the weights or the output folder cannot be exported; the message says why."""


# -- checks: everything that reaches the code ---------------------------------------------------
def safe(value: object, what: str) -> str:
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value):
        raise ExportError(f"export: {what} {value!r} is not an identifier ([A-Za-z_][A-Za-z0-9_]*, <= 64)")
    return value


def module_name(spec: CellSpec, name: str | None) -> str:
    """The module's name: `name`, else one made from the spec's name; ExportError if it cannot be."""
    taken = {"torch", *(f.removesuffix(".py") for f in LM_FILES if f.endswith(".py"))}  # charlm, sample, ...
    if name is None:
        name = re.sub(r"[^A-Za-z0-9_]", "_", getattr(spec, "name", "") or "").lstrip("0123456789")
        name = name[:59] or "cell"
        name = f"{name}_cell" if name in sys.stdlib_module_names or name in taken else name
    if keyword.iskeyword(safe(name, "module name")) or name in sys.stdlib_module_names or name in taken:
        raise ExportError(f"export: module name {name!r} is a keyword, shadows a module torch needs or "
                          "is the name of a file of the export")
    return name


def _options(node: Node, op: Op) -> dict[str, float | bool]:
    """The node's options as plain floats and bools: the only option values that reach the code."""
    try:
        given = dict(node.options)
    except (TypeError, ValueError):
        raise ExportError(f"export: node {node.name!r}: options must be (key, value) pairs") from None
    out: dict[str, float | bool] = {}
    for key, default in op.options.items():
        value = given.pop(key, default)
        if isinstance(default, bool) and isinstance(value, bool):
            out[key] = value
        elif not isinstance(default, bool) and type(value) in (int, float) and math.isfinite(value):
            out[key] = float(value)
        else:
            raise ExportError(f"export: node {node.name!r}: option {key!r} has a bad value {value!r}")
    if given:
        raise ExportError(f"export: node {node.name!r}: op {op.name!r} has no option {next(iter(given))!r}")
    return out


def check_spec(spec: CellSpec) -> None:
    """Re-check what reaches the generated code (CellSpec checks it too: this is defence in depth)."""
    if not isinstance(spec, CellSpec):
        raise ExportError(f"export: expected a CellSpec, got {type(spec).__name__}")
    known = {INPUT}
    for s in spec.state:
        if safe(s, "state") in known:
            raise ExportError(f"export: state {s!r} is defined twice or named {INPUT!r}")
        known.add(s)
    for node in spec.nodes:
        if not isinstance(node, Node) or safe(node.name, "node") in known:
            raise ExportError(f"export: node {getattr(node, 'name', node)!r} is not a new Node")
        op = OPS.get(node.op) if isinstance(node.op, str) else None
        if op is None or not op.accepts(len(node.inputs)):
            raise ExportError(f"export: node {node.name!r}: unknown op or wrong arity {node.op!r}")
        for i in node.inputs:
            if safe(i, f"node {node.name!r}: operand") not in known:
                raise ExportError(f"export: node {node.name!r} reads {i!r} before it is defined")
        _options(node, op)
        known.add(node.name)
    if len(spec.outputs) != len(spec.state) or not all(safe(o, "output") in known for o in spec.outputs):
        raise ExportError(f"export: outputs {spec.outputs!r} must name one defined value per state vector")
    if not re.fullmatch(r"[\w-]+", spec.canonical_hash()):
        raise ExportError("export: unexpected canonical hash")


# -- names and equations ------------------------------------------------------------------------
def _variables(spec: CellSpec, plan: Plan) -> tuple[dict[str, str], dict[str, str]]:
    """The step's variable for each input, state and node, and for each source's product: the
    spec's names where free, else with a trailing _ until they clash with nothing."""
    taken = set(_RESERVED)

    def fresh(base: str) -> str:
        name = "v" + base if base.startswith("__") else base  # no class-private name mangling
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    var = {INPUT: INPUT} | {raw: fresh(raw) for raw in spec.state + tuple(n.name for n in spec.nodes)}
    return var, {g.source: fresh(f"{var[g.source]}_w") for g in plan.groups}


def _infix(op: Op) -> bool:
    return op.arity == (2, 2) and len(op.symbol) == 1


def _math(node: Node) -> str:
    op, options = OPS[node.op], _options(node, OPS[node.op])
    if op.has_weights:
        bias = [f"b[{node.name}]"] if options["bias"] else []
        return " + ".join([f"W_{s}[{node.name}]·{s}" for s in node.inputs] + bias)
    if op.expr == "{a}" or _infix(op):
        return f" {op.symbol} ".join(node.inputs)
    return f"{op.symbol}({', '.join([*node.inputs, *(f'{k}={v!r}' for k, v in options.items())])})"


def equations(spec: CellSpec) -> list[str]:
    """One equation per node, the new state, and what the op symbols mean (from the registry; ops with
    options show them by name in their equation)."""
    left = [n.name for n in spec.nodes] + [f"{s}'" for s in spec.state]
    right = [_math(n) for n in spec.nodes] + list(spec.outputs)
    lines = [f"{a:<{max(map(len, left))}} = {b}" for a, b in zip(left, right)]
    legend = []
    for op in (OPS[name] for name in dict.fromkeys(n.op for n in spec.nodes)):
        if not (op.has_weights or op.options or op.expr == "{a}" or _infix(op)):
            operands = list(OPERANDS[:op.arity[1] or 2])
            call, text = f"{op.symbol}({', '.join(operands)})", render(op.expr, operands, {})
            legend += [f"{call} = {text.replace('torch.', '')}"] if text != f"torch.{call}" else []
    if not legend:  # only linear and infix ops: nothing to explain
        return lines
    return lines + textwrap.wrap(f"where {', '.join(legend)}", 100, subsequent_indent="      ")


# -- the module ---------------------------------------------------------------------------------
def _rows(k: int) -> str:
    """The slice of row block k, in units of H."""
    return ":".join("" if i == 0 else "H" if i == 1 else f"{i} * H" for i in (k, k + 1))


def _step_body(spec: CellSpec, plan: Plan, var: dict[str, str], prod: dict[str, str]) -> list[str]:
    """Unpack the state, one line per node (and one per product several nodes share), return."""
    biased = [n.name for n in spec.nodes if OPS[n.op].has_weights and n.option("bias")]
    read = {i for n in spec.nodes for i in n.inputs} | set(spec.outputs)
    names = [var[s] if s in read else "_" for s in spec.state]
    lines = [f"{names[0]} = state[0]" if len(names) == 1 else f"{', '.join(names)} = state"]

    def product(source: str) -> None:
        group = plan.group(source)
        if group and source != INPUT and len(group.bias_rows) > 1:
            rows = ", ".join(m for m, _ in group.bias_rows)
            lines.append(f"{prod[source]} = F.linear({var[source]}, self.weight_{source})  # {rows}")

    for s in spec.state:
        product(s)
    for node in spec.nodes:
        op = OPS[node.op]
        if op.has_weights:
            terms = []
            for src in node.inputs:
                rows = [m for m, _ in plan.group(src).bias_rows]
                if len(rows) > 1:
                    terms.append(f"{prod[src]}[:, {_rows(rows.index(node.name))}]")
                else:
                    terms.append(prod[src] if src == INPUT else f"F.linear({var[src]}, self.weight_{src})")
            if node.name in biased:
                k = biased.index(node.name)
                terms.append("self.bias" if len(biased) == 1 else f"self.bias[{_rows(k)}]")
            lines += _sum(var[node.name], terms)
        else:
            expr = render(op.expr, [var[a] for a in node.inputs], _options(node, op))
            lines.append(f"{var[node.name]} = {expr}")
        product(node.name)
    lines.append(f"return ({', '.join(var[o] for o in spec.outputs)}{',' * (len(spec.state) == 1)})")
    if any(re.search(r"\bH\b", line.split("#")[0]) for line in lines):
        lines.insert(0, "H = self.hidden_size")
    return lines


def _sum(target: str, terms: list[str], width: int = 100) -> list[str]:
    """`target = t1 + t2 + ...`, wrapped in parentheses if it is long."""
    lines = [f"{target} = ({terms[0]}"]
    for term in terms[1:]:
        if len(lines[-1]) + len(term) + 3 > width:
            lines.append(" " * (len(target) + 4) + "+ " + term)
        else:
            lines[-1] += " + " + term
    return [f"{target} = {' + '.join(terms)}"] if len(lines) == 1 else lines[:-1] + [lines[-1] + ")"]


def class_names(name: str) -> tuple[str, str]:
    camel = "".join(p[:1].upper() + p[1:] for p in name.split("_"))
    base = camel.removesuffix("Cell")
    return f"{base}Cell", f"{base}RNN"


def _parameters(spec: CellSpec, plan: Plan) -> tuple[list[str], list[str], list[str]]:
    """(docstring lines, __init__ lines, reset_parameters lines) of the cell's parameters, in the
    order and layout of CompiledCell, so that the same seed gives the same initial weights."""
    doc, init, reset = [], [], []
    for g in plan.groups:
        rows = f"{len(g.bias_rows)} * hidden_size" if len(g.bias_rows) > 1 else "hidden_size"
        cols = "input_size" if g.source == INPUT else "hidden_size"
        doc.append(f"weight_{g.source}: ({rows}, {cols}), blocks of {', '.join(m for m, _ in g.bias_rows)}")
        init.append(f"self.weight_{g.source} = nn.Parameter(torch.empty({rows}, {cols}))")
        reset.append(f"self.weight_{g.source}.uniform_(-bound, bound)")
    biased = [n for n in spec.nodes if OPS[n.op].has_weights and n.option("bias")]
    if biased:
        inits = ", ".join(repr(_options(n, OPS[n.op])["bias_init"]) for n in biased)
        rows = f"{len(biased)} * hidden_size" if len(biased) > 1 else "hidden_size"
        doc += [f"bias: ({rows},), blocks of {', '.join(n.name for n in biased)}", f"    initially {inits}"]
        init.append(f"self.bias = nn.Parameter(torch.empty({rows}))")
        reset.append(f"self.bias.copy_(self.bias.new_tensor([{inits}]).repeat_interleave(self.hidden_size))")
    if reset:
        reset = ["bound = 1.0 / math.sqrt(self.hidden_size)", "with torch.no_grad():",
                 *("    " + line for line in reset)]
    doc = [line for d in doc or ["none"] for line in textwrap.wrap(d, 96, subsequent_indent="    ")]
    return doc, init, reset


def generate_module(spec: CellSpec, name: str) -> str:
    """The source of `<name>.py`; ExportError for a spec or name that is not safe to turn into code."""
    check_spec(spec)
    name, plan = module_name(spec, name), lower(spec)
    var, prod = _variables(spec, plan)
    cell, rnn = class_names(name)
    doc, init, reset = _parameters(spec, plan)
    K, one = len(spec.state), "," * (len(spec.state) == 1)
    # The step reads the raw input if an elementwise op does, and the input-side products
    # x_w = F.linear(x, weight_x) if linear nodes read x: the sequence layer computes those for all
    # steps in one product. Per input: (step parameter, cell's argument, sequence's argument, doc).
    step_in = [("x", "x", "x[t]", "x (B, input_size)")] if plan.needs_raw_x else []
    has_x = plan.group(INPUT) is not None
    if has_x:
        x_w = prod[INPUT]
        step_in.append((x_w, "F.linear(x, self.weight_x)", "x_w[t]", f"{x_w} = F.linear(x, weight_x)"))
    products = ["x_w = F.linear(x, layer.weight_x)  # all steps in one product"] if has_x else []
    stacks = (",\n" + " " * 24).join(f"torch.stack([f[{k}] for f in finals])" for k in range(K))
    text = MODULE.substitute(
        name=name, hash=spec.canonical_hash(), Cell=cell, RNN=rnn, K=K,
        state_doc=f"({', '.join(spec.state)}{one})", equations=_indent(equations(spec), 4),
        imports="import math\n\nimport torch" if reset else "import torch",
        state_type=f"tuple[{', '.join(['Tensor'] * K)}]", param_doc=_indent(doc, 8),
        param_init=_indent(init, 8), param_reset=_indent(reset, 8),
        zeros=f"({', '.join(['zeros'] * K)}{one})",
        cell_args=", ".join([a[1] for a in step_in] + ["state"]),
        step_params=", ".join([f"{a[0]}: Tensor" for a in step_in] + ["state: State"]),
        step_doc=f"One step from {', '.join(a[3] for a in step_in)}{',' * (len(step_in) > 1)} and the state.",
        step_body=_indent(_step_body(spec, plan, var, prod), 8),
        layer_state=f"({', '.join(f'state[{k}][i]' for k in range(K))}{one})",
        seq_products=_indent(products, 12),
        seq_args=", ".join([a[2] for a in step_in] + ["s"]), finals=f"({stacks}{one})")
    # Placeholder lines left empty (indented, blank) go; the blank lines between definitions stay.
    return "\n".join(line for line in text.split("\n") if line == "" or line.strip()) + "\n"


def _indent(lines: list[str], n: int) -> str:
    return "\n".join(" " * n + line for line in lines)
