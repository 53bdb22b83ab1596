"""The CPU code's time loop in C: one call per sequence and direction instead of a few per step.

With nas.compile.backends.c.codegen's kernels, a step of the Python driver still makes a ctypes call per stage
kernel and per product and a torch call per copy, and builds T views per list of per-step views.
At the CPU search's sizes (hidden ~128, batch 32) a step's arithmetic takes tens of microseconds,
so this overhead (~2 us per call, ~1 us per view) was a fifth of CellRNN(lstm)'s training step.
Here the driver hands the loop to a generated C function: each list of per-step views becomes its
first element's address, the distance between elements and a period (a state's two slots are used
in turn), the accumulators are pointers that the C code swaps, and the products call MKL
through a function pointer: float32 its packed GEMM (nas.compile.backends.c.mkl), float64 its DGEMM.

The loop's statements come from the same stage driver (nas.compile.backends.stage_code) as the Python loop's, through
the kernel class's hooks; the kernels it calls are the same C functions.
"""

from __future__ import annotations

import ctypes
import re

import torch
from torch import Tensor

from nas.compile.backends.c import mkl
from nas.compile.backends.c.codegen import CKernel, _unit_columns
from nas.compile.backends.driver import StageDriver

# C helpers of the loop (appended to the kernels' source, after nas.compile.backends.c.ops.PRELUDE).
LOOP_PRELUDE = r"""
#define AT(n, i) (P_##n + ((i) % M_##n) * D_##n)

static inline void nas_copy_rows(intptr_t dst, int64_t ldd, intptr_t src, int64_t lds, int64_t B, int64_t n) {
    for (int64_t r = 0; r < B; r++)
        memcpy((T *)dst + r * ldd, (const T *)src + r * lds, (size_t)n * sizeof(T));
}

#ifdef NAS_DOUBLE
/* MKL's DGEMM (Fortran interface, column-major): row-major c = a @ w is c^T = w^T @ a^T. */
typedef void (*nas_gemm)(const char *, const char *, const int *, const int *, const int *, const double *,
                         const double *, const int *, const double *, const int *, const double *, double *,
                         const int *);
static inline void nas_product(intptr_t fn, int64_t M, int64_t N, int64_t K, intptr_t a, int64_t lda,
                               intptr_t w, T beta, intptr_t c, int64_t ldc) {
    int m = (int)N, n = (int)M, k = (int)K, lw = (int)N, la = (int)lda, lc = (int)ldc;
    double one = 1.0;
    ((nas_gemm)fn)("N", "N", &m, &n, &k, &one, (const double *)w, &lw, (const double *)a, &la, &beta,
                   (double *)c, &lc);
}
#else
/* MKL's cblas_sgemm_compute: w packed by cblas_sgemm_pack (nas.compile.backends.c.mkl.pack). */
typedef void (*nas_gemm)(int, int, int, int, int, int, const float *, int, const void *, int, float, float *, int);
static inline void nas_product(intptr_t fn, int64_t M, int64_t N, int64_t K, intptr_t a, int64_t lda,
                               intptr_t w, T beta, intptr_t c, int64_t ldc) {
    ((nas_gemm)fn)(MKL_ROW_MAJOR, MKL_NO_TRANS, MKL_PACKED, (int)M, (int)N, (int)K, (const float *)a, (int)lda,
                   (const void *)w, 0, beta, (float *)c, (int)ldc);
}
#endif
""".replace("MKL_ROW_MAJOR", str(mkl.ROW_MAJOR)).replace("MKL_NO_TRANS", str(mkl.NO_TRANS)) \
    .replace("MKL_PACKED", str(mkl.PACKED))

_UNBIND = re.compile(r"^(\w+(?:\[\d+\])?)\.unbind\(0\)$")


class LoopCKernel(CKernel):
    """CKernel whose driver runs the whole time loop in one generated C function per direction
    (`_loop_f`, `_loop_b`), with the products through MKL (`_gemm`: see nas.compile.backends.c.mkl.gemm)."""

    PRELUDE = LOOP_PRELUDE

    # Per-step views: AT(name, t) is element t of list `name` (its P_, D_, M_ are arguments).
    @staticmethod
    def pointer(name: str, index: str) -> tuple[str, str]:
        return f"AT({name}, {index[1:-1]})", f"R_{name}"

    @staticmethod
    def plain_pointer(name: str) -> tuple[str, str]:
        return name, "H"  # a C variable: the carries are swapped in C

    def launch(self, d: StageDriver) -> str:
        return super().launch(d) + ";"

    @staticmethod
    def head(d: StageDriver) -> list[str]:
        """Per view list, (address, distance, row stride, period) instead of T views."""
        lines = []
        for n, e in d.lists.items():
            if m := _UNBIND.match(e):
                call = f"_each({m.group(1)}, T)"
            elif e.startswith(("_steps(", "_hist(")):
                call = e.replace("_steps(", "_steps_at(", 1).replace("_hist(", "_hist_at(", 1)
            else:
                raise AssertionError(f"nas.compile.backends.c.loop: no C form for the view list {e}")
            lines.append(f"    L_{n} = {call}")
        return lines

    @staticmethod
    def weight(name: str) -> list[str]:
        return [f"    pk_{name}, P_{name}, K_{name}, N_{name} = _weight({name}, B)"]

    @staticmethod
    def product(d: StageDriver, src: str, wt: str, out: str, base: str | None) -> list[str]:
        if base is None:
            return [_product(d, src, wt, out, add=False)]
        if base in d.pointers:  # a per-step view
            pb, ldb = d.pointers[base]
        else:  # a bias vector (base[j]), every row
            vec = f"v{len(_vectors(d))}"
            _vectors(d)[vec] = f"{base}.contiguous()"
            pb, ldb = f"P_{vec}", "0"
        po, ldo = d.pointers[out]
        return [f"nas_copy_rows({po}, {ldo}, {pb}, {ldb}, B, N_{wt});", _product(d, src, wt, out, add=True)]

    @staticmethod
    def grad_product(d: StageDriver, dg: str, w: str, target: str, first: bool) -> list[str]:
        return [_product(d, dg, w, target, add=not first)]

    @staticmethod
    def copy(d: StageDriver, dst: str, src: str) -> list[str]:
        (pd, ldd), (ps, lds) = d.pointers[dst], d.pointers[src]
        return [f"nas_copy_rows({pd}, {ldd}, {ps}, {lds}, B, H);"]

    @staticmethod
    def swap(d: StageDriver, a: str, b: str) -> list[str]:
        d.extra.setdefault("swapped", []).append((a, b))
        return [f"{{ intptr_t tmp_ = {a}; {a} = {b}; {b} = tmp_; }}"]

    @staticmethod
    def zero(d: StageDriver, a: str) -> list[str]:
        d.extra.setdefault("zeroed", []).append(a)
        return [f"{a} = Z;"]

    @staticmethod
    def loop(d: StageDriver, body: list[str], kernels: list, reverse: bool) -> list[str]:
        """The C function running `body` (appended to `kernels`) and the driver's call of it. Its
        arguments come as one array of int64 (pointers as integers)."""
        name = "_loop_b" if reverse else "_loop_f"
        args: list[tuple[str, str]] = [("steps", "T"), ("B", "B"), ("H", "H"), ("gemm", "_gemm")]
        for n in d.lists:
            args += [(f"{k}_{n}", f"L_{n}[{i}]") for i, k in enumerate("PDRM")]
        for w in d.extra.get("weights", {}):
            args += [(f"P_{w}", f"P_{w}"), (f"K_{w}", f"K_{w}"), (f"N_{w}", f"N_{w}")]
        args += [(f"P_{v}", f"{v}.data_ptr()") for v in _vectors(d)]
        plains = list(d.plains) + (["Z"] if d.extra.get("zeroed") else [])
        args += [(p, f"{p}.data_ptr()") for p in plains]
        decls = [f"    {'intptr_t' if c in plains else 'const int64_t'} {c} = a[{i}];" for i, (c, _) in enumerate(args)]
        # (the step count is `steps` here: T names the element type in C)
        steps = "int64_t t = steps - 1; t >= 0; t--" if reverse else "int64_t t = 0; t < steps; t++"
        kernels.append(_Source("\n".join([f"void {name}(const int64_t *a) {{", *decls, f"    for ({steps}) {{",
                                          *[f"        {x}" for x in body], "    }", "}"]) + "\n"))
        lines = [f"    {v} = {e}" for v, e in _vectors(d).items()]
        lines.append(f"    _call({name}, {', '.join(e for _, e in args)})")
        # The C code swapped its copies of the carries' pointers T times: so do the names here.
        for a, b in d.extra.get("swapped", []):
            lines.append(f"    if T % 2:\n        {a}, {b} = {b}, {a}")
        for a in d.extra.get("zeroed", []):
            lines.append(f"    if T:\n        {a} = Z")
        return lines


def _vectors(d: StageDriver) -> dict[str, str]:
    """The loop's bias vectors: variable -> expression (kept alive by the driver during the call)."""
    return d.extra.setdefault("vectors", {})


def _product(d: StageDriver, a: str, w: str, c: str, add: bool) -> str:
    d.extra.setdefault("weights", {})[w] = None
    (pa, lda), (pc, ldc) = d.pointers[a], d.pointers[c]
    return f"nas_product(gemm, B, N_{w}, K_{w}, {pa}, {lda}, P_{w}, {1.0 if add else 0.0}, {pc}, {ldc});"


class _Source:
    """A piece of C source among the kernels (stage_code.generate joins their `source()`)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def source(self) -> str:
        return self.text


# The driver's helpers: per list of per-step views, (address, bytes from one element to the next,
# row stride, period), with the columns checked to be contiguous.
def _seq(view: Tensor, distance: int, period: int) -> tuple[int, int, int, int]:
    _, rows, cols = view.shape
    _, r, c = view.stride()
    _unit_columns((r if rows > 1 else cols, c if cols > 1 else 1))
    row_stride = r if rows > 1 else cols
    _fits_int32(rows, cols, row_stride)
    return view.data_ptr(), distance * view.element_size(), row_stride, max(period, 1)


def _fits_int32(*values: int) -> None:
    """MKL's LP64 interface takes dimensions and leading dimensions as 32-bit ints: a larger one
    would wrap (wrong numbers, silently), so it is an error here."""
    if max(values) >= 2**31:
        raise ValueError(f"C time loop: a dimension or row stride of {max(values)} elements does not fit MKL's "
                         f"32-bit ints; set Policy(c_loop=False) (or NAS_C_LOOP=0) for this model")


def _steps_at(buf: Tensor, T: int, lo: int | None = None, hi: int | None = None) -> tuple[int, int, int, int]:
    """As nas.compile.sequence.program._steps: the first T rows of a (T or T + 1, B, .) buffer, or a (1, B, .) scratch T times."""
    view = buf if lo is None else buf[:, :, lo:hi]
    return _seq(view, view.stride(0) if view.shape[0] > 1 else 0, T + 1)


def _hist_at(S: Tensor, T: int) -> tuple[int, int, int, int]:
    """As nas.compile.sequence.program._hist: a state's T + 1 slots, or its two slots used in turn."""
    return _seq(S, S.stride(0), T + 1 if S.shape[0] == T + 1 else 2)


def _each(seq: Tensor, T: int) -> tuple[int, int, int, int]:
    """seq.unbind(0) of a (T, B, .) tensor."""
    return _seq(seq, seq.stride(0) if seq.shape[0] > 1 else 0, T)


def _call(fn, *args: int) -> None:
    arr = (ctypes.c_int64 * len(args))(*args)
    fn(ctypes.addressof(arr))


def available(dtype: torch.dtype) -> bool:
    """Whether MKL's products can be called from C here in `dtype`."""
    return mkl.gemm(dtype) is not None


def namespace(dtype: torch.dtype) -> dict[str, object]:
    """What the generated driver calls, for `dtype`."""
    weight = _packed if dtype == torch.float32 else _plain
    return {"_steps_at": _steps_at, "_hist_at": _hist_at, "_each": _each, "_call": _call, "_weight": weight,
            "_gemm": mkl.gemm(dtype)}


def _packed(w: Tensor, rows: int) -> tuple[Tensor, int, int, int]:
    _fits_int32(rows, *w.shape)
    packed = mkl.pack(w, rows)
    return packed, packed.data_ptr(), *w.shape


def _plain(w: Tensor, rows: int) -> tuple[Tensor, int, int, int]:
    _fits_int32(rows, *w.shape)
    w = w.contiguous()
    return w, w.data_ptr(), *w.shape
