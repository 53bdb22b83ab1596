"""Whole-sequence forward and backward code of a cell: the fast path of CellRNN.

The reference path runs `nas.compile.plan`'s step code under autograd, which records dozens of
autograd nodes per time step. From the same Plan, this module generates two straight-line Python
functions over a whole sequence, which one torch.autograd.Function runs (nas.compile.fast_path):

    forward(T, keep, X, base, xo, init, wt) -> (outputs (T, B, H), final states, saved buffers)
    backward(T, dout, dfin, X, xo, w, saved) -> (dX, dbase, dxo, dinit, dW)

X is the raw input (T, B, I) when an elementwise op reads x; base[j] what recurrent group j's
product is added to (see SeqCode.bases); xo[j] the x products of the j-th family that reads only x;
init the initial states; wt / w the recurrent groups' weights, transposed or not. The forward writes
every value the backward reads, with `out=`, into a (T, B, .) buffer (keep=False, for no_grad: into
one (1, B, .) scratch that every step reuses); the backward walks the steps in reverse, node by node
(nas.compile.sequence.backward), then computes each recurrent group's weight gradient as one GEMM over all steps.

At these sizes a step costs per torch call (dispatch, and a pass over (B, H) values that is slower
on strided columns), not per FLOP outside the products, so the code makes as few calls as it can:
a family's x products and bias are the `input` of its first recurrent product,
`addmm(base_t, s, W^T, out=G_t)`; same-kind activations over evenly spaced members of a family
are one in-place call (nas.compile.sequence.layout.Run); add(u, mul(p, q)) is one addcmul; elementwise ops
are the fused forms of nas.compile.sequence.fast_ops.
Variable names are generated, never taken from the spec.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from nas.cell.ops import OPS, render
from nas.cell.spec import INPUT, CellSpec, Node
from nas.compile.plan import Plan
from nas.compile.sequence.backward import backward_source
from nas.compile.sequence.fast_ops import KERNELS
from nas.compile.sequence.layout import Emitter, Layout


@dataclass(frozen=True)
class SeqCode:
    """The generated code of a plan and what its caller builds for it.

    bases: per recurrent group (plan.groups other than x's, in order): None (nothing is added to
           its product), "bias" (the group's bias vector) or pieces concatenated over columns, each
           ("x", lo, hi): columns lo*H:hi*H of the x products, or ("b", lo, hi): rows lo*H:hi*H
           of the group's bias (zeros where it has none), expanded over (T, B).
    xonly: per family that reads only x, its columns (lo, hi) of the x products, in units of H.
    raw_x: the code reads x itself.
    """

    bases: tuple
    xonly: tuple[tuple[int, int], ...]
    raw_x: bool
    forward_source: str
    backward_source: str


def generate(plan: Plan) -> SeqCode:
    lay = Layout(_without_repeats(plan))
    xg = plan.group(INPUT)
    xonly = tuple((plan.offset(xg, i), plan.offset(xg, i) + len(plan.families[i].members))
                  for i in lay.xonly)
    fwd, bwd = forward_source(lay), backward_source(lay)
    if "<unsaved" in bwd:  # a gradient reads a value the forward did not keep: a generator bug
        raise AssertionError(f"nas.compile.sequence.forward: backward of {plan.spec} reads an unsaved value:\n{bwd}")
    return SeqCode(lay.bases(), xonly, plan.needs_raw_x, fwd, bwd)


def _without_repeats(plan: Plan) -> Plan:
    """The plan with every elementwise node that repeats an earlier one (same op, operands and
    options; operands in any order for a commutative op) made an identity of it, which costs
    nothing: random cells repeat nodes (leaky_relu(m) twice). The linear nodes, and so the
    families, groups and parameter layout, stay as they are."""
    seen: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    nodes = []
    for n in plan.spec.nodes:
        inputs = tuple(rename.get(i, i) for i in n.inputs)
        key = (n.op, tuple(sorted(inputs)) if OPS[n.op].commutative else inputs, n.options)
        if n.op in ("linear", "identity") or key not in seen:
            seen.setdefault(key, n.name)
            nodes.append(n)
            continue
        rename[n.name] = seen[key]
        nodes.append(Node(n.name, "identity", (seen[key],)))
    if not rename:
        return plan
    spec = CellSpec(plan.spec.state, tuple(nodes), plan.spec.outputs, plan.spec.name)
    return replace(plan, spec=spec)


def forward_source(lay: Layout) -> str:
    e, spec, plan = Emitter(), lay.spec, lay.plan
    for k in lay.rec:
        if plan.groups[k].source in lay.state:
            _product(lay, e, k)
    done: set[int] = set()
    for n in spec.nodes:
        if n.op == "linear":
            i = lay.family_of[n.name]
            if i not in done:
                done.add(i)
                _family(lay, e, i)
        elif n.op != "identity" and n.name not in lay.run_of:
            _elementwise(lay, e, n)
        group = plan.group(n.name)
        if group is not None:
            _product(lay, e, plan.groups.index(group))
    for k, o in enumerate(spec.outputs):
        if o in lay.state or o == INPUT or lay.where[o] != ("next", k):
            e(f"{lay.slot(e, k, 1)}.copy_({lay.val(e, o)})")
    finals = "".join(f"_last(S{k}, T), " for k in range(len(spec.state)))
    saved = "".join(f"{lay.saved(b)}, " for b in lay.buffers)
    tail = [f"    return S0[1:], ({finals}), ({saved})"]
    return "\n".join(_forward_head(lay, e) + e.lines + tail) + "\n"


def state_buffers(K: int) -> list[str]:
    """The forward's state histories S<k>, (T + 1, B, H) with the initial state in row 0; under
    no_grad all but S0 (the outputs) are two slots used in turn."""
    head = []
    for k in range(K):
        rows = "T + 1" if k == 0 else "T + 1 if keep else 2"
        head += [f"    S{k} = init[0].new_empty({rows}, B, H)", f"    S{k}[0] = init[{k}]"]
    return head


def _forward_head(lay: Layout, e: Emitter) -> list[str]:
    bases = lay.bases()
    head = ["def forward(T, keep, X, base, xo, init, wt):",
            "    B, H = init[0].shape",
            "    n = T if keep else 1"] + state_buffers(len(lay.spec.state))
    for j, k in enumerate(lay.rec):
        head.append(f"    wt{k} = wt[{j}]")
        if bases[j] == "bias":
            head.append(f"    b{k} = base[{j}]")
    for b in lay.buffers[len(lay.spec.state):]:
        if b in lay.hosts:  # (one more row: for a gradient of the backward, see Layout._hosts)
            head += [f"    {b}x = init[0].new_empty(n + 1 if keep else 1, B, {lay.width.get(b, 1)} * H)",
                     f"    {b} = {b}x[:n]"]
        else:
            head.append(f"    {b} = init[0].new_empty(n, B, {lay.width.get(b, 1)} * H)")
    head += [f"    xo{j} = xo[{j}]" for j in range(len(lay.xonly))]
    head += [f"    {name} = {expr}" for name, expr in e.lists.items()]
    return head + ["    for t in range(T):"]


def _product(lay: Layout, e: Emitter, k: int) -> None:
    """Recurrent group k's product, plus its base: G_k[t] = base_k[t] + source_t @ W_k^T."""
    j = lay.rec.index(k)
    base = lay.bases()[j]
    src = lay.val(e, lay.plan.groups[k].source)
    out = lay.slot(e, lay.into_state[k], 1) if k in lay.into_state else f"{lay.cols(e, f'G{k}')}[t]"
    if base is None:
        e(f"torch.mm({src}, wt{k}, out={out})")
    elif base == "bias":
        e(f"torch.addmm(b{k}, {src}, wt{k}, out={out})")
    else:
        e(f"torch.addmm({e.use(f'b{k}_', f'base[{j}].unbind(0)')}[t], {src}, wt{k}, out={out})")


def _family(lay: Layout, e: Emitter, i: int) -> None:
    """Family i's pre-activations (summed over its groups if it reads several), then its runs."""
    plan, n = lay.plan, len(lay.plan.families[i].members)
    gs = lay.fam_groups[i]
    if len(gs) > 1:
        blocks = []
        for k in gs:
            off = plan.offset(plan.groups[k], i)
            blocks.append(f"{lay.cols(e, f'G{k}', off, off + n)}[t]")
        out = f"{lay.cols(e, f'F{i}')}[t]"
        e(f"torch.add({blocks[0]}, {blocks[1]}, out={out})")
        for b in blocks[2:]:
            e(f"{out}.add_({b})")
    buf, off, _ = lay.slab(i)
    for r in lay.runs:
        if r.family == i:
            view = f"{lay.run_view(e, buf, off, r)}[t]"
            act = lay.node[r.acts[0]]
            e(render(KERNELS[act.op].value, [view], dict(act.options), out=f", out={view}"))


def _elementwise(lay: Layout, e: Emitter, n: Node) -> None:
    kind = lay.where[n.name]
    if kind[0] == "fused":
        return  # computed by the add that reads it
    dest = None if kind[0] == "temp" else lay.val(e, n.name)
    products = [lay.node[v] for v in n.inputs if lay.where.get(v, ("",))[0] == "fused"]
    if products:
        _addcmul(lay, e, n, products, dest)
        return
    operands = [lay.val(e, i) for i in n.inputs]
    kernel = KERNELS.get(n.op)
    if kernel:
        code = render(kernel.value, operands, dict(n.options), out=f", out={dest}" if dest else "")
        e(code if dest else f"{kind[1]} = {code}")
    else:  # no fast form: the registry's expression
        expr = render(OPS[n.op].expr, operands, dict(n.options))
        e(f"{dest}.copy_({expr})" if dest else f"{kind[1]} = {expr}")


def _addcmul(lay: Layout, e: Emitter, n: Node, products: list[Node], dest: str | None) -> None:
    """n = u + p * q (or p1 * q1 + p2 * q2) with the products fused in: one call per product."""
    p = [[lay.val(e, i) for i in m.inputs] for m in products]
    name = dest or lay.where[n.name][1]
    assign = "" if dest else f"{name} = "
    if len(products) == 1:
        u = lay.val(e, next(v for v in n.inputs if v != products[0].name))
        e(f"{assign}torch.addcmul({u}, {p[0][0]}, {p[0][1]}{f', out={dest}' if dest else ''})")
    else:
        e(f"{assign}torch.mul({p[0][0]}, {p[0][1]}{f', out={dest}' if dest else ''})")
        e(f"{name}.addcmul_({p[1][0]}, {p[1][1]})")
