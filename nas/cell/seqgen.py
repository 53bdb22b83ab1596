"""Whole-sequence forward and backward code of a cell: the fast path of CellRNN.

The reference path runs `nas.cell.lower`'s step code under autograd, which records dozens of
autograd nodes per time step. From the same Plan, this module generates two straight-line Python
functions over a whole sequence, which one torch.autograd.Function runs (nas.cell.fused):

    forward(T, keep, X, base, xo, init, wt) -> (outputs, final states, saved buffers)
    backward(T, dout, dfin, X, xo, w, saved) -> (dX, dbase, dxo, dinit, dW)

The forward writes every value the backward reads, with `out=`, into a (T, B, .) buffer (keep=False,
the no_grad path: into one (1, B, .) scratch that every step reuses); the backward walks the steps in
reverse, node by node, with the gradients of nas.cell.kernels (or of the registry's templates), then
computes each recurrent group's weight gradient as one GEMM over all steps: dW = dG_all^T @ S_all.

Arguments: X the raw input (T, B, I) when an elementwise op reads x; base[j] what recurrent group j's
product is added to (`SeqCode.bases`); xo[j] the x products of the j-th family that reads only x;
init the initial states; wt / w the recurrent groups' weights, transposed (forward) or not.

Where the time goes at these sizes is per-call dispatch, so the code does as few calls as it can:
- a family's x products and bias are the `input` of its first recurrent product,
  `addmm(base_t, s, W^T, out=G_t)` (the family is *absorbed* by that group);
- consecutive family members each read only by one activation of the same kind (the LSTM's i, f)
  are activated in place by one call over their columns, and differentiated by one call;
- gradients are accumulated by fused calls (addcmul_, addmm_, add_(alpha=)), written straight into
  the dG buffers that the weight-gradient GEMMs read. Variable names are generated, never taken
  from the spec.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

from nas.cell.kernels import KERNELS, MM, Alias, Expr, Mul, Term
from nas.cell.lower import Plan
from nas.cell.ops import OPERANDS, OPS, render
from nas.cell.seqbwd import backward_source
from nas.cell.spec import INPUT


@dataclass(frozen=True)
class SeqCode:
    """The generated code of a plan and what its caller must build.

    bases: per recurrent group (plan.groups other than x, in order): None (its product is the
           group's value), "bias" (the group's bias vector is added) or a tuple of pieces, each
           ("x", lo, hi) (columns lo*H:hi*H of the x products) or ("b", lo, hi) (rows lo*H:hi*H of
           the group's bias, expanded over (T, B)), concatenated.
    xonly: per family that reads only x, its columns (lo, hi) of the x products (units of H).
    raw_x: the code reads x itself (an elementwise op or an output reads it).
    """

    bases: tuple
    xonly: tuple[tuple[int, int], ...]
    raw_x: bool
    forward_source: str
    backward_source: str


@dataclass(frozen=True)
class Run:
    """Consecutive members of a family, each read only by one in-place activation of one kind."""

    family: int
    first: int                    # index of the first member in the family
    members: tuple[str, ...]
    acts: tuple[str, ...]         # the activation node of each member


@dataclass
class Emitter:
    """Lines of one generated function, and the per-step view lists it uses (made once, before
    the time loop, so that indexing a step costs a list lookup)."""

    lists: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def use(self, name: str, expr: str) -> str:
        self.lists.setdefault(name, expr)
        return name

    def __call__(self, line: str) -> None:
        self.lines.append(f"        {line}")


def _fields(*templates: str) -> set[str]:
    return {f for t in templates for _, f, _, _ in string.Formatter().parse(t) if f}


def _term_fields(terms: tuple[Term, ...]) -> set[str]:
    out: set[str] = set()
    for t in terms:
        out |= _fields(*(v for v in vars(t).values() if isinstance(v, str)))
    return out


class Layout:
    """Where each value of a step lives: the analysis both generated functions share."""

    def __init__(self, plan: Plan) -> None:
        spec = self.spec = plan.spec
        self.plan = plan
        self.node = {n.name: n for n in spec.nodes}
        self.state = {s: k for k, s in enumerate(spec.state)}
        self.rec = [k for k, g in enumerate(plan.groups) if g.source != INPUT]
        self.family_of = {m: i for i, f in enumerate(plan.families) for m in f.members}
        self.fam_groups = [[k for k in self.rec if plan.groups[k].source in f.sources]
                           for f in plan.families]
        self.xonly = [i for i, gs in enumerate(self.fam_groups) if not gs]
        self.consumers: dict[str, list[str | None]] = {v: [] for v in (*spec.inputs, *self.node)}
        for n in spec.nodes:
            for i in n.inputs:
                self.consumers[i].append(n.name)
        for o in spec.outputs:
            self.consumers[o].append(None)  # read by the next step, as a state
        self.runs = [r for i in range(len(plan.families)) for r in self._runs(i)]
        self.run_of = {u: r for r in self.runs for u in r.acts}
        self.width = {f"G{k}": len(plan.groups[k].bias_rows) for k in self.rec}
        self.width.update({f"F{i}": len(plan.families[i].members) for i, gs in enumerate(self.fam_groups)
                           if len(gs) > 1})
        self.width.update({f"xo{j}": len(plan.families[i].members) for j, i in enumerate(self.xonly)})
        self.needed = self._needed()
        self.where = self._storage()
        self.buffers = [f"S{k}" for k in range(len(spec.state))] + [f"G{k}" for k in self.rec]
        self.buffers += [b for b in self.width if b.startswith("F")]
        self.buffers += [w[1] for w in self.where.values() if w[0] == "buf"]

    # -- analysis ------------------------------------------------------------------------------
    def kernel(self, node: str):
        return KERNELS.get(self.node[node].op)

    def root(self, v: str) -> str:
        """The value an identity chain stands for."""
        while v in self.node and self.node[v].op == "identity":
            v = self.node[v].inputs[0]
        return v

    def slab(self, i: int) -> tuple[str, int, bool]:
        """(buffer, first column in units of H, owned) of family i's pre-activations."""
        gs = self.fam_groups[i]
        if not gs:
            return f"xo{self.xonly.index(i)}", 0, False
        if len(gs) == 1:
            return f"G{gs[0]}", self.plan.offset(self.plan.groups[gs[0]], i), True
        return f"F{i}", 0, True

    def _runs(self, i: int) -> list[Run]:
        if not self.slab(i)[2]:
            return []  # the slab is an input: no in-place activation
        runs: list[Run] = []
        cur: list[tuple[int, str, str, tuple]] = []
        for j, m in enumerate(self.plan.families[i].members):
            users = self.consumers[m]
            u = users[0] if len(users) == 1 else None
            kernel = KERNELS.get(self.node[u].op) if u else None
            key = (self.node[u].op, self.node[u].options) if kernel and kernel.inplace else None
            if cur and (key is None or key != cur[-1][3] or j != cur[-1][0] + 1):
                runs.append(Run(i, cur[0][0], tuple(c[1] for c in cur), tuple(c[2] for c in cur)))
                cur = []
            if key is not None:
                cur.append((j, m, u, key))
        if cur:
            runs.append(Run(i, cur[0][0], tuple(c[1] for c in cur), tuple(c[2] for c in cur)))
        return runs

    def grad_fields(self, name: str) -> set[str]:
        node = self.node[name]
        kernel = KERNELS.get(node.op)
        if kernel:
            return set().union(*(_term_fields(t) for t in kernel.grads))
        return _fields(*OPS[node.op].grad)

    def _needed(self) -> set[str]:
        """Values the backward reads: operands and outputs its gradients name, group sources."""
        need = {self.root(self.plan.groups[k].source) for k in self.rec}
        for n in self.spec.nodes:
            if n.op in ("linear", "identity") or n.name in self.run_of:
                continue
            for f in self.grad_fields(n.name):
                if f == "y":
                    need.add(n.name)
                elif f in OPERANDS:
                    need.add(self.root(n.inputs[OPERANDS.index(f)]))
        return need

    def _storage(self) -> dict[str, tuple]:
        """node -> ("col", buffer, lo, hi) | ("next", k) (the state slot it is the new value of)
        | ("buf", buffer) | ("temp", name) | ("alias", value)."""
        where: dict[str, tuple] = {}
        for n in self.spec.nodes:
            if n.op == "linear" or n.name in self.run_of:
                m = n.name if n.op == "linear" else self.run_of[n.name].members[
                    self.run_of[n.name].acts.index(n.name)]
                i = self.family_of[m]
                buf, off, _ = self.slab(i)
                j = off + self.plan.families[i].members.index(m)
                where[n.name] = ("col", buf, j, j + 1)
            elif n.op == "identity":
                where[n.name] = ("alias", n.inputs[0])
            elif n.name in self.spec.outputs:
                where[n.name] = ("next", self.spec.outputs.index(n.name))
            elif n.name in self.needed:
                where[n.name] = ("buf", f"V{len(where)}")
            else:
                where[n.name] = ("temp", f"t{len(where)}")
        return where

    # -- names of per-step values --------------------------------------------------------------
    def cols(self, e: Emitter, buf: str, lo: int | None = None, hi: int | None = None) -> str:
        """The per-step view list of columns lo*H:hi*H of a (T, B, .) buffer (all when None)."""
        width = self.width.get(buf.removeprefix("d").replace("xo", "xo") if buf.startswith("dG")
                               else buf, None)
        if buf.startswith("dG"):
            width = self.width[buf[1:]]
        elif buf.startswith("dxo"):
            width = self.width[buf[1:]]
        if lo is None or (lo == 0 and hi == width):
            return e.use(f"{buf.lower()}_", f"_steps({buf}, T)")
        return e.use(f"{buf.lower()}_{lo}_{hi}", f"_steps({buf}, T, {lo} * H, {hi} * H)")

    def val(self, e: Emitter, v: str, saved_only: bool = False) -> str:
        """The expression of value v at step t (saved_only: in the backward, where temporaries of
        the forward do not exist; a name that is not saved renders as a marker the check rejects)."""
        if v == INPUT:
            return f"{e.use('x_', 'X.unbind(0)')}[t]"
        if v in self.state:
            k = self.state[v]
            return f"{e.use(f's{k}_', f'_hist(S{k}, T)')}[t]"
        kind = self.where[v]
        if kind[0] == "alias":
            return self.val(e, kind[1], saved_only)
        if kind[0] == "next":
            k = kind[1]
            return f"{e.use(f's{k}_', f'_hist(S{k}, T)')}[t + 1]"
        if kind[0] == "col":
            return f"{self.cols(e, *kind[1:])}[t]"
        if kind[0] == "buf":
            return f"{self.cols(e, kind[1])}[t]"
        return f"<unsaved {kind[1]}>" if saved_only else kind[1]

    def seq(self, v: str) -> str:
        """The expression of value v over all steps, as a (T, B, H) tensor (backward only)."""
        if v in self.state:
            return f"S{self.state[v]}[:T]"
        kind = self.where[v]
        if kind[0] == "alias":
            return self.seq(kind[1])
        if kind[0] == "next":
            return f"S{kind[1]}[1:]"
        if kind[0] == "col":
            return f"{kind[1]}[:, :, {kind[2]} * H:{kind[3]} * H]"
        return kind[1]

    # -- what the caller builds ----------------------------------------------------------------
    def bases(self) -> tuple:
        plan, xg = self.plan, self.plan.group(INPUT)
        absorbed = {i: gs[0] for i, gs in enumerate(self.fam_groups)
                    if gs and INPUT in plan.families[i].sources}
        out = []
        for k in self.rec:
            g = plan.groups[k]
            pieces: list[list] = []
            for i in g.families:
                off, n = plan.offset(g, i), len(plan.families[i].members)
                if absorbed.get(i) == k:
                    xo = plan.offset(xg, i)
                    piece = ["x", xo, xo + n]
                else:
                    piece = ["b", off, off + n]
                if pieces and pieces[-1][0] == piece[0] and pieces[-1][2] == piece[1]:
                    pieces[-1][2] = piece[2]
                else:
                    pieces.append(piece)
            if any(p[0] == "x" for p in pieces):
                out.append(tuple(tuple(p) for p in pieces))
            else:
                out.append("bias" if any(adds for _, adds in g.bias_rows) else None)
        return tuple(out)


def forward_source(lay: Layout) -> str:
    e, spec, plan = Emitter(), lay.spec, lay.plan
    bases = lay.bases()
    for j, k in enumerate(lay.rec):
        src = lay.val(e, plan.groups[k].source)
        out = f"{lay.cols(e, f'G{k}')}[t]"
        if bases[j] is None:
            e(f"torch.mm({src}, wt{k}, out={out})")
        elif bases[j] == "bias":
            e(f"torch.addmm(b{k}, {src}, wt{k}, out={out})")
        else:
            e(f"torch.addmm({e.use(f'b{k}_', f'base[{j}].unbind(0)')}[t], {src}, wt{k}, out={out})")
        if plan.groups[k].source in lay.node:
            break  # groups over nodes come right after their node
    done: set[int] = set()
    for n in spec.nodes:
        if n.op == "linear":
            i = lay.family_of[n.name]
            if i not in done:
                done.add(i)
                _forward_family(lay, e, i)
        elif n.op != "identity" and n.name not in lay.run_of:
            _forward_node(lay, e, n)
        k = next((k for k in lay.rec if plan.groups[k].source == n.name), None)
        if k is not None:
            src = lay.val(e, n.name)
            out = f"{lay.cols(e, f'G{k}')}[t]"
            j = lay.rec.index(k)
            if bases[j] is None:
                e(f"torch.mm({src}, wt{k}, out={out})")
            elif bases[j] == "bias":
                e(f"torch.addmm(b{k}, {src}, wt{k}, out={out})")
            else:
                e(f"torch.addmm({e.use(f'b{k}_', f'base[{j}].unbind(0)')}[t], {src}, wt{k}, out={out})")
    for k, o in enumerate(spec.outputs):
        if lay.where.get(o) != ("next", k):
            e(f"{lay.val(e, spec.state[k])[:-3]}[t + 1].copy_({lay.val(e, o)})")
    head = ["def forward(T, keep, X, base, xo, init, wt):",
            "    B, H = init[0].shape",
            "    n = T if keep else 1"]
    for k in range(len(spec.state)):
        rows = "T + 1" if k == 0 else "T + 1 if keep else 2"
        head += [f"    S{k} = init[0].new_empty({rows}, B, H)", f"    S{k}[0] = init[{k}]"]
    for j, k in enumerate(lay.rec):
        head.append(f"    G{k} = init[0].new_empty(n, B, {lay.width[f'G{k}']} * H)")
        head.append(f"    wt{k} = wt[{j}]")
        if bases[j] == "bias":
            head.append(f"    b{k} = base[{j}]")
    for b in lay.buffers:
        if b[0] in "FV":
            head.append(f"    {b} = init[0].new_empty(n, B, {lay.width.get(b, 1)} * H)")
    for j in range(len(lay.xonly)):
        head.append(f"    xo{j} = xo[{j}]")
    head += [f"    {name} = {expr}" for name, expr in e.lists.items()]
    head.append("    for t in range(T):")
    finals = ", ".join(f"_last(S{k}, T)" for k in range(len(spec.state)))
    tail = [f"    return S0[1:], ({finals},), ({', '.join(lay.buffers)},)"]
    return "\n".join(head + e.lines + tail) + "\n"


def _forward_family(lay: Layout, e: Emitter, i: int) -> None:
    plan = lay.plan
    gs = lay.fam_groups[i]
    if len(gs) > 1:
        blocks = []
        for k in gs:
            off = plan.offset(plan.groups[k], i)
            blocks.append(f"{lay.cols(e, f'G{k}', off, off + len(plan.families[i].members))}[t]")
        out = f"{lay.cols(e, f'F{i}')}[t]"
        e(f"torch.add({blocks[0]}, {blocks[1]}, out={out})")
        for b in blocks[2:]:
            e(f"{out}.add_({b})")
    buf, off, _ = lay.slab(i)
    for r in (r for r in lay.runs if r.family == i):
        view = f"{lay.cols(e, buf, off + r.first, off + r.first + len(r.members))}[t]"
        act = lay.node[r.acts[0]]
        e(render(KERNELS[act.op].value, [view], dict(act.options), out=f", out={view}"))


def _forward_node(lay: Layout, e: Emitter, n) -> None:
    operands = [lay.val(e, i) for i in n.inputs]
    kind = lay.where[n.name]
    dest = None if kind[0] == "temp" else lay.val(e, n.name)
    kernel = KERNELS.get(n.op)
    if kernel:
        code = render(kernel.value, operands, dict(n.options), out=f", out={dest}" if dest else "")
        e(code if dest else f"{kind[1]} = {code}")
    else:
        expr = render(OPS[n.op].expr, operands, dict(n.options))
        e(f"{dest}.copy_({expr})" if dest else f"{kind[1]} = {expr}")


def generate(plan: Plan) -> SeqCode:
    lay = Layout(plan)
    return SeqCode(lay.bases(), tuple((plan.offset(plan.group(INPUT), i),
                                       plan.offset(plan.group(INPUT), i) + len(plan.families[i].members))
                                      for i in lay.xonly),
                   lay.spec and _reads_x(lay), forward_source(lay), backward_source(lay))


def _reads_x(lay: Layout) -> bool:
    return bool(lay.consumers[INPUT])


__all__ = ["MM", "Alias", "Expr", "Mul", "Layout", "SeqCode", "generate"]
