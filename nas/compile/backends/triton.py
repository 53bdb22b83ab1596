"""Whole-sequence code for the GPU: per step, cuBLAS products and one fused Triton kernel per stage.

The CPU code of nas.compile.sequence.forward makes one torch call per elementwise op; on a GPU each call is a
kernel launch of a few microseconds over a tiny (B, H) tensor, and an LSTM step costs twenty of
them where cuDNN runs two. Here each stage of a step (nas.compile.backends.stages) is one generated Triton
kernel: it loads what the stage reads, computes its nodes in float32 registers, and stores what
leaves the stage. Its backward kernel recomputes the stage from the same loads and writes the
gradients that leave it; the products and their gradients stay cuBLAS calls. The functions keep
seqgen's signatures and input conventions (SeqCode.bases, xonly, raw_x), so nas.compile.sequence.function and
nas.compile.backends.cudagraphs run both alike.

Generated names: buffers S<j> (state histories), G<k> (products), V<i> (kept values), dG<k>,
dxo<j>, dX; per-step accumulators dC<j> (the carried state gradients), dN<j> (the next carry),
dA<i>; kernels _f<s> / _b<s>. Nothing is taken from the spec.
"""

from __future__ import annotations

from nas.cell.ops import render
from nas.cell.spec import INPUT
from nas.compile.backends.stages import Stages
from nas.compile.backends.triton_ops import TRITON
from nas.compile.plan import Plan
from nas.compile.sequence.forward import SeqCode, state_buffers

BLOCK = 256


def supported(plan: Plan, ops: dict = TRITON) -> bool:
    """Every elementwise op of the plan has a form in `ops` (a kernel language's templates)."""
    return all(n.op == "linear" or n.op in ops for n in plan.spec.nodes)


class TritonKernel:
    """One Triton kernel over the B * H elements of a step: its pointer arguments (per-step views
    named by the driver) and its body. (nas.compile.backends.c.codegen's CKernel is the same for C on the CPU.)"""

    OPS = TRITON  # the ops' templates in this kernel language
    HOSTS = False  # the backward writes dG into G (see `hosted`): not under CUDA graphs
    ACTIVATIONS = False  # the forward keeps activations in G (see `activations`)
    # The driver's lines before the loop (forward and backward; backward only).
    SETUP: tuple[str, ...] = ("    N, grid = B * H, (triton.cdiv(B * H, BLOCK),)",)
    BACKWARD_SETUP: tuple[str, ...] = ()

    def __init__(self, name: str) -> None:
        self.name, self.views, self.body = name, [], []

    def _ptr(self, view: str) -> int:
        if view not in self.views:
            self.views.append(view)
        return self.views.index(view)

    def assign(self, var: str, expr: str) -> None:
        self.body.append(f"{var} = {expr}")

    def load(self, views: list[str], var: str) -> str:
        parts = []
        for v in views:
            i = self._ptr(v)
            parts.append(f"tl.load(p{i} + r * r{i} + c * c{i}, mask=m).to(tl.float32)")
        self.assign(var, " + ".join(parts))
        return var

    def store(self, view: str, value: str) -> None:
        i = self._ptr(view)
        self.body.append(f"tl.store(p{i} + r * r{i} + c * c{i}, {value}, mask=m)")

    def source(self) -> str:
        params = "".join(f"p{i}, r{i}, c{i}, " for i in range(len(self.views)))
        head = [f"@triton.jit\ndef {self.name}(N, H, {params}BLOCK: tl.constexpr):",
                "    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)",
                "    m = o < N", "    r = o // H", "    c = o - r * H"]
        return "\n".join(head + [f"    {line}" for line in self.body]) + "\n"

    def launch(self, d: _Driver) -> str:
        args = "".join(f"{v}, *{d.strides[v]}, " for v in self.views)
        return f"{self.name}[grid](N, H, {args}BLOCK={BLOCK})"

    @staticmethod
    def lists(d: _Driver) -> list[str]:
        """The driver's lines, once per call, for the per-step view lists: nothing more here."""
        return []

    @staticmethod
    def strides(view: str) -> str:
        """An expression for the (row, column) strides of a (B, H) view."""
        return f"{view}.stride()"

    @staticmethod
    def empty(like: str, shape: str) -> str:
        """An expression allocating a large buffer of `shape` (a tuple's text) like tensor `like`."""
        return f"{like}.new_empty({shape})"

    # The products of a step (torch's here; nas.compile.backends.c.codegen.PackedCKernel calls MKL's packed GEMM).
    @staticmethod
    def weight(name: str) -> list[str]:
        """The driver's lines, once per call, preparing weight `name` for the products."""
        return []

    @staticmethod
    def product(d: _Driver, src: str, wt: str, out: str, base: str | None) -> list[str]:
        """out = base + src @ wt (base: None, a bias vector or a per-step view)."""
        if base is None:
            return [f"torch.mm({src}, {wt}, out={out})"]
        return [f"torch.addmm({base}, {src}, {wt}, out={out})"]

    @staticmethod
    def grad_product(d: _Driver, dg: str, w: str, target: str, first: bool) -> list[str]:
        """target (+)= dg @ w: the first contribution writes, the others add."""
        return [f"{target}.addmm_({dg}, {w}{', beta=0' if first else ''})"]

    # The time loop (nas.compile.backends.c.loop.LoopCKernel runs it in C: these are its statements there).
    @staticmethod
    def pointer(name: str, index: str) -> tuple[str, str]:
        """(data pointer, row stride) expressions of element `index` of view list `name`."""
        return f"pp_{name}{index}", f"st_{name}[0]"

    @staticmethod
    def plain_pointer(name: str) -> tuple[str, str]:
        """(data pointer, row stride) expressions of the contiguous (B, H) accumulator `name`."""
        return f"{name}.data_ptr()", "H"

    @staticmethod
    def copy(d: _Driver, dst: str, src: str) -> list[str]:
        return [f"{dst}.copy_({src})"]

    @staticmethod
    def swap(d: _Driver, a: str, b: str) -> list[str]:
        return [f"{a}, {b} = {b}, {a}"]

    @staticmethod
    def zero(d: _Driver, a: str) -> list[str]:
        """Accumulator a is the zero matrix Z from here on."""
        return [f"{a} = Z"]

    @staticmethod
    def loop(d: _Driver, body: list[str], kernels: list, reverse: bool) -> list[str]:
        """The driver's lines running `body` for t = 0 .. T - 1 (reverse: T - 1 .. 0)."""
        steps = "range(T - 1, -1, -1)" if reverse else "range(T)"
        return [f"    for t in {steps}:"] + [f"        {x}" for x in body]

    @staticmethod
    def head(d: _Driver) -> list[str]:
        """The driver's lines, once per call, for the per-step view lists."""
        return [f"    {n} = {e}" for n, e in d.lists.items()] + \
               [f"    st_{n} = {d.Kernel.strides(f'{n}[0]')}" for n in d.lists] + d.Kernel.lists(d)


class _Driver:
    """Names of per-step view lists (built once before the loop) and of their strides."""

    def __init__(self, st: Stages, kernel: type = TritonKernel) -> None:
        self.st, self.Kernel, self.lists, self.strides = st, kernel, {}, {}
        self.plains: dict[str, None] = {}  # the (B, H) accumulators, in order of first use
        self.extra: dict[str, object] = {}  # what a kernel class notes while generating (nas.compile.backends.c.loop)
        self.activations = activations(st, kernel)  # node -> the linear value whose column keeps it
        # Per view: its data pointer and row stride (for kernels that take raw pointers: C).
        self.pointers: dict[str, tuple[str, str]] = {}
        self.vbuf = {v: f"V{i}" for i, v in enumerate(sorted(st.kept - set(st.outputs)) + st.materialized)}

    def view(self, name: str, expr: str, index: str = "[t]") -> str:
        """`name[t]` of the list `expr`, whose elements all share one stride."""
        self.lists.setdefault(name, expr)
        self.strides[f"{name}{index}"] = f"st_{name}"
        self.pointers[f"{name}{index}"] = self.Kernel.pointer(name, index)
        return f"{name}{index}"

    def plain(self, name: str) -> str:
        self.strides[name] = "(H, 1)"  # a contiguous (B, H) accumulator
        self.pointers[name] = self.Kernel.plain_pointer(name)
        self.plains.setdefault(name)
        return name

    def cols(self, buf: str, c: int, grad: bool = False) -> str:
        b = f"d{buf}" if grad else buf
        return self.view(f"{b.lower()}_{c}", f"_steps({b}, T, {c} * H, {c + 1} * H)")

    def next_state(self, k: int) -> str:
        return self.view(f"s{k}_", f"_hist(S{k}, T)", "[t + 1]")

    def home(self, v: str) -> str:
        """Where value v is stored at step t (a single view)."""
        st = self.st
        kind = st.kind(v)
        if kind == "x":
            return self.view("x_", "X.unbind(0)")
        if kind == "state":
            j = st.state[v]
            return self.view(f"s{j}_", f"_hist(S{j}, T)")
        if v in st.outputs:
            return self.next_state(st.outputs.index(v))
        if v in self.vbuf:
            return self.view(self.vbuf[v].lower() + "_", f"_steps({self.vbuf[v]}, T)")
        return self.cols(*st.columns(v)[0])

    def reads(self, v: str) -> list[str]:
        """Views whose sum is value v (a linear value: all its family's columns)."""
        if self.st.kind(v) == "linear":
            return [self.cols(b, c) for b, c in self.st.columns(v)]
        return [self.home(v)]

    def grad(self, v: str) -> str:
        """Where the gradient of value v accumulates at step t."""
        st = self.st
        kind = st.kind(v)
        if kind == "x":
            return self.view("dx_", "dX.unbind(0)")
        if kind == "state":
            return self.plain(f"dN{st.state[v]}")
        if kind == "linear":
            return self.cols(*st.columns(v)[0], grad=True)
        return self.plain(f"dA{st.elementwise.index(st.node[v])}")

    def secondaries(self, v: str) -> list[str]:
        return [self.cols(b, c, grad=True) for b, c in self.st.columns(v)[1:]] \
            if self.st.kind(v) == "linear" else []

    def seq(self, v: str) -> str:
        """Value v over all steps, (T, B, H), for the weight gradients."""
        st = self.st
        if st.kind(v) == "x":  # a product of identity(x)
            return "X"
        if st.kind(v) == "state":
            return f"S{st.state[v]}[:T]"
        if v in st.outputs:
            return f"S{st.outputs.index(v)}[1:]"
        if v in self.vbuf:
            return self.vbuf[v]
        buf, c = st.columns(v)[0]
        return f"{buf}[:, :, {c} * H:{c + 1} * H]"

    def head(self) -> list[str]:
        return self.Kernel.head(self)


def _upstream(d: _Driver, k_outputs: list[int], kern: TritonKernel, var: str) -> list[str]:
    """Loads of the gradients a value gets as the new state(s) k: the carry, and dout for h."""
    terms = []
    for k in k_outputs:
        terms.append(kern.load([d.plain(f"dC{k}")], f"{var}c{k}"))
        if k == 0:
            terms.append(kern.load([d.view("do_", "dout.unbind(0)")], f"{var}o"))
    return terms


def activations(st: Stages, kernel: type) -> dict[str, str]:
    """node -> the linear value whose G column the forward overwrites with the node's value, for
    kernels that ask for it (ACTIVATIONS): where the node is the value's only reader (no other node,
    product or output), a unary op whose gradient needs only its output (sigmoid, tanh, relu), and
    the value one column of one G. The backward then loads the node's value instead of recomputing
    it: an LSTM's backward kernel computes one exp-based op instead of five."""
    if not kernel.ACTIVATIONS:
        return {}
    readers: dict[str, int] = {}
    for m in st.spec.nodes:
        if m.op != "identity":
            for r in {st.root(i) for i in m.inputs}:
                readers[r] = readers.get(r, 0) + 1
    out = {}
    for n in st.elementwise:
        if len(n.inputs) != 1 or n.op not in kernel.OPS or any("{a}" in g for g in kernel.OPS[n.op][1]):
            continue
        u = st.root(n.inputs[0])
        if st.kind(u) != "linear" or u in st.sources or u in st.outputs or readers.get(u) != 1:
            continue
        columns = st.columns(u)
        if len(columns) == 1 and columns[0][0].startswith("G"):
            out[n.name] = u
    return out


def _compute(st: Stages, d: _Driver, s: int, kern: TritonKernel, backward: bool = False) -> dict[str, str]:
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


def forward_kernel(st: Stages, d: _Driver, s: int) -> TritonKernel | None:
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


def backward_kernel(st: Stages, d: _Driver, s: int, contrib: dict) -> TritonKernel | None:
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


def _gemm_source(st: Stages, d: _Driver, k: int) -> str:
    return d.home(st.root(st.plan.groups[k].source))


def forward_source(st: Stages, d: _Driver, kernels: list[TritonKernel]) -> str:
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


def hosted(st: Stages, d: _Driver) -> list[int]:
    """The groups whose gradients dG the backward writes into their forward buffer G, one row
    behind (G has T + 1 rows; dG_t is row t + 1, G_{t+1}'s, which step t + 1's backward no longer
    needs): for kernels that ask for it (HOSTS), and unless a product's source lives in G (its
    weight gradient reads it after the loop)."""
    if not d.Kernel.HOSTS:
        return []
    in_g = {d.st.columns(v)[0][0] for k in st.rec
            if d.st.kind(v := st.root(st.plan.groups[k].source)) == "linear" and v not in d.vbuf}
    return [k for k in st.rec if f"G{k}" not in in_g]


def _saved(st: Stages, d: _Driver) -> str:
    names = [f"S{j}" for j in range(len(st.spec.state))] + [f"G{k}" for k in st.rec] + list(d.vbuf.values())
    return "".join(f"{n}, " for n in names)


def backward_source(st: Stages, d: _Driver, kernels: list[TritonKernel]) -> str:
    contrib = st.contributors()
    body = d.Kernel.loop(d, _backward_loop(st, d, kernels, contrib), kernels, True)
    return "\n".join(_backward_head(st, d, contrib) + d.head() + body + [_backward_tail(st, d)]) + "\n"


def _backward_loop(st: Stages, d: _Driver, kernels: list[TritonKernel], contrib: dict) -> list[str]:
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


def _backward_head(st: Stages, d: _Driver, contrib: dict) -> list[str]:
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


def _backward_tail(st: Stages, d: _Driver) -> str:
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


def generate(plan: Plan, kernel: type = TritonKernel) -> tuple[SeqCode, str]:
    """(the code's description and driver source, the kernels' source): Triton kernels, or
    those of another kernel class with TritonKernel's interface (nas.compile.backends.c.codegen.CKernel: C)."""
    st = Stages(plan)
    kernels: list[TritonKernel] = []
    fwd = forward_source(st, _Driver(st, kernel), kernels)
    bwd = backward_source(st, _Driver(st, kernel), kernels)
    xg = plan.group(INPUT)
    xonly = tuple((plan.offset(xg, i), plan.offset(xg, i) + len(plan.families[i].members))
                  for i in st.lay.xonly)
    code = SeqCode(st.lay.bases(), xonly, plan.needs_raw_x, fwd, bwd)
    return code, "\n\n".join(k.source() for k in kernels)
