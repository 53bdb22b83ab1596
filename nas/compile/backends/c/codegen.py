"""Whole-sequence code for the CPU: per step, the products (torch) and one fused C kernel per stage.

The torch code of nas.compile.sequence.forward makes one call per elementwise op: at search sizes each costs a
few microseconds of dispatch for a fraction of that in arithmetic, and darts_v2 spends more time in
them than in its products. Here the stages of a step (nas.compile.backends.stages) become C functions, as
they become Triton kernels on a GPU (nas.compile.backends.triton): the same stage driver
(nas.compile.backends.stage_code), with CKernel as its kernel class. A kernel loops over the (B, H) elements of a step once,
computing the stage's nodes in registers; its backward recomputes the stage from the same loads.
It takes each view's data pointer and row stride (columns are contiguous: the driver makes X and
dout so). Where MKL can be called from C, the whole time loop runs in C and calls the kernels itself
(nas.compile.backends.c.loop.LoopCKernel); else a Python loop calls them through ctypes (CKernel, PackedCKernel).

The source is compiled with the system's C compiler (`cc`, or $CC) into a private temporary
directory and loaded from there (about 0.1-0.3 s per new cell, once per process; nothing is left on
disk). No compiler, a failed compile, or results that differ from the torch code's (the probe,
nas.compile.backends.probe) mean the torch code runs instead, with one warning.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shlex
import shutil
import subprocess
import tempfile

import torch

from nas.compile.backends import stage_code
from nas.compile.backends.c import mkl
from nas.compile.backends.c.ops import C_OPS, PRELUDE
from nas.compile.backends.driver import StageDriver, StageKernel
from nas.compile.backends.driver import supported as kernel_supported
from nas.compile.plan import Plan
from nas.compile.sequence.forward import SeqCode

DTYPES = {torch.float32: "float", torch.float64: "double"}
# -ffp-contract=off: no fused multiply-adds where the templates say a * b + c, so the kernels round
# like torch's separate ops (ill-conditioned random cells amplify any difference); the exp
# polynomial asks for its FMAs itself.
# -mprefer-vector-width=512: GCC otherwise keeps to 256-bit vectors on AVX-512 CPUs (for their clock
# drop; MKL's products already run AVX-512 here): an LSTM step's kernels ran ~20% faster, a training
# step 3-5%. No vectorized epilogue loop (the scalar one does the last columns): 20% less compile
# time, the same step time at the sizes measured.
FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-std=gnu11", "-fPIC", "-shared", "-fno-math-errno",
         "-fno-trapping-math", "-ffp-contract=off"]
GCC_FLAGS = ["--param", "vect-epilogues-nomask=0"]  # (clang rejects GCC's --param names)
EXTRA_FLAGS = {"float": ["-fsingle-precision-constant"], "double": ["-DNAS_DOUBLE"]}


# A stage kernel runs its rows in parallel from this much work: elements x (its statements + 15 per
# exp-based op) (CKernel.parallel_from).
PARALLEL_WORK = 100_000


class CompileError(RuntimeError):
    """The C compiler is missing or rejected the generated source."""


class CKernel(StageKernel):
    """One C function over the B * H elements of a step (the products stay torch's)."""

    OPS = C_OPS
    PRELUDE = ""  # C helpers of the driver's own, after nas.compile.backends.c.ops.PRELUDE
    HOSTS = True
    ACTIVATIONS = True
    SETUP = ("    X = None if X is None else X.contiguous()",)
    BACKWARD_SETUP = ("    dout = dout.contiguous()",)

    def assign(self, var: str, expr: str) -> None:
        self.body.append(f"T {var} = {expr};")

    def load(self, views: list[str], var: str) -> str:
        self.assign(var, " + ".join(f"p{self._ptr(v)}[c]" for v in views))
        return var

    def store(self, view: str, value: str) -> None:
        self.body.append(f"p{self._ptr(view)}[c] = {value};")

    def source(self) -> str:
        n = len(self.views)
        params = "".join(f", intptr_t a{i}, int64_t r{i}" for i in range(n))
        rows = [f"        T *p{i} = (T *)a{i} + r * r{i};" for i in range(n)]
        # Each element is read and written at its own index only, in every view (views are
        # distinct columns or buffers, or the same view): no dependence between iterations.
        # Rows in parallel (OpenMP: torch's own runtime and thread count) from `parallel_from()`
        # elements.
        return "\n".join([f"void {self.name}(int64_t B, int64_t H{params}) {{",
                          f"#pragma omp parallel for schedule(static) if (B * H >= {self.parallel_from()})",
                          "    for (int64_t r = 0; r < B; r++) {", *rows,
                          "#pragma GCC ivdep",
                          "        for (int64_t c = 0; c < H; c++) {",
                          *[f"            {line}" for line in self.body], "        }", "    }", "}"]) + "\n"

    def parallel_from(self) -> int:
        """The fewest elements worth splitting between threads: those whose work takes ~5 us on
        one core (waking the other threads costs 1-3 us). Torch's grain size for an elementwise op
        is 32768 elements; a fused stage does 10-100 such ops, exp-based ones (sigmoid, tanh) 15
        times dearer than an add (measured: an LSTM stage, 5 of them, 3.5 ns per element). With
        32768, every stage at batch 32 and hidden <= 1024 ran on one thread; splitting from here
        made 2-thread training steps at batch 32 and hidden 64-256 3-19% faster (lstm 9%, darts_v2
        7-10%, nas_cell 16-19%; 1 thread: the same). Below 2048 elements it did not pay."""
        text = "\n".join(self.body)
        cost = len(self.body) + 15 * (text.count("nas_sigmoid(") + text.count("nas_tanh("))
        return max(2048, min(32768, -(-PARALLEL_WORK // cost)))

    @staticmethod
    def empty(like: str, shape: str) -> str:
        return f"_take({like}, ({shape}))"

    @staticmethod
    def strides(view: str) -> str:
        return f"_strides({view})"

    def launch(self, d: StageDriver) -> str:
        args = "".join(f", {p}, {s}" for p, s in (d.pointers[v] for v in self.views))
        return f"{self.name}(B, H{args})"

    @staticmethod
    def lists(d: StageDriver) -> list[str]:
        """Per view list: its elements' data pointers, and a check that its columns are contiguous."""
        lines = [f"    pp_{n} = [v.data_ptr() for v in {n}]" for n in d.lists]
        if d.lists:
            lines.append(f"    _unit_columns({', '.join(f'st_{n}' for n in d.lists)})")
        return lines


class PackedCKernel(CKernel):
    """CKernel whose driver runs the per-step products with MKL's packed GEMM (nas.compile.backends.c.mkl):
    each weight is packed once per call, for float32 where libtorch exports MKL's functions."""

    @staticmethod
    def weight(name: str) -> list[str]:
        return [f"    K_{name}, N_{name} = {name}.shape",
                f"    pk_{name} = _pack({name}, B)",
                f"    P_{name} = pk_{name}.data_ptr()"]

    @staticmethod
    def product(d: StageDriver, src: str, wt: str, out: str, base: str | None) -> list[str]:
        copy = [] if base is None else [f"{out}.copy_({base})"]  # then added to: beta 1
        return copy + [_packed_product(d, src, wt, out, add=base is not None)]

    @staticmethod
    def grad_product(d: StageDriver, dg: str, w: str, target: str, first: bool) -> list[str]:
        return [_packed_product(d, dg, w, target, add=not first)]


def _packed_product(d: StageDriver, a: str, w: str, c: str, add: bool) -> str:
    """The driver's line for view c (+)= view a @ packed weight w (nas.compile.backends.c.mkl.compute)."""
    (pa, lda), (pc, ldc) = d.pointers[a], d.pointers[c]
    return (f"_mm({mkl.ROW_MAJOR}, {mkl.NO_TRANS}, {mkl.PACKED}, B, N_{w}, K_{w}, {pa}, {lda}, P_{w}, 0, "
            f"{1.0 if add else 0.0}, {pc}, {ldc})")


def _strides(view: torch.Tensor) -> tuple[int, int]:
    """A (B, H) view's strides, with those of size-1 dimensions (which torch may report as
    anything) made what they would be in a contiguous view: MKL checks them, and the kernels'
    unit-column check must not fail on H = 1."""
    (rows, cols), (r, c) = view.shape, view.stride()
    return (r if rows > 1 else cols, c if cols > 1 else 1)


def _unit_columns(*strides: tuple[int, ...]) -> None:
    if any(s[1] != 1 for s in strides):
        raise AssertionError(f"nas.compile.backends.c.codegen: a (B, H) view with non-contiguous columns reached a C kernel: {strides}")


def generate(plan: Plan, kernel: type[CKernel] | None = None) -> tuple[SeqCode, str]:
    """(the code's description and driver source, the C source of its kernels, prelude included),
    for `kernel`: CKernel (the default), PackedCKernel (products by MKL's packed GEMM: float32) or
    nas.compile.backends.c.loop.LoopCKernel (the time loop in C)."""
    kernel = kernel or CKernel
    code, kernels = stage_code.generate(plan, kernel)
    return code, PRELUDE + kernel.PRELUDE + "\n" + kernels


def supported(plan: Plan) -> bool:
    return kernel_supported(plan, CKernel)


def compiler() -> list[str] | None:
    """The C compiler's command ($CC, else cc, gcc or clang), or None when there is none."""
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return [name]
    return None


@functools.cache
def _is_gcc(cc: tuple[str, ...]) -> bool:
    done = _run([*cc, "--version"])
    return done.returncode == 0 and "Free Software Foundation" in done.stdout


def _run(command: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise CompileError(f"{command[0]}: {err}") from err


def build(source: str, dtype: torch.dtype) -> dict[str, object]:
    """Compile `source` for `dtype`; its kernels by name, to be called with Python ints."""
    cc = compiler()
    if cc is None:
        raise CompileError("no C compiler found (cc, gcc or clang; or set $CC)")
    try:
        with tempfile.TemporaryDirectory(prefix="nas-c-") as tmp:
            src, lib = os.path.join(tmp, "cell.c"), os.path.join(tmp, "cell.so")
            with open(src, "w") as f:
                f.write(source)
            flags = [*FLAGS, *(GCC_FLAGS if _is_gcc(tuple(cc)) else []), *EXTRA_FLAGS[DTYPES[dtype]]]
            done = _run([*cc, *flags, "-fopenmp", src, "-o", lib])
            if done.returncode != 0:  # a compiler without OpenMP (clang without libomp): serial kernels
                done = _run([*cc, *flags, src, "-o", lib])
            if done.returncode != 0:
                raise CompileError(f"{cc[0]} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
            handle = ctypes.CDLL(lib)  # mapped now: the file can go with its directory
    except OSError as err:  # a full or read-only temporary directory, one mounted noexec (dlopen fails)
        raise CompileError(f"{type(err).__name__}: {err}") from err
    kernels = {}
    for line in source.splitlines():
        if line.startswith("void _"):  # void _f0(int64_t B, int64_t H, intptr_t a0, int64_t r0, ...) {
            fn = getattr(handle, line.split("(")[0].split()[1])
            # Every argument is 64 bits: declared, ctypes converts Python ints to int64_t
            # (undeclared, they would pass as 32-bit ints).
            fn.argtypes, fn.restype = [ctypes.c_int64] * (line.count(",") + 1), None
            kernels[fn.__name__] = fn
    return kernels
