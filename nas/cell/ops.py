"""The op registry: the one place that says what a cell node can compute.

Everything else reads this table: the validator (arity, options), the canonical hash (commutativity,
weights), the compiler and the exporter (torch expression, derivative), the drawing (symbol) and the
search spaces (which ops exist). Adding an elementwise op is one `_register(Op(...))` line.

`expr` and `grad` are `str.format` templates of torch expressions over the operands `{a}`, `{b}`,
`{c}` (in operand order; `{sum}` and `{inv_n}` for n-ary ops), the result `{y}`, the incoming
gradient `{g}` and the op's options; the compiler and the exporter substitute their own variable
names, so the generated code is straight-line torch calls. `grad` gives one template per operand
(one template shared by all operands for n-ary ops): the gradient of the loss w.r.t. that operand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# Operand placeholders in `expr` / `grad` templates, in operand order.
OPERANDS = ("a", "b", "c")


def render(template: str, operands: list[str], options: Mapping[str, object], **names: str) -> str:
    """Fill an `expr`/`grad` template with variable names and option values."""
    fields: dict[str, object] = dict(zip(OPERANDS, operands))
    fields.update(sum=" + ".join(operands), inv_n=repr(1.0 / len(operands)), **options, **names)
    return template.format(**fields)


@dataclass(frozen=True)
class Op:
    """One node type.

    name:        the name used in cell JSON and in the hash.
    arity:       (min, max) number of operands; max None = unbounded.
    commutative: operand order does not change the value (the hash sorts such operands).
    expr:        torch expression template of the forward value (None for `linear`, which the
                 compiler lowers to matrix products).
    grad:        per-operand gradient templates (see module docstring).
    has_weights: the node owns parameters (only `linear`): two such nodes with equal operands are
                 still different functions, which the hash and the compiler must respect.
    options:     allowed options and their defaults; the spec fills in defaults so that the hash
                 sees one spelling of each cell.
    symbol:      short label for pictures.
    """

    name: str
    arity: tuple[int, int | None]
    commutative: bool
    expr: str | None = None
    grad: tuple[str, ...] = ()
    has_weights: bool = False
    options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    symbol: str = ""

    def accepts(self, n: int) -> bool:
        lo, hi = self.arity
        return n >= lo and (hi is None or n <= hi)


OPS: dict[str, Op] = {}


def _register(op: Op) -> None:
    OPS[op.name] = op


def _opts(**kw: object) -> Mapping[str, object]:
    return MappingProxyType(dict(kw))


# linear: sum_i W_i @ in_i + b. The only op with weights. `bias_init` is the constant the bias is
# initialised to (the LSTM forget gate uses 1.0, after Jozefowicz et al. 2015).
_register(Op("linear", (1, None), True, has_weights=True,
             options=_opts(bias=True, bias_init=0.0), symbol="W"))
_register(Op("add", (2, 2), True, "{a} + {b}", ("{g}", "{g}"), symbol="+"))
_register(Op("sub", (2, 2), False, "{a} - {b}", ("{g}", "-{g}"), symbol="-"))
_register(Op("mul", (2, 2), True, "{a} * {b}", ("{g} * {b}", "{g} * {a}"), symbol="×"))
# blend(z, a, b) = z * a + (1 - z) * b: a gated mix (z is usually a sigmoid gate), written as
# b + z * (a - b) to save one elementwise op.
_register(Op("blend", (3, 3), False, "{c} + {a} * ({b} - {c})",
             ("{g} * ({b} - {c})", "{g} * {a}", "{g} - {g} * {a}"), symbol="blend"))
# mean of n operands (the ENAS / DARTS cells average their nodes).
_register(Op("mean", (1, None), True, "({sum}) * {inv_n}", ("{g} * {inv_n}",), symbol="mean"))
_register(Op("tanh", (1, 1), False, "torch.tanh({a})", ("{g} * (1 - {y} * {y})",),
             symbol="tanh"))
_register(Op("sigmoid", (1, 1), False, "torch.sigmoid({a})", ("{g} * {y} * (1 - {y})",),
             symbol="σ"))
_register(Op("relu", (1, 1), False, "torch.relu({a})", ("{g} * ({y} > 0).to({g}.dtype)",),
             symbol="relu"))
_register(Op("leaky_relu", (1, 1), False,
             "torch.nn.functional.leaky_relu({a}, {negative_slope!r})",
             ("torch.where({a} > 0, {g}, {g} * {negative_slope!r})",),
             options=_opts(negative_slope=0.01), symbol="lrelu"))
_register(Op("identity", (1, 1), False, "{a}", ("{g}",), symbol="id"))


# The ops whose templates are plain arithmetic on their operands: the same text is C, Triton and
# torch, so the fused kernels' tables (nas.cell.cops, nas.cell.tritonops) take them from here.
ARITHMETIC = ("identity", "add", "sub", "mul", "blend", "mean")


def arithmetic_templates() -> dict[str, tuple[str, tuple[str, ...]]]:
    return {name: (OPS[name].expr, OPS[name].grad) for name in ARITHMETIC}


def get_op(name: str) -> Op:
    """The registered op called `name`; KeyError-free lookup is the spec validator's job."""
    return OPS[name]
