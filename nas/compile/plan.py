"""Lowering a CellSpec to a step plan: matmul groups, linear families and straight-line step code.

This is the part of the compiler that knows no torch tensors, only names. The plan groups the
`linear` terms so that the recurrence does as few, as large matrix products as possible:

- a *group* is one matrix product per source: all linear terms that read `x` (computed for the
  whole sequence before the time loop), all that read state vector j (one product per step), all
  that read intermediate node m (one product per step, right after m);
- a *family* is the set of linear nodes that read exactly the same sources (the LSTM's four gates
  form one family over (x, h)); a family occupies the same contiguous rows in each of its
  sources' groups, so its pre-activations are one add per extra source over the whole slab,
  then one `split` into the family's nodes;
- each linear's bias is added once, by the first group (x, then states, then nodes) it reads.

`step_source` is the generated Python of one time step, a function
`step(xw, x, s_1..s_K, W_1, b_1, ...)` returning the new state tuple. Variable names are generated
(`v3`, `s0`, `g1`), never taken from the spec, so a spec cannot inject code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from nas.cell.ops import OPS, render
from nas.cell.spec import INPUT, CellSpec


@dataclass(frozen=True)
class Family:
    sources: tuple[str, ...]   # in group order: x first, then states, then nodes in topo order
    members: tuple[str, ...]   # linear node names, in row order


@dataclass(frozen=True)
class Group:
    source: str                          # "x", a state name or a node name
    families: tuple[int, ...]            # indices into Plan.families, in row order
    bias_rows: tuple[tuple[str, bool], ...]  # (linear name, does this group add its bias) per row block


@dataclass(frozen=True)
class Plan:
    spec: CellSpec
    families: tuple[Family, ...]
    groups: tuple[Group, ...]            # groups[0].source == "x" when any linear reads x
    needs_raw_x: bool                    # an elementwise op reads x_t itself
    step_source: str

    def group(self, source: str) -> Group | None:
        return self._by_source.get(source)

    def offset(self, group: Group, family: int) -> int:
        """Row offset (in units of hidden_size) of `family` inside `group`."""
        return self._offsets[group.source, family]

    # Both by lookup: the generators ask for them per family and group, and a search over the list
    # made code generation cubic in the nodes (seconds at 1000 nodes). Computed on first use
    # (cached_property writes the instance's __dict__, which a frozen dataclass allows).
    @cached_property
    def _by_source(self) -> dict[str, Group]:
        return {g.source: g for g in self.groups}

    @cached_property
    def _offsets(self) -> dict[tuple[str, int], int]:
        out = {}
        for g in self.groups:
            off = 0
            for f in g.families:
                out[g.source, f] = off
                off += len(self.families[f].members)
        return out


def lower(spec: CellSpec) -> Plan:
    order = {name: i for i, name in enumerate(spec.inputs + tuple(n.name for n in spec.nodes))}
    linears = [n for n in spec.nodes if OPS[n.op].has_weights]
    fam_index: dict[tuple[str, ...], int] = {}
    members: list[list[str]] = []
    for n in linears:
        key = tuple(sorted(n.inputs, key=order.__getitem__))
        fam_index.setdefault(key, len(members))
        if len(members) < len(fam_index):
            members.append([])
        members[fam_index[key]].append(n.name)
    families = tuple(Family(k, tuple(members[i])) for k, i in fam_index.items())

    sources = sorted({s for f in families for s in f.sources}, key=order.__getitem__)
    biased = {n.name for n in linears if n.option("bias")}
    bias_done: set[str] = set()
    groups = []
    for src in sources:
        fams = tuple(i for i, f in enumerate(families) if src in f.sources)
        rows = []
        for i in fams:
            for m in families[i].members:
                rows.append((m, m in biased and m not in bias_done))
                if m in biased:
                    bias_done.add(m)
        groups.append(Group(src, fams, tuple(rows)))
    needs_raw_x = any(INPUT in n.inputs for n in spec.nodes if not OPS[n.op].has_weights)
    needs_raw_x = needs_raw_x or INPUT in spec.outputs
    plan = Plan(spec, families, tuple(groups), needs_raw_x, "")
    return Plan(spec, families, tuple(groups), needs_raw_x, _generate(plan))


def _generate(plan: Plan) -> str:
    spec = plan.spec
    var = {INPUT: "x"}
    var.update({s: f"s{j}" for j, s in enumerate(spec.state)})
    params = []
    for k, g in enumerate(plan.groups):
        if g.source != INPUT:
            params += [f"w{k}", f"b{k}"]
    lines = [f"def step(xw, x, {', '.join(var[s] for s in spec.state)}, {', '.join(params)}):"]
    group_var = {g.source: ("xw" if g.source == INPUT else f"g{k}") for k, g in enumerate(plan.groups)}

    def emit_group(source: str) -> None:
        k = next(i for i, g in enumerate(plan.groups) if g.source == source)
        if source != INPUT:
            lines.append(f"    g{k} = torch.nn.functional.linear({var[source]}, w{k}, b{k})")

    def emit_family(i: int) -> None:
        fam = plan.families[i]
        terms = []
        for src in fam.sources:
            g = plan.group(src)
            width = len(g.families) == 1
            off = plan.offset(g, i)
            n = len(fam.members)
            terms.append(group_var[src] if width else f"{group_var[src]}[:, {off} * H:{off + n} * H]")
        slab = f"f{i}"
        lines.append(f"    {slab} = {' + '.join(terms)}")
        names = [var.setdefault(m, f"v{len(var)}") for m in fam.members]
        if len(names) == 1:
            lines.append(f"    {names[0]} = {slab}")
        else:
            lines.append(f"    {', '.join(names)} = {slab}.split(H, 1)")

    for s in spec.state:
        if plan.group(s):
            emit_group(s)
    emitted: set[int] = set()
    for node in spec.nodes:
        op = OPS[node.op]
        if op.has_weights:
            i = next(j for j, f in enumerate(plan.families) if node.name in f.members)
            if i not in emitted:
                emitted.add(i)
                emit_family(i)
        else:
            out = var.setdefault(node.name, f"v{len(var)}")
            expr = render(op.expr, [var[a] for a in node.inputs], dict(node.options))
            lines.append(f"    {out} = {expr}")
        if plan.group(node.name):
            emit_group(node.name)
    lines.append(f"    return ({', '.join(var[o] for o in spec.outputs)},)")
    return "\n".join(lines) + "\n"
