"""Fast forms of the registry's ops for the whole-sequence code (nas.compile.sequence.forward).

The registry (nas.cell.ops) says what each op computes, as templates of torch expressions; those
templates stay the reference. Here, for the ops where it pays, are the same functions written as
the fewest torch calls, each able to write into a preallocated buffer (`{out}` renders as
`, out=<buffer>` or as nothing), and their gradients as *terms* that the backward generator can fold
into an accumulating gradient with one fused call each (`addcmul_`, `addmm_`, `add_(alpha=)`).
An op missing here still works: the generator falls back to its registry templates.
tests/compile/test_sequence.py checks every kernel against the registry templates.

Gradient terms (strings are `str.format` templates over {a} {b} {c} {y} {g} {s} and the options):
    Alias(src, alpha)  alpha * src                 (alpha "1": src itself, no call at all)
    Mul(p, q, value)   value * p * q
    Expr(value, out)   any expression; `out` is the same call writing into {out}, if it has one
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Alias:
    src: str
    alpha: str = "1"


@dataclass(frozen=True)
class Mul:
    p: str
    q: str
    value: str = "1"


@dataclass(frozen=True)
class Expr:
    value: str
    out: str | None = None


@dataclass(frozen=True)
class MM:
    """dg @ w: the gradient a matrix product sends to its source (made by the generator only)."""
    dg: str
    w: str


Term = Alias | Mul | Expr | MM


@dataclass(frozen=True)
class Kernel:
    """value: the forward call ({out}: where it writes); grads: per operand, the terms of its
    gradient (one entry shared by all operands of n-ary ops); shared: computed once per node
    before its terms, which read it as {s}; inplace: a unary op whose gradient reads only {y}, so it
    may overwrite its operand (activations over a family's slab)."""
    value: str
    grads: tuple[tuple[Term, ...], ...]
    shared: str | None = None
    inplace: bool = False


# ATen derivative kernels the generated code calls by these names (nas.compile.fast_path binds them):
# `_<name>(g, y, ...)` and its out= form `_<name>_out(g, y, ..., grad_input=out)`.
ATEN_BACKWARDS = ("sigmoid_backward", "tanh_backward", "threshold_backward", "leaky_relu_backward")


def _backward_expr(name: str, extra: str = "", arg: str = "{y}") -> Expr:
    """Autograd's own derivative kernel of an activation: one call, from the output y (or `arg`)."""
    return Expr(f"_{name}({{g}}, {arg}{extra})", f"_{name}_out({{g}}, {arg}{extra}, grad_input={{out}})")


KERNELS: dict[str, Kernel] = {
    "add": Kernel("torch.add({a}, {b}{out})", ((Alias("{g}"),), (Alias("{g}"),))),
    "sub": Kernel("torch.sub({a}, {b}{out})", ((Alias("{g}"),), (Alias("{g}", "-1.0"),))),
    "mul": Kernel("torch.mul({a}, {b}{out})", ((Mul("{g}", "{b}"),), (Mul("{g}", "{a}"),))),
    # blend(a, b, c) = c + a * (b - c) = lerp(c, b, a): one call instead of three.
    "blend": Kernel("torch.lerp({c}, {b}, {a}{out})",
                    ((Mul("{g}", "torch.sub({b}, {c})"),), (Mul("{g}", "{a}"),),
                     (Alias("{g}"), Mul("{g}", "{a}", "-1.0")))),
    "mean": Kernel("torch.mul({sum}, {inv_n}{out})", ((Alias("{s}"),),), shared="torch.mul({g}, {inv_n})"),
    "tanh": Kernel("torch.tanh({a}{out})", ((_backward_expr("tanh_backward"),),), inplace=True),
    "sigmoid": Kernel("torch.sigmoid({a}{out})", ((_backward_expr("sigmoid_backward"),),), inplace=True),
    # relu is clamp_min(a, 0) in ATen; its gradient is autograd's threshold_backward(g, y, 0).
    "relu": Kernel("torch.clamp_min({a}, 0.0{out})", ((_backward_expr("threshold_backward", ", 0"),),),
                   inplace=True),
    # (The gradient reads the input a: a negative slope would flip y's sign. So never in place.)
    "leaky_relu": Kernel("torch._C._nn.leaky_relu({a}, {negative_slope!r}{out})",
                         ((_backward_expr("leaky_relu_backward", ", {negative_slope!r}, False", "{a}"),),)),
}
