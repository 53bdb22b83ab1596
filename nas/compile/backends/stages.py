"""The stages of a time step: which elementwise work one generated kernel does (Triton, C: stage_code).

A step is matrix products (cuBLAS, MKL) and elementwise work between them. The elementwise work that
needs no product still to come is one *stage*, one kernel: stage 0 runs after the products of the
state vectors; a product whose source is a node of stage s runs after stage s, and the nodes that
read it belong to stage s + 1 or later. The LSTM is one stage; darts_v2, nine.

Values are named by their *root* (an identity chain stands for the value it copies):
    "x", a state name, a linear node (its pre-activation: the sum of its family's columns in the
    products G_k, or its columns of the x-only products xo_j), or an elementwise node.
An elementwise node is *kept* (written to memory) when something outside its stage reads it: a
later stage, a product, or the next step (a new state: then it lives in the state's next slot).
The backward recomputes each stage from what the stage read, so nothing else is saved (the C
kernels load some activations instead, kept over the product columns they were computed from:
nas.compile.backends.driver.activations).

The backward walks a step in reverse: stage S-1, the products of batch S-1, stage S-2, ..., stage
0, the state products. Each gradient that crosses a stage boundary has one accumulator; its first
contribution in that order writes it and the others add to it (the `first` flag that
stage_code passes to StageKernel.grad_product), so nothing is zeroed per step.
"""

from __future__ import annotations

from nas.cell.spec import INPUT
from nas.compile.plan import Plan
from nas.compile.sequence.layout import Layout


class Stages:
    def __init__(self, plan: Plan) -> None:
        spec = self.spec = plan.spec
        self.plan, self.lay = plan, Layout(plan)
        self.node = {n.name: n for n in spec.nodes}
        self.state = {s: j for j, s in enumerate(spec.state)}
        self.rec = self.lay.rec
        self.family_of = {m: i for i, f in enumerate(plan.families) for m in f.members}
        self.stage: dict[str, int] = {INPUT: 0, **dict.fromkeys(spec.state, 0)}
        self.batch: dict[int, int] = {}
        for n in spec.nodes:
            if n.op == "identity":
                continue
            if n.op == "linear":
                groups = self.lay.fam_groups[self.family_of[n.name]]
                self.stage[n.name] = max((self._batch(k) for k in groups), default=0)
            else:
                self.stage[n.name] = max(self.stage[self.root(i)] for i in n.inputs)
        self.count = 1 + max(self.stage.values())
        self.outputs = [self.root(o) for o in spec.outputs]
        self.elementwise = [n for n in spec.nodes if n.op not in ("linear", "identity")]
        self.sources = {self.root(self.plan.groups[k].source) for k in self.rec}
        # Per stage its nodes, per value the stages of the nodes that read it: looked up, not
        # searched for per node and stage, which was quadratic in the nodes.
        self._by_stage: dict[int, list] = {}
        self._read_in: dict[str, set[int]] = {}
        for n in self.elementwise:
            self._by_stage.setdefault(self.stage[n.name], []).append(n)
            for i in n.inputs:
                self._read_in.setdefault(self.root(i), set()).add(self.stage[n.name])
        self.kept = {n.name for n in self.elementwise if self._read_outside(n.name)}
        # A linear value a product reads, summed over several groups, is written once to a buffer.
        self.materialized = [v for v in sorted(self.sources) if self.kind(v) == "linear"
                             and len(self.columns(v)) > 1]

    def root(self, v: str) -> str:
        while v in self.node and self.node[v].op == "identity":
            v = self.node[v].inputs[0]
        return v

    def _batch(self, k: int) -> int:
        """After which stage the product of recurrent group k runs (0: before stage 0)."""
        if k not in self.batch:
            src = self.root(self.plan.groups[k].source)
            self.batch[k] = 0 if src in self.state else self.stage[src] + 1
        return self.batch[k]

    def kind(self, v: str) -> str:
        if v == INPUT:
            return "x"
        if v in self.state:
            return "state"
        return "linear" if self.node[v].op == "linear" else "node"

    def _read_outside(self, v: str) -> bool:
        if v in self.sources or v in self.outputs:
            return True
        return any(s != self.stage[v] for s in self._read_in.get(v, ()))

    def columns(self, v: str) -> list[tuple[str, int]]:
        """A linear value's columns (buffer, column in units of H), the first is its gradient's home."""
        i = self.family_of[v]
        pos = self.plan.families[i].members.index(v)
        groups = self.lay.fam_groups[i]
        if not groups:
            return [(f"xo{self.lay.xonly.index(i)}", pos)]
        return [(f"G{k}", self.plan.offset(self.plan.groups[k], i) + pos) for k in groups]

    def nodes(self, s: int) -> list:
        return list(self._by_stage.get(s, ()))

    def exports(self, s: int) -> list[tuple[str, int]]:
        """(value, k): values not computed in stage s that stage s writes to state k's next slot."""
        return [(v, k) for k, v in enumerate(self.outputs)
                if self.kind(v) != "node" and self.stage[v] == s]

    def groups_in_batch(self, b: int) -> list[int]:
        return [k for k in self.rec if self._batch(k) == b]

    def events(self) -> list[tuple[str, int]]:
        """The backward's order within a step."""
        return [e for s in reversed(range(self.count)) for e in (("stage", s), ("gemm", s))]

    def stage_reads(self, s: int) -> list[str]:
        """External values stage s reads (operands from outside it, exports, materializations)."""
        out: list[str] = []
        inside = {n.name for n in self.nodes(s)}
        for n in self.nodes(s):
            for i in n.inputs:
                r = self.root(i)
                if r not in inside and r not in out:
                    out.append(r)
        extra = [v for v, _ in self.exports(s)] + [v for v in self.materialized if self.stage[v] == s]
        return out + [v for v in extra if v not in out]

    def contributors(self) -> dict[str, list[tuple[str, int]]]:
        """Per value whose gradient crosses a boundary: the events that add to it, in order."""
        contrib: dict[str, list[tuple[str, int]]] = {}
        for event in self.events():
            kind, s = event
            if kind == "stage":
                targets = [v for v in self.stage_reads(s) if self._gets_grad_in(v, s)]
            else:
                targets = [self.root(self.plan.groups[k].source) for k in self.groups_in_batch(s)]
            for v in targets:
                contrib.setdefault(v, []).append(event)
        return contrib

    def _gets_grad_in(self, v: str, s: int) -> bool:
        """Stage s sends a gradient to external value v (it reads it as an operand or exports it);
        a materialization alone (a copy to a buffer for a product) sends none."""
        read = any(self.root(i) == v for n in self.nodes(s) for i in n.inputs)
        return read or any(u == v for u, _ in self.exports(s))
