"""The whole-sequence code of the kernel backends: a driver in Python (or C) and one kernel per stage.

For each stage of a step (nas.compile.backends.stages) the forward kernel loads what the stage reads,
computes its nodes in registers, and stores what leaves the stage; the backward kernel recomputes
the stage from the same loads and writes the gradients that leave it. The products and their
gradients are the driver's (torch, or MKL). The functions keep the torch code's signatures and input
conventions (nas.compile.sequence.program), so nas.compile.fast_path and
nas.compile.backends.cudagraphs run every program alike. The kernel language is the kernel class's
(StageKernel's subclasses); nothing here knows Triton or C.

Generated names: buffers S<j> (state histories), G<k> (products), V<i> (kept values), dG<k>,
dxo<j>, dX; per-step accumulators dC<j> (the carried state gradients), dN<j> (the next carry),
dA<i>; kernels _f<s> / _b<s>. Nothing is taken from the spec.
"""

from __future__ import annotations

from nas.cell.ops import render
from nas.cell.spec import INPUT
from nas.compile.backends.driver import StageDriver, StageKernel
from nas.compile.backends.stages import Stages
from nas.compile.plan import Plan
from nas.compile.sequence.forward import SeqCode, state_buffers


def _upstream(d: StageDriver, k_outputs: list[int], kern: StageKernel, var: str) -> list[str]:
    """Loads of the gradients a value gets as the new state(s) k: the carry, and dout for h."""
    terms = []
    for k in k_outputs:
        terms.append(kern.load([d.plain(f"dC{k}")], f"{var}c{k}"))
        if k == 0:
            terms.append(kern.load([d.view("do_", "dout.unbind(0)")], f"{var}o"))
    return terms


def _compute(st: Stages, d: StageDriver, s: int, kern: StageKernel, backward: bool = False) -> dict[str, str]:
    """Loads and node values of stage s in `kern`; returns value -> variable. The backward loads
    the values the forward kept in G (`activations`) instead of recomputing them."""
    kept = d.activations if backward else {}
    # (a kept node's input is not loaded: its gradient does not read it; a template that did would
    # name this undefined variable, and the kernel would not compile)
    var = {v: "unloaded" if v in kept.values() else kern.load(d.reads(v), f"u{i}")
           for i, v in enumerate(st.stage_reads(s))}
    for i, n in enumerate(st.nodes(s)):
        var[n.name] = f"n{i}"
        if n.name in kept:
            kern.load(d.reads(kept[n.name]), f"n{i}")
            continue
        expr, _ = kern.OPS[n.op]
        kern.assign(f"n{i}", render(expr, [var[st.root(a)] for a in n.inputs], dict(n.options)))
    return var


def forward_kernel(st: Stages, d: StageDriver, s: int) -> StageKernel | None:
    kern = d.Kernel(f"_f{s}")
    var = _compute(st, d, s, kern)
    for n in st.nodes(s):
        if n.name in st.kept:
            kern.store(d.home(n.name), var[n.name])
        for k, v in enumerate(st.outputs):  # a value that is several new states: the others
            if v == n.name and d.home(n.name) != d.next_state(k):
                kern.store(d.next_state(k), var[n.name])
    for v, k in st.exports(s):
        kern.store(d.next_state(k), var[v])
    for v in st.materialized:
        if st.stage[v] == s:
            kern.store(d.home(v), var[v])
    for n in st.nodes(s):
        if n.name in d.activations:  # (its backward loads it from there)
            kern.store(d.reads(d.activations[n.name])[0], var[n.name])
    return kern if kern.views else None


def backward_kernel(st: Stages, d: StageDriver, s: int, contrib: dict) -> StageKernel | None:
    kern = d.Kernel(f"_b{s}")
    var = _compute(st, d, s, kern, backward=True)
    nodes = st.nodes(s)
    terms: dict[str, list[str]] = {}
    for i, n in enumerate(nodes):
        ks = [k for k, v in enumerate(st.outputs) if v == n.name]
        terms[n.name] = _upstream(d, ks, kern, f"e{i}")
        if contrib.get(n.name):
            terms[n.name].append(kern.load([d.grad(n.name)], f"e{i}a"))
    ext: dict[str, list[str]] = {}
    for v, k in st.exports(s):
        ext.setdefault(v, []).extend(_upstream(d, [k], kern, f"x{len(ext)}_"))
    q = 0
    for i, n in reversed(list(enumerate(nodes))):
        kern.assign(f"g{i}", " + ".join(terms[n.name]) or "0.0")
        _, grads = kern.OPS[n.op]
        operands = [var[st.root(a)] for a in n.inputs]
        for j, a in enumerate(n.inputs):
            template = grads[min(j, len(grads) - 1)]
            kern.assign(f"q{q}", render(template, operands, dict(n.options), y=f"n{i}", g=f"g{i}"))
            r = st.root(a)
            (terms if r in terms else ext).setdefault(r, []).append(f"q{q}")
            q += 1
    for i, (v, parts) in enumerate(ext.items()):
        total, target = " + ".join(parts), d.grad(v)
        if contrib[v][0] != ("stage", s):  # an earlier contribution wrote it: add to it
            total = f"{kern.load([target], f'w{i}')} + {total}"
        kern.assign(f"t{i}", total)
        kern.store(target, f"t{i}")
        if contrib[v][-1] == ("stage", s):  # the last contribution: the other groups' columns too
            for sec in d.secondaries(v):
                kern.store(sec, f"t{i}")
    return kern if nodes or ext else None


def _gemm_source(st: Stages, d: StageDriver, k: int) -> str:
    return d.home(st.root(st.plan.groups[k].source))


def forward_source(st: Stages, d: StageDriver, kernels: list[StageKernel]) -> str:
    bases = st.lay.bases()
    loop = []
    for s in range(st.count):
        for k in st.groups_in_batch(s):
            j = st.rec.index(k)
            out = d.view(f"g{k}_", f"_steps(G{k}, T)")
            src = _gemm_source(st, d, k)
            base = None if bases[j] is None else f"base[{j}]" if bases[j] == "bias" else \
                d.view(f"b{k}_", f"base[{j}].unbind(0)")
            loop += d.Kernel.product(d, src, f"wt{k}", out, base)
        kern = forward_kernel(st, d, s)
        if kern is not None:
            kernels.append(kern)
            loop.append(kern.launch(d))
    head = ["def forward(T, keep, X, base, xo, init, wt):",
            "    B, H = init[0].shape",
            "    n = T if keep else 1", *d.Kernel.SETUP]
    head += state_buffers(len(st.spec.state))  # returned to the caller: never pooled
    for j, k in enumerate(st.rec):
        rows = "T + 1 if keep else 1" if k in hosted(st, d) else "n"
        head += [f"    G{k} = {d.Kernel.empty('init[0]', f'{rows}, B, {len(st.plan.groups[k].bias_rows)} * H')}",
                 f"    wt{k} = wt[{j}]", *d.Kernel.weight(f"wt{k}")]
    head += [f"    {b} = {d.Kernel.empty('init[0]', 'n, B, H')}" for b in d.vbuf.values()]
    head += [f"    xo{j} = xo[{j}]" for j in range(len(st.lay.xonly))]
    finals = "".join(f"_last(S{j}, T), " for j in range(len(st.spec.state)))
    tail = f"    return S0[1:], ({finals}), ({_saved(st, d)})"
    return "\n".join(head + d.head() + d.Kernel.loop(d, loop, kernels, False) + [tail]) + "\n"


def hosted(st: Stages, d: StageDriver) -> list[int]:
    """The groups whose gradients dG the backward writes into their forward buffer G, one row
    behind (G has T + 1 rows; dG_t is row t + 1, G_{t+1}'s, which step t + 1's backward no longer
    needs): for kernels that ask for it (HOSTS), and unless a product's source lives in G (its
    weight gradient reads it after the loop)."""
    if not d.Kernel.HOSTS:
        return []
    in_g = {d.st.columns(v)[0][0] for k in st.rec
            if d.st.kind(v := st.root(st.plan.groups[k].source)) == "linear" and v not in d.vbuf}
    return [k for k in st.rec if f"G{k}" not in in_g]


def _saved(st: Stages, d: StageDriver) -> str:
    names = [f"S{j}" for j in range(len(st.spec.state))] + [f"G{k}" for k in st.rec] + list(d.vbuf.values())
    return "".join(f"{n}, " for n in names)


def backward_source(st: Stages, d: StageDriver, kernels: list[StageKernel]) -> str:
    contrib = st.contributors()
    body = d.Kernel.loop(d, _backward_loop(st, d, kernels, contrib), kernels, True)
    return "\n".join(_backward_head(st, d, contrib) + d.head() + body + [_backward_tail(st, d)]) + "\n"


def _backward_loop(st: Stages, d: StageDriver, kernels: list[StageKernel], contrib: dict) -> list[str]:
    """One step in reverse: each stage's kernel, then the products that ran before it."""
    loop = []
    for kind, s in st.events():
        if kind == "stage":
            kern = backward_kernel(st, d, s, contrib)
            if kern is not None:
                kernels.append(kern)
                loop.append(kern.launch(d))
            continue
        wrote: set[str] = set()  # two products of one round can read one value (h and id(h))
        for k in st.groups_in_batch(s):
            v = st.root(st.plan.groups[k].source)
            first = contrib[v][0] == (kind, s) and v not in wrote  # the first contribution writes
            wrote.add(v)
            loop += d.Kernel.grad_product(d, d.view(f"dg{k}_", f"_steps(dG{k}, T)"), f"w{k}", d.grad(v), first)
        for v in dict.fromkeys(st.root(st.plan.groups[k].source) for k in st.groups_in_batch(s)):
            if contrib[v][-1] == (kind, s):
                for sec in d.secondaries(v):
                    loop += d.Kernel.copy(d, sec, d.grad(v))
    # The carries: dN (this step's gradient of the previous state) becomes dC; a state nothing
    # reads carries zeros.
    K = len(st.spec.state)
    unread = [j for j, s in enumerate(st.spec.state) if s not in contrib]
    for j in range(K):
        loop += d.Kernel.zero(d, f"dC{j}") if j in unread else d.Kernel.swap(d, f"dC{j}", f"dN{j}")
    return loop


def _backward_head(st: Stages, d: StageDriver, contrib: dict) -> list[str]:
    K = len(st.spec.state)
    head = ["def backward(T, dout, dfin, X, xo, w, saved):",
            f"    {_saved(st, d)}= saved",
            "    B, H = S0.shape[1], S0.shape[2]",
            "    Z = S0.new_zeros(B, H)", *d.Kernel.SETUP, *d.Kernel.BACKWARD_SETUP]
    head += [f"    dG{k} = G{k}[1:]" if k in hosted(st, d) else
             f"    dG{k} = {d.Kernel.empty('S0', f'T, B, {len(st.plan.groups[k].bias_rows)} * H')}" for k in st.rec]
    for j, k in enumerate(st.rec):
        head += [f"    w{k} = w[{j}]", *d.Kernel.weight(f"w{k}")]
    for j, i in enumerate(st.lay.xonly):
        head += [f"    xo{j} = xo[{j}]",
                 f"    dxo{j} = {d.Kernel.empty('S0', f'T, B, {len(st.plan.families[i].members)} * H')}"]
    if st.plan.needs_raw_x:
        head.append("    dX = torch.empty_like(X)")
    head += [f"    dC{j} = dfin[{j}].clone(memory_format=torch.contiguous_format)" for j in range(K)]
    head += [f"    dN{j} = S0.new_empty(B, H)" for j in range(K)]
    return head + [f"    dA{i} = S0.new_empty(B, H)" for i, n in enumerate(st.elementwise) if n.name in contrib]


def _backward_tail(st: Stages, d: StageDriver) -> str:
    """dX, dbase (per group: its dG, or summed for a bias vector), dxo, the initial states'
    gradients, and each group's weight gradient as one GEMM over all steps."""
    bases = st.lay.bases()
    dbase = ["None" if bases[j] is None else f"dG{k}.sum((0, 1))" if bases[j] == "bias" else f"dG{k}"
             for j, k in enumerate(st.rec)]
    dw = [f"torch.mm(dG{k}.flatten(0, 1).t(), {d.seq(st.root(st.plan.groups[k].source))}.flatten(0, 1))"
          for k in st.rec]
    dxo = "".join(f"dxo{j}, " for j in range(len(st.lay.xonly)))
    dinit = "".join(f"dC{j}, " for j in range(len(st.spec.state)))
    return (f"    return ({'dX' if st.plan.needs_raw_x else 'None'}, ({''.join(x + ', ' for x in dbase)}), "
            f"({dxo}), ({dinit}), ({''.join(x + ', ' for x in dw)}))")


def generate(plan: Plan, kernel: type[StageKernel]) -> tuple[SeqCode, str]:
    """(the code's description and driver source, the kernels' source) for the kernel class
    `kernel` (nas.compile.backends.triton.TritonKernel, nas.compile.backends.c.codegen.CKernel ...)."""
    st = Stages(plan)
    kernels: list[StageKernel] = []
    fwd = forward_source(st, StageDriver(st, kernel), kernels)
    bwd = backward_source(st, StageDriver(st, kernel), kernels)
    xg = plan.group(INPUT)
    xonly = tuple((plan.offset(xg, i), plan.offset(xg, i) + len(plan.families[i].members))
                  for i in st.lay.xonly)
    code = SeqCode(st.lay.bases(), xonly, plan.needs_raw_x, fwd, bwd)
    return code, "\n\n".join(k.source() for k in kernels)
