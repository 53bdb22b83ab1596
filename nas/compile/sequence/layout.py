"""Where each value of a time step lives in the whole-sequence code (nas.compile.sequence.forward).

The analysis that the generated forward and backward share, from a Plan, without torch:

- a *recurrent group* (every plan group but x's) writes its product, each step, into its buffer G<k>;
- a family's pre-activations (its *slab*) are columns of its one recurrent group's buffer, or of
  F<i> (the sum of its groups' columns, when it reads several), or of the input xo<j> (the x
  products of a family that reads only x);
- a *run*: consecutive members of a family, each read only by one activation of the same kind
  whose gradient needs only its output (fast_ops.Kernel.inplace), are activated in place;
- an elementwise node lives in its state's next slot S<k>[t + 1] when it is a new state, in a
  buffer V<n> when the backward reads it, or in a temporary;
- the backward reads only saved values: operands and outputs named by the gradients, and the
  sources of recurrent groups (for the weight-gradient GEMMs).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from itertools import pairwise

from nas.cell.ops import OPERANDS, OPS
from nas.cell.spec import INPUT, Node
from nas.compile.plan import Plan
from nas.compile.sequence.fast_ops import KERNELS, Term


@dataclass(frozen=True)
class Run:
    """Members of a family at evenly spaced positions, each read only by one in-place activation
    of one kind: one call activates them all (the LSTM's i, f: positions 0, 1; the NAS cell's four
    sigmoids: 0, 2, 4, 6, a strided (B, 4, H) view)."""

    family: int
    first: int                    # position of its first member in the family
    step: int                     # distance between its members' positions (1: adjacent columns)
    members: tuple[str, ...]
    acts: tuple[str, ...]         # the activation node reading each member

    @property
    def contiguous(self) -> bool:
        return self.step == 1 or len(self.members) == 1


@dataclass
class Emitter:
    """The loop body of one generated function, and the per-step view lists it uses (made once,
    before the loop, so that a step's view costs a list lookup)."""

    lists: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    def use(self, name: str, expr: str) -> str:
        self.lists.setdefault(name, expr)
        return name

    def __call__(self, line: str) -> None:
        self.lines.append(f"        {line}")


def template_fields(*templates: str) -> set[str]:
    return {f for t in templates for _, f, _, _ in string.Formatter().parse(t) if f}


def term_fields(terms: tuple[Term, ...]) -> set[str]:
    return template_fields(*(v for t in terms for v in vars(t).values() if isinstance(v, str)))


class Layout:
    """Storage of every value of one step of `plan`, and the names the generated code uses."""

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
        self.width = {f"G{k}": len(plan.groups[k].bias_rows) for k in self.rec}
        self.width.update({f"F{i}": len(plan.families[i].members)
                           for i, gs in enumerate(self.fam_groups) if len(gs) > 1})
        self.width.update({f"xo{j}": len(plan.families[i].members) for j, i in enumerate(self.xonly)})
        # A group whose one row is a state's new value writes it straight into the state's slot.
        self.into_state = {k: spec.outputs.index(g.bias_rows[0][0]) for k in self.rec
                           for g in [plan.groups[k]] if len(g.bias_rows) == 1
                           and g.bias_rows[0][0] in spec.outputs
                           and len(self.fam_groups[self.family_of[g.bias_rows[0][0]]]) == 1}
        self.runs = [r for i in range(len(plan.families)) for r in self._runs(i)]
        self.run_of = {u: r for r in self.runs for u in r.acts}
        self.needed = self._needed()
        self.where = self._storage()
        self.buffers = [f"S{k}" for k in range(len(spec.state))]
        self.buffers += [f"G{k}" for k in self.rec if k not in self.into_state]
        self.buffers += [b for b in self.width if b.startswith("F")]
        self.buffers += [w[1] for w in self.where.values() if w[0] == "buf"]
        self.hosts = self._hosts()
        self._bases: tuple | None = None

    # -- analysis ------------------------------------------------------------------------------
    def _hosts(self) -> dict[str, str]:
        """Forward buffers that also hold a gradient buffer of the backward, one row behind (host
        -> dG<k> or dxo<j>): the forward gives the host T + 1 rows, and backward step t writes the
        gradient's row t into the host's row t + 1, which only step t + 1 (already done) read. So
        the backward allocates fewer (T, B, .) buffers: it writes into memory that is already
        mapped and cached. G<k> holds dG<k>; a dxo<j> goes to a buffer of its width, if one is
        left. Not a buffer whose columns hold the source of a product: the weight-gradient GEMMs
        read the sources after the loop. (A second backward through a retained graph then fails
        autograd's check of the saved tensors' versions, as after any in-place change.)"""
        sources = {self.where[v][1] for v in (self.root(self.plan.groups[k].source) for k in self.rec)
                   if v in self.where and self.where[v][0] in ("col", "buf")}
        hosts = {f"G{k}": f"dG{k}" for k in self.rec if k not in self.into_state and f"G{k}" not in sources}
        free = [b for b in self.buffers if b[0] in "FV" and b not in sources]
        for j in range(len(self.xonly)):
            b = next((b for b in free if self.width.get(b, 1) == self.width[f"xo{j}"]), None)
            if b is not None:
                free.remove(b)
                hosts[b] = f"dxo{j}"
        return hosts

    def saved(self, b: str) -> str:
        """The name under which buffer b is saved: a host's whole T + 1 rows."""
        return f"{b}x" if b in self.hosts else b

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

    def grad_slab(self, i: int) -> tuple[str, int]:
        """(buffer, first column) where family i's gradient goes: its first recurrent group's dG
        (copied to the others' afterwards), or dxo for a family that reads only x."""
        gs = self.fam_groups[i]
        if not gs:
            return f"dxo{self.xonly.index(i)}", 0
        return f"dG{gs[0]}", self.plan.offset(self.plan.groups[gs[0]], i)

    def inplace_key(self, member: str) -> tuple | None:
        """(op, options) of the one activation reading `member`, if it may overwrite it; not for
        an activation that is a new state (it is written into the state's slot instead)."""
        users = self.consumers[member]
        if len(users) != 1 or users[0] is None or users[0] in self.spec.outputs:
            return None
        act = self.node[users[0]]
        kernel = KERNELS.get(act.op)
        return (act.op, act.options) if kernel and kernel.inplace else None

    def _runs(self, i: int) -> list[Run]:
        """Family i's members grouped by activation kind; each kind's positions are one run if
        evenly spaced, else runs of adjacent positions."""
        if not self.slab(i)[2]:
            return []  # the slab is an input: never written in place
        by_key: dict[tuple, list[tuple[int, str]]] = {}
        for j, m in enumerate(self.plan.families[i].members):
            key = self.inplace_key(m)
            if key is not None:
                by_key.setdefault(key, []).append((j, m))
        runs = []
        for found in by_key.values():
            steps = {b[0] - a[0] for a, b in pairwise(found)}
            if len(steps) <= 1:
                parts = [found]
            else:  # split where positions are not adjacent
                parts, cur = [], [found[0]]
                for a, b in pairwise(found):
                    if b[0] != a[0] + 1:
                        parts.append(cur)
                        cur = []
                    cur.append(b)
                parts.append(cur)
            for part in parts:
                step = part[1][0] - part[0][0] if len(part) > 1 else 1
                members = tuple(m for _, m in part)
                runs.append(Run(i, part[0][0], step, members,
                                tuple(self.consumers[m][0] for m in members)))
        return sorted(runs, key=lambda r: r.first)

    def run_view(self, e: Emitter, buf: str, off: int, run: Run) -> str:
        """Per-step views of a run's columns in `buf` (its family starting at column `off`): (B, n*H)
        for adjacent members, (B, n, H) strided for evenly spaced ones."""
        lo = off + run.first
        if run.contiguous:
            return self.cols(e, buf, lo, lo + len(run.members))
        hi = lo + run.step * (len(run.members) - 1) + 1
        return e.use(f"{buf.lower()}_{lo}_{hi}_{run.step}", f"_strided({buf}, T, H, {lo}, {hi}, {run.step})")

    def grads_of(self, node: Node) -> list[tuple[Term, ...]] | list[str]:
        """Per operand: the kernel's gradient terms, or the registry's template."""
        kernel = KERNELS.get(node.op)
        grads = kernel.grads if kernel else OPS[node.op].grad
        return [grads[min(j, len(grads) - 1)] for j in range(len(node.inputs))]

    def _needed(self) -> set[str]:
        """Values the backward reads: what the gradients name, and the recurrent groups' sources."""
        need = {self.root(self.plan.groups[k].source) for k in self.rec}
        for n in self.spec.nodes:
            if n.op in ("linear", "identity") or n.name in self.run_of:
                continue
            kernel = KERNELS.get(n.op)
            names = template_fields(kernel.shared) if kernel and kernel.shared else set()
            for g in self.grads_of(n):
                names |= template_fields(g) if isinstance(g, str) else term_fields(g)
            need |= {n.name} if "y" in names else set()
            need |= {self.root(n.inputs[OPERANDS.index(f)]) for f in names if f in OPERANDS}
        return need

    def _storage(self) -> dict[str, tuple]:
        """node -> ("col", buffer, lo, hi) | ("next", k) | ("buf", V<n>) | ("temp", name) | ("alias", v)
        | ("fused", the add that computes it)."""
        where: dict[str, tuple] = {}
        into = {self.plan.groups[k].bias_rows[0][0]: j for k, j in self.into_state.items()}
        for n in self.spec.nodes:
            if n.name in into:
                where[n.name] = ("next", into[n.name])
            elif n.op == "linear" or n.name in self.run_of:
                run = self.run_of.get(n.name)
                m = n.name if run is None else run.members[run.acts.index(n.name)]
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
        # add(u, mul(p, q)) is one addcmul when nothing else reads the product (its gradient reads
        # only p and q): the product is then never stored.
        for n in self.spec.nodes:
            if n.op == "add":
                for v in n.inputs:
                    if self.node.get(v) and self.node[v].op == "mul" and self.consumers[v] == [n.name] \
                            and where[v][0] == "temp":
                        where[v] = ("fused", n.name)
        return where

    # -- names in the generated code -----------------------------------------------------------
    def cols(self, e: Emitter, buf: str, lo: int | None = None, hi: int | None = None) -> str:
        """Per-step view list of columns lo*H:hi*H of the (T, B, .) buffer `buf` (all if None)."""
        width = self.width.get(buf.removeprefix("d"), 1)
        if lo is None or (lo == 0 and hi == width):
            return e.use(f"{buf.lower()}_", f"_steps({buf}, T)")
        return e.use(f"{buf.lower()}_{lo}_{hi}", f"_steps({buf}, T, {lo} * H, {hi} * H)")

    def slot(self, e: Emitter, k: int, ahead: int = 0) -> str:
        """State k's value before step t (ahead=0) or after it (ahead=1)."""
        return f"{e.use(f's{k}_', f'_hist(S{k}, T)')}[t{' + 1' if ahead else ''}]"

    def val(self, e: Emitter, v: str, saved_only: bool = False) -> str:
        """Value v at step t. saved_only (the backward): a forward temporary renders as a marker
        that `nas.compile.sequence.forward.generate` rejects, so a gradient can never read a value that was not saved."""
        if v == INPUT:
            return f"{e.use('x_', 'X.unbind(0)')}[t]"
        if v in self.state:
            return self.slot(e, self.state[v])
        kind = self.where[v]
        if kind[0] == "alias":
            return self.val(e, kind[1], saved_only)
        if kind[0] == "next":
            return self.slot(e, kind[1], 1)
        if kind[0] in ("col", "buf"):
            return f"{self.cols(e, *kind[1:])}[t]"
        if saved_only or kind[0] == "fused":
            return f"<unsaved {v}>"
        return kind[1]

    def seq(self, v: str) -> str:
        """Value v over all steps, a (T, B, H) tensor (for the weight-gradient GEMMs)."""
        if v == INPUT:  # a product of identity(x)
            return "X"
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

    def bases(self) -> tuple:
        """Per recurrent group, what its product is added to (see nas.compile.sequence.forward.SeqCode.bases)."""
        # Once per layout: the generators ask for it per product, which made it quadratic.
        if self._bases is None:
            self._bases = self._make_bases()
        return self._bases

    def _make_bases(self) -> tuple:
        plan, xg = self.plan, self.plan.group(INPUT)
        absorbed = {i: gs[0] for i, gs in enumerate(self.fam_groups)
                    if gs and INPUT in plan.families[i].sources}
        out: list = []
        for k in self.rec:
            g = plan.groups[k]
            pieces: list[list] = []
            for i in g.families:
                n = len(plan.families[i].members)
                lo = plan.offset(xg, i) if absorbed.get(i) == k else plan.offset(g, i)
                piece = ["x" if absorbed.get(i) == k else "b", lo, lo + n]
                if pieces and pieces[-1][0] == piece[0] and pieces[-1][2] == piece[1]:
                    pieces[-1][2] = piece[2]
                else:
                    pieces.append(piece)
            if any(p[0] == "x" for p in pieces):
                out.append(tuple(tuple(p) for p in pieces))
            else:
                out.append("bias" if any(adds for _, adds in g.bias_rows) else None)
        return tuple(out)
