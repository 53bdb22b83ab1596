"""The registry's elementwise ops as Triton expressions, for the fused GPU kernels (nas.compile.backends.triton).

Per op: the value and, per operand (one shared entry for n-ary ops), its gradient, as `str.format`
templates over the operands {a} {b} {c} ({sum}, {inv_n} for n-ary ops), the result {y}, the
incoming gradient {g} and the op's options, exactly like nas.cell.ops (which stays the reference:
tests/compile/test_triton.py checks these against it). Everything is computed in float32 registers.
An op missing here makes its cells run the torch kernels on the GPU instead (nas.compile.backends.select).

tanh is 2 sigmoid(2a) - 1: tl has no tanh that also runs in Triton's CPU interpreter (the tests').
"""

from __future__ import annotations

from nas.cell.ops import arithmetic_templates

TRITON: dict[str, tuple[str, tuple[str, ...]]] = {
    **arithmetic_templates(),  # identity, add, sub, mul, blend, mean: the registry's own text
    "tanh": ("2.0 * tl.sigmoid(2.0 * {a}) - 1.0", ("{g} * (1.0 - {y} * {y})",)),
    "sigmoid": ("tl.sigmoid({a})", ("{g} * {y} * (1.0 - {y})",)),
    # relu(NaN) is NaN, as in torch (a NaN must reach the loss: that is how divergence is seen);
    # its gradient is torch's threshold_backward: zero where y <= 0, else g (NaN included).
    "relu": ("tl.where({a} < 0.0, 0.0, {a})", ("tl.where({y} <= 0.0, 0.0, {g})",)),
    "leaky_relu": ("tl.where({a} > 0.0, {a}, {a} * {negative_slope!r})",
                   ("tl.where({a} > 0.0, {g}, {g} * {negative_slope!r})",)),
}
