"""The registry's elementwise ops as C expressions, for the fused CPU kernels (nas.compile.backends.c.codegen).

Per op, as in nas.compile.backends.triton_ops: the value and, per operand (one shared entry for n-ary ops), its
gradient, as `str.format` templates over the operands {a} {b} {c} ({sum}, {inv_n} for n-ary ops),
the result {y}, the incoming gradient {g} and the op's options. nas.cell.ops stays the reference:
tests/compile/test_c_codegen.py checks these against it, NaN and infinities included. The kernels compute in the
tensors' own type T (float or double: the float build makes unsuffixed constants float).
An op missing here makes its cells run the torch kernels on the CPU instead (nas.compile.backends.select).
"""

from __future__ import annotations

from nas.cell.ops import arithmetic_templates

C_OPS: dict[str, tuple[str, tuple[str, ...]]] = {
    **arithmetic_templates(),  # identity, add, sub, mul, blend, mean: the registry's own text
    "tanh": ("nas_tanh({a})", ("{g} * (1.0 - {y} * {y})",)),
    "sigmoid": ("nas_sigmoid({a})", ("{g} * {y} * (1.0 - {y})",)),
    # relu(NaN) is NaN, as in torch; its gradient is torch's threshold_backward: zero where y <= 0.
    "relu": ("({a} < 0.0 ? 0.0 : {a})", ("({y} <= 0.0 ? 0.0 : {g})",)),
    "leaky_relu": ("({a} > 0.0 ? {a} : {a} * {negative_slope!r})",
                   ("({a} > 0.0 ? {g} : {g} * {negative_slope!r})",)),
}

# The kernels' helpers. libm's exp is a scalar call that stops GCC from vectorizing a loop (its
# vector forms need -ffast-math, which would also drop NaN and infinity semantics), so exp is
# written here in plain arithmetic that vectorizes: exp(x) = 2^n exp(r), n = round(x / ln 2),
# r = x - n ln 2 (ln 2 split in a high part exact in n * hi and a low part, Cody & Waite 1980),
# |r| <= ln(2) / 2, exp(r) by its Taylor series to r^7 (float: truncation error < 6e-9
# relative) or r^13 (double: < 5e-18) in fused multiply-adds, and 2^n built in the exponent bits.
# Beyond EXP_HI exp is inf and below EXP_LO 0 (torch gives numbers up to 3.4e38 and down to
# 1e-45 there: sigmoid and tanh cannot tell); a NaN passes the comparisons and comes out NaN.
# tanh(a) = sign(a) (1 - e) / (1 + e) with e = exp(-2|a|), and its Taylor series to a^13 below
# |a| = 0.1, where 1 - e would cancel (truncation error < 2e-17 relative there).
PRELUDE = r"""
#include <stdint.h>
#include <string.h>

#ifdef NAS_DOUBLE
typedef double T;
typedef int64_t I;
typedef uint64_t U;
#define EXP_HI 708.0
#define EXP_LO -708.0
#define LN2_HI 6.93147180369123816490e-01
#define LN2_LO 1.90821492927058770002e-10
#define BIAS 1023
#define MANTISSA 52
#define FLOOR __builtin_floor
#define FMA __builtin_fma
static inline T exp_reduced(T r) {
    T p = 1.0 / 6227020800.0;
    p = FMA(p, r, 1.0 / 479001600.0); p = FMA(p, r, 1.0 / 39916800.0); p = FMA(p, r, 1.0 / 3628800.0);
    p = FMA(p, r, 1.0 / 362880.0); p = FMA(p, r, 1.0 / 40320.0); p = FMA(p, r, 1.0 / 5040.0);
    p = FMA(p, r, 1.0 / 720.0); p = FMA(p, r, 1.0 / 120.0); p = FMA(p, r, 1.0 / 24.0);
    p = FMA(p, r, 1.0 / 6.0); p = FMA(p, r, 0.5); p = FMA(p, r, 1.0);
    return FMA(p, r, 1.0);
}
#else
typedef float T;
typedef int32_t I;
typedef uint32_t U;
#define EXP_HI 88.0
#define EXP_LO -87.0
#define LN2_HI 0.693359375
#define LN2_LO -2.12194440e-4
#define BIAS 127
#define MANTISSA 23
#define FLOOR __builtin_floorf
#define FMA __builtin_fmaf
static inline T exp_reduced(T r) {
    T p = 1.0 / 5040.0;
    p = FMA(p, r, 1.0 / 720.0); p = FMA(p, r, 1.0 / 120.0); p = FMA(p, r, 1.0 / 24.0);
    p = FMA(p, r, 1.0 / 6.0); p = FMA(p, r, 0.5); p = FMA(p, r, 1.0);
    return FMA(p, r, 1.0);
}
#endif

static inline T nas_exp(T x) {
    T y = x > EXP_HI ? EXP_HI : x;
    y = y < EXP_LO ? EXP_LO : y;
    T n = FLOOR(y * 1.44269504088896340736 + 0.5);
    T r = (y - n * LN2_HI) - n * LN2_LO;
    U bits = ((U)(I)n + BIAS) << MANTISSA;
    T scale;
    memcpy(&scale, &bits, sizeof scale);
    T e = exp_reduced(r) * scale;
    e = x > EXP_HI ? (T)__builtin_inf() : e;
    return x < EXP_LO ? 0.0 : e;
}

static inline T nas_sigmoid(T a) { return 1.0 / (1.0 + nas_exp(-a)); }

static inline T nas_tanh(T a) {
    T m = a < 0.0 ? -a : a;
    T e = nas_exp(-2.0 * m);
    T t = (1.0 - e) / (1.0 + e);
    T s = a * a;
    T p = 21844.0 / 6081075.0;
    p = p * s - 1382.0 / 155925.0; p = p * s + 62.0 / 2835.0; p = p * s - 17.0 / 315.0;
    p = p * s + 2.0 / 15.0; p = p * s - 1.0 / 3.0;
    T small = a * (1.0 + s * p);  /* a * (...), not a + ...: tanh(-0) is -0 */
    return m < 0.1 ? small : (a < 0.0 ? -t : t);
}
"""
