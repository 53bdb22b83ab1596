"""The stage driver: the Python (or C) code around the stage kernels, shared by every kernel backend.

A step's elementwise work is cut into stages (nas.compile.backends.stages); each stage becomes one
generated kernel. `StageKernel` is the neutral base of a kernel in some language (Triton on a GPU,
C on the CPU) and holds the driver's default hooks; `StageDriver` names the per-step views each
kernel reads and writes. nas.compile.backends.stage_code writes the forward and backward drivers
from both.
"""

from __future__ import annotations

from typing import ClassVar

from nas.compile.backends.stages import Stages
from nas.compile.plan import Plan


def supported(plan: Plan, kernel: type[StageKernel]) -> bool:
    """Every elementwise op of the plan has a form in the kernel language of `kernel`."""
    return all(n.op == "linear" or n.op in kernel.OPS for n in plan.spec.nodes)


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


class StageKernel:
    """One generated kernel over the B * H elements of a step: its pointer arguments (per-step views
    named by the driver) and its body, in the language of a subclass (nas.compile.backends.triton's
    TritonKernel, nas.compile.backends.c.codegen's CKernel), which writes `assign`, `load`,
    `store`, `source` and `launch`.

    The static methods are the driver's hooks: the lines of Python (or, for the C time loop, of C)
    around the kernels. Here, a Python loop over the steps with torch's products; a kernel class
    overrides the ones its driver does otherwise."""

    OPS: ClassVar[dict[str, tuple[str, tuple[str, ...]]]] = {}  # the ops' templates in this kernel language
    HOSTS = False  # the backward writes dG into G (see stage_code.hosted): not under CUDA graphs
    ACTIVATIONS = False  # the forward keeps activations in G (see `activations`)
    # The driver's lines before the loop (forward and backward; backward only).
    SETUP: tuple[str, ...] = ()
    BACKWARD_SETUP: tuple[str, ...] = ()

    def __init__(self, name: str) -> None:
        self.name, self.views, self.body = name, [], []

    def _ptr(self, view: str) -> int:
        if view not in self.views:
            self.views.append(view)
        return self.views.index(view)

    def assign(self, var: str, expr: str) -> None:
        """Append `var = expr` to the body."""
        raise NotImplementedError

    def load(self, views: list[str], var: str) -> str:
        """Append `var = sum of the views' elements`; returns var."""
        raise NotImplementedError

    def store(self, view: str, value: str) -> None:
        raise NotImplementedError

    def source(self) -> str:
        """The kernel's source text."""
        raise NotImplementedError

    def launch(self, d: StageDriver) -> str:
        """The driver's line calling the kernel at step t."""
        raise NotImplementedError

    @staticmethod
    def lists(d: StageDriver) -> list[str]:
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
    def product(d: StageDriver, src: str, wt: str, out: str, base: str | None) -> list[str]:
        """out = base + src @ wt (base: None, a bias vector or a per-step view)."""
        if base is None:
            return [f"torch.mm({src}, {wt}, out={out})"]
        return [f"torch.addmm({base}, {src}, {wt}, out={out})"]

    @staticmethod
    def grad_product(d: StageDriver, dg: str, w: str, target: str, first: bool) -> list[str]:
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
    def copy(d: StageDriver, dst: str, src: str) -> list[str]:
        return [f"{dst}.copy_({src})"]

    @staticmethod
    def swap(d: StageDriver, a: str, b: str) -> list[str]:
        return [f"{a}, {b} = {b}, {a}"]

    @staticmethod
    def zero(d: StageDriver, a: str) -> list[str]:
        """Accumulator a is the zero matrix Z from here on."""
        return [f"{a} = Z"]

    @staticmethod
    def loop(d: StageDriver, body: list[str], kernels: list, reverse: bool) -> list[str]:
        """The driver's lines running `body` for t = 0 .. T - 1 (reverse: T - 1 .. 0)."""
        steps = "range(T - 1, -1, -1)" if reverse else "range(T)"
        return [f"    for t in {steps}:"] + [f"        {x}" for x in body]

    @staticmethod
    def head(d: StageDriver) -> list[str]:
        """The driver's lines, once per call, for the per-step view lists."""
        return [f"    {n} = {e}" for n, e in d.lists.items()] + \
               [f"    st_{n} = {d.Kernel.strides(f'{n}[0]')}" for n in d.lists] + d.Kernel.lists(d)


class StageDriver:
    """Where the generated code of a step finds each value and gradient: the names of per-step view
    lists (built once before the loop), of their strides and data pointers, for a kernel class."""

    def __init__(self, st: Stages, kernel: type[StageKernel]) -> None:
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

