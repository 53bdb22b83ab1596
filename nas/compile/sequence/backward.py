"""The generated backward of a cell's whole sequence (see nas.compile.sequence.forward).

Each step runs the forward's units in reverse: recurrent products send dG_t @ W to their source,
elementwise nodes send their gradient terms (nas.compile.sequence.fast_ops, or the registry's `grad` templates)
to their operands, families write their members' gradients into the dG buffers. A value's terms are
folded into as few calls as possible when its last reader has been processed (`Grads.total`):
a plain alias costs nothing, and each further term is one fused call (add_, addcmul_, addmm_) on a
tensor the step owns, never on one it shares. After the loop, one GEMM per recurrent group gives
its weight gradient over all steps: dW_k = dG_k^T @ S_k, with (T*B) as the inner dimension.
The (T, B, .) gradient buffers live, where they can, in the forward's buffers, one row behind
(nas.compile.sequence.layout.Layout._hosts): the backward then writes into memory that is mapped and cached.
"""

from __future__ import annotations

from nas.cell.ops import render
from nas.cell.spec import INPUT, Node
from nas.compile.sequence.fast_ops import KERNELS, MM, Alias, Expr, Mul, Term
from nas.compile.sequence.layout import Emitter, Layout


class Grads:
    """The gradient terms of one step, per value, and the code that adds them up."""

    def __init__(self, e: Emitter) -> None:
        self.e, self.terms, self.count = e, {}, 0

    def add(self, value: str, term: Term) -> None:
        self.terms.setdefault(value, []).append(term)

    def move(self, src: str, dst: str) -> None:
        self.terms.setdefault(dst, []).extend(self.terms.pop(src, []))

    def total(self, value: str, dest: str | None = None) -> str:
        """Emit the sum of `value`'s terms (into `dest`, a buffer view, if given); its name."""
        terms = self.terms.pop(value, [])
        if not terms:
            if dest:
                self.e(f"{dest}.zero_()")
            return dest or "Z"
        # An Expr head saves its add; a plain alias head costs nothing.
        i = next((i for i, t in enumerate(terms) if isinstance(t, Expr)),
                 next((i for i, t in enumerate(terms) if _plain(t)), 0))
        head = terms.pop(i)
        if _plain(head) and not terms:
            if dest and dest != head.src:  # (equal: already summed there, see _passes_to_member)
                self.e(f"{dest}.copy_({head.src})")
            return dest or head.src
        if _plain(head):
            acc, owned = head.src, False
        else:
            acc, owned = self._emit(_first(head, dest), dest), True
        for t in terms:
            if owned:
                self.e(_fold_into(acc, t))
            else:
                acc, owned = self._emit(_fold(acc, t, dest), dest), True
        return acc

    def _emit(self, code: str, dest: str | None) -> str:
        if dest:
            self.e(code)
            return dest
        self.count += 1
        self.e(f"q{self.count} = {code}")
        return f"q{self.count}"


def _plain(t: Term) -> bool:
    return isinstance(t, Alias) and t.alpha == "1"


def _out(dest: str | None) -> str:
    return f", out={dest}" if dest else ""


def _value(v: str) -> str:
    return "" if v == "1" else f", value={v}"


def _first(t: Term, dest: str | None) -> str:
    """One call computing term t alone."""
    if isinstance(t, Alias):
        return f"torch.mul({t.src}, {t.alpha}{_out(dest)})"
    if isinstance(t, Mul):
        if t.value == "1":
            return f"torch.mul({t.p}, {t.q}{_out(dest)})"
        return f"torch.mul(torch.mul({t.p}, {t.q}), {t.value}{_out(dest)})"
    if isinstance(t, MM):
        return f"torch.mm({t.dg}, {t.w}{_out(dest)})"
    if dest and t.out:
        return t.out.replace("{out}", dest)
    return f"{dest}.copy_({t.value})" if dest else t.value


def _fold_into(acc: str, t: Term) -> str:
    """acc += t, in place (acc is a tensor this step made)."""
    if isinstance(t, Alias):
        return f"{acc}.add_({t.src}{'' if t.alpha == '1' else f', alpha={t.alpha}'})"
    if isinstance(t, Mul):
        return f"{acc}.addcmul_({t.p}, {t.q}{_value(t.value)})"
    if isinstance(t, MM):
        return f"{acc}.addmm_({t.dg}, {t.w})"
    return f"{acc}.add_({t.value})"


def _fold(acc: str, t: Term, dest: str | None) -> str:
    """acc + t as a new tensor (acc is shared: another gradient, or an input of the backward)."""
    if isinstance(t, Alias):
        return f"torch.add({acc}, {t.src}{'' if t.alpha == '1' else f', alpha={t.alpha}'}{_out(dest)})"
    if isinstance(t, Mul):
        return f"torch.addcmul({acc}, {t.p}, {t.q}{_value(t.value)}{_out(dest)})"
    if isinstance(t, MM):
        return f"torch.addmm({acc}, {t.dg}, {t.w}{_out(dest)})"
    return f"torch.add({acc}, {t.value}{_out(dest)})"


def _instantiate(term: Term | str, fill: dict) -> Term:
    """A kernel term (or a registry template) with the step's names filled in. A registry template
    other than "{g}" computes a new tensor (so the sum may be accumulated into it in place)."""
    if isinstance(term, str):
        # A template that is the incoming gradient itself shares it: an alias, never folded into.
        return Alias(fill["g"]) if term.strip() == "{g}" else Expr(f"({render(term, **fill)})")
    args = {k: render(v, **fill) if isinstance(v, str) else v for k, v in vars(term).items()}
    return type(term)(**args)


def backward_source(lay: Layout) -> str:
    e, spec, plan = Emitter(), lay.spec, lay.plan
    grads = Grads(e)
    for k, o in enumerate(spec.outputs):
        grads.add(o, Alias(f"d{k}"))
    grads.add(spec.state[0], Alias(f"{e.use('dp0_', '[Z, *dout.unbind(0)[:T - 1]]')}[t]"))
    units: list[tuple[str, object]] = [("product", k) for k in lay.rec
                                       if plan.groups[k].source in lay.state]
    seen: set[int] = set()
    for n in spec.nodes:
        i = lay.family_of.get(n.name)
        if i is None:
            units.append(("node", n))
        elif i not in seen:
            seen.add(i)
            units.append(("family", i))
        if plan.group(n.name) is not None:
            units.append(("product", plan.groups.index(plan.group(n.name))))
    for kind, arg in reversed(units):
        if kind == "product":
            src = plan.groups[arg].source
            grads.add(src, MM(f"{lay.cols(e, f'dG{arg}')}[t]", f"w{arg}"))
        elif kind == "family":
            _family(lay, e, grads, arg)
        else:
            _node(lay, e, grads, arg)
    if grads.terms.get(INPUT):
        grads.total(INPUT, f"{e.use('dx_', 'dX.unbind(0)')}[t]")
    news = [grads.total(s) for s in spec.state]
    e(f"{', '.join(f'd{k}' for k in range(len(news)))} = {', '.join(news)}")
    return "\n".join(_head(lay, e) + e.lines + _tail(lay)) + "\n"


def _node(lay: Layout, e: Emitter, grads: Grads, n: Node) -> None:
    if n.op == "identity":
        grads.move(n.name, n.inputs[0])
        return
    if n.name in lay.run_of:
        return  # its family's unit differentiates the whole run
    g = grads.total(n.name, _passes_to_member(lay, e, n))
    fill = {"operands": [lay.val(e, i, saved_only=True) for i in n.inputs],
            "options": dict(n.options), "g": g, "y": lay.val(e, n.name, saved_only=True),
            "out": "{out}"}
    kernel = KERNELS.get(n.op)
    if kernel and kernel.shared:
        grads.count += 1
        e(f"q{grads.count} = {render(kernel.shared, **fill)}")
        fill["s"] = f"q{grads.count}"
    for operand, terms in zip(n.inputs, lay.grads_of(n)):
        for term in ((terms,) if isinstance(terms, str) else terms):
            grads.add(operand, _instantiate(term, fill))


def _passes_to_member(lay: Layout, e: Emitter, n: Node) -> str | None:
    """Where n's gradient should be summed: the gradient slot of an operand that only n reads and
    that receives n's gradient unchanged (n = add(operand, ...)), so that no copy is needed there.
    The slot is a family member's dG / dxo columns, or an activation's block of its run's scratch."""
    for operand, terms in zip(n.inputs, lay.grads_of(n)):
        if lay.consumers[operand] != [n.name] or n.inputs.count(operand) != 1:
            continue
        if terms != "{g}" and terms != (Alias("{g}"),):
            continue
        i, run = lay.family_of.get(operand), lay.run_of.get(operand)
        if i is not None:
            dbuf, doff = lay.grad_slab(i)
            j = doff + lay.plan.families[i].members.index(operand)
            return f"{lay.cols(e, dbuf, j, j + 1)}[t]"
        if run is not None and len(run.acts) > 1:
            return _run_slot(e, lay.runs.index(run), run, run.acts.index(operand))
    return None


def _run_slot(e: Emitter, r: int, run, j: int) -> str:
    """The block of run r's gradient scratch dA<r> that holds its j-th activation's gradient."""
    block = f"dA{r}[:, {j} * H:{j + 1} * H]" if run.contiguous else f"dA{r}[:, {j}]"
    return e.use(f"da{r}_{j}", block)


def _family(lay: Layout, e: Emitter, grads: Grads, i: int) -> None:
    """Family i's members' gradients into its dG columns: its runs by one call each, the others
    summed there; then copied into the columns of its other recurrent groups."""
    plan, fam = lay.plan, lay.plan.families[i]
    dbuf, doff = lay.grad_slab(i)
    buf, off, _ = lay.slab(i)
    in_run: set[str] = set()
    for r in (r for r in lay.runs if r.family == i):
        act = lay.node[r.acts[0]]
        if len(r.acts) == 1:
            g = grads.total(r.acts[0])
        else:
            g = f"dA{lay.runs.index(r)}"
            for j, u in enumerate(r.acts):
                grads.total(u, _run_slot(e, lay.runs.index(r), r, j))
        expr = KERNELS[act.op].grads[0][0]
        y = f"{lay.run_view(e, buf, off, r)}[t]"
        dest = f"{lay.run_view(e, dbuf, doff, r)}[t]"
        e(render(expr.out, [y], dict(act.options), g=g, y=y, out=dest))
        in_run |= set(r.members)
    for j, m in enumerate(fam.members):
        if m not in in_run:
            grads.total(m, f"{lay.cols(e, dbuf, doff + j, doff + j + 1)}[t]")
    n = len(fam.members)
    for k in lay.fam_groups[i][1:]:
        o = plan.offset(plan.groups[k], i)
        e(f"{lay.cols(e, f'dG{k}', o, o + n)}[t].copy_({lay.cols(e, dbuf, doff, doff + n)}[t])")


def _head(lay: Layout, e: Emitter) -> list[str]:
    spec = lay.spec
    head = ["def backward(T, dout, dfin, X, xo, w, saved):",
            f"    {''.join(f'{lay.saved(b)}, ' for b in lay.buffers)}= saved",
            "    B, H = S0.shape[1], S0.shape[2]",
            "    Z = S0.new_zeros(B, H)"]
    for j, k in enumerate(lay.rec):
        if f"G{k}" not in lay.hosts:
            head.append(f"    dG{k} = S0.new_empty(T, B, {lay.width[f'G{k}']} * H)")
        head.append(f"    w{k} = w[{j}]")
    for j in range(len(lay.xonly)):
        head.append(f"    xo{j} = xo[{j}]")
        if f"dxo{j}" not in lay.hosts.values():
            head.append(f"    dxo{j} = xo{j}.new_empty(xo{j}.shape)")
    for b, grad in lay.hosts.items():  # the gradient's row t is the host's row t + 1
        head += [f"    {b} = {b}x[:T]", f"    {grad} = {b}x[1:]"]
    if "dx_" in e.lists:
        head.append("    dX = X.new_empty(X.shape)")
    for r, run in enumerate(lay.runs):
        if len(run.acts) > 1:
            shape = f"{len(run.acts)} * H" if run.contiguous else f"{len(run.acts)}, H"
            head.append(f"    dA{r} = S0.new_empty(B, {shape})")
    head += [f"    {name} = {expr}" for name, expr in e.lists.items()]
    head.append("    d0 = dout[T - 1] + dfin[0]")
    head += [f"    d{k} = dfin[{k}]" for k in range(1, len(spec.state))]
    return head + ["    for t in range(T - 1, -1, -1):"]


def _tuple(items) -> str:
    return "(" + "".join(f"{x}, " for x in items) + ")"


def _tail(lay: Layout) -> list[str]:
    """dbase (per group: its dG, or dG summed over steps for a bias vector), and dW_k = dG_k^T S_k:
    one GEMM over all T * B rows."""
    bases = lay.bases()
    dbase, dw = [], []
    for j, k in enumerate(lay.rec):
        dbase.append("None" if bases[j] is None else f"dG{k}.sum((0, 1))" if bases[j] == "bias" else f"dG{k}")
        src = lay.seq(lay.root(lay.plan.groups[k].source))
        dw.append(f"torch.mm(dG{k}.flatten(0, 1).t(), {src}.flatten(0, 1))")
    dx = "dX" if lay.plan.needs_raw_x else "None"
    dxo = _tuple(f"dxo{j}" for j in range(len(lay.xonly)))
    dinit = _tuple(f"d{k}" for k in range(len(lay.spec.state)))
    return [f"    return ({dx}, {_tuple(dbase)}, {dxo}, {dinit}, {_tuple(dw)})"]
