"""The C backend: fused C kernels per stage on the CPU (float32, float64), the time loop in C with MKL.

`C.build` gives a cell's program in the form that works here: with the time loop in C
(nas.compile.backends.c.loop) where MKL can be called from C, the setting allows it (Policy.c_loop)
and the loop's probe passed; else the same kernels from a Python loop (with MKL's packed GEMM for
float32 where torch exports it: nas.compile.backends.c.mkl). `C.works` is the probe: the kernels
and, separately, the loop must compile here and compute what the torch code computes
(nas.compile.backends.probe); a loop that fails costs only itself.
"""

from __future__ import annotations

import threading
import warnings
from functools import cache, lru_cache

import torch

from nas.cell.spec import CellSpec
from nas.compile.backends import probe
from nas.compile.backends.c import codegen, mkl
from nas.compile.backends.c import loop as c_loop
from nas.compile.backends.c.pool import POOL
from nas.compile.backends.policy import DEFAULT, Policy
from nas.compile.plan import lower
from nas.compile.sequence.program import HELPERS, Program


class CBackend:
    """The C kernels (see the module docstring): the Backend interface of nas.compile.backends.base."""

    name = "c"

    def available(self, device: torch.device, dtype: torch.dtype) -> bool:
        return device.type == "cpu" and dtype in codegen.DTYPES

    def works(self, device: torch.device, dtype: torch.dtype, policy: Policy = DEFAULT) -> bool:
        # The loop's probe first: where it passes, the kernels' own is not needed.
        return (policy.loop() and c_works(dtype, loop=True)) or c_works(dtype)

    def build(self, spec: CellSpec, dtype: torch.dtype, policy: Policy = DEFAULT) -> Program | None:
        return c_program(spec, dtype, policy.loop() and c_works(dtype, loop=True))


C = CBackend()


def c_program(spec: CellSpec, dtype: torch.dtype, loop: bool = True) -> Program | None:
    """`spec`'s program with one fused C kernel per stage (nas.compile.backends.c.codegen), for float32 or
    float64, and the time loop in C (nas.compile.backends.c.loop) where MKL can be called from it and `loop`;
    None (after a warning) when an op has no C form or the compiler fails. Cached: each form of a
    cell is compiled once per process (where the loop cannot run in C, `loop` changes nothing)."""
    return _c_program(spec, dtype, loop and c_loop.available(dtype))


@lru_cache(maxsize=1024)
def _c_program(spec: CellSpec, dtype: torch.dtype, loop: bool) -> Program | None:
    plan = lower(spec)
    if not codegen.supported(plan):
        return None
    # Else the loop runs in Python, with MKL's packed GEMM for float32 where there is one; and so it
    # does where the C loop fails to compile but the kernels alone do.
    kernels = [codegen.PackedCKernel if dtype == torch.float32 and mkl.available() else codegen.CKernel]
    if loop and c_loop.available(dtype):
        kernels.insert(0, c_loop.LoopCKernel)
    errors = []
    for kernel in kernels:
        try:
            prog = build_c_program(spec, dtype, kernel)
        except codegen.CompileError as err:
            errors.append(err)
            continue
        if errors:
            warnings.warn(f"nas: could not compile the C time loop of cell {spec.canonical_hash()[:12]} "
                          f"({errors[0]}); it runs its C kernels from a Python loop", RuntimeWarning, stacklevel=3)
        return prog
    warnings.warn(f"nas: could not compile the C kernels of cell {spec.canonical_hash()[:12]} ({errors[-1]}); "
                  f"it runs the torch kernels", RuntimeWarning, stacklevel=3)
    return None


c_program.cache_clear = _c_program.cache_clear  # (as on the other cached program functions)


def build_c_program(spec: CellSpec, dtype: torch.dtype, kernel: type[codegen.CKernel]) -> Program:
    """`spec`'s C program with the given kernel class (c_program chooses it; benchmarks/cells.py's
    --floor passes its own), compiled now and not cached; codegen.CompileError if that fails."""
    if issubclass(kernel, c_loop.LoopCKernel) and not c_loop.available(dtype):
        raise ValueError(f"build_c_program: no MKL to call from a C loop in {dtype} here")
    if issubclass(kernel, codegen.PackedCKernel) and not (dtype == torch.float32 and mkl.available()):
        raise ValueError(f"build_c_program: MKL's packed GEMM is for float32 where torch exports it, not {dtype}")
    code, source = codegen.generate(lower(spec), kernel)
    kernels = codegen.build(source, dtype)
    namespace = {**HELPERS, "_unit_columns": codegen._unit_columns, "_strides": codegen._strides,
                 "_take": POOL.take, **kernels}
    if issubclass(kernel, c_loop.LoopCKernel):
        namespace.update(c_loop.namespace(dtype))
    elif issubclass(kernel, codegen.PackedCKernel):
        namespace.update(_pack=mkl.pack, _mm=mkl.compute())
    source = code.forward_source + "\n" + code.backward_source
    exec(compile(source, f"<cell c {spec.name or 'cell'}>", "exec"), namespace)  # noqa: S102 - generated: no spec text in it
    packs = issubclass(kernel, codegen.PackedCKernel) or (issubclass(kernel, c_loop.LoopCKernel) and dtype == torch.float32)
    return Program(code, namespace["forward"], namespace["backward"], packs)


_lock = threading.RLock()  # one probe at a time: other threads wait for its verdict


def c_works(dtype: torch.dtype, loop: bool = False) -> bool:
    """Whether the C kernels compile here and compute what the torch code computes, in `dtype`;
    with `loop`, whether they also do with the time loop in C. Checked once per process (the first
    failure warns once)."""
    with _lock:
        # Where the loop cannot run in C (no MKL to call), its program is the Python loop's.
        return _c_probe(dtype, loop and c_loop.available(dtype))


@cache
def _c_probe(dtype: torch.dtype, loop: bool) -> bool:
    error = _c_trial(dtype, loop)
    if error is None:
        return True
    if not loop:
        warnings.warn(f"nas: the C kernels do not work here in {dtype} ({error}); CPU cells run the torch "
                      f"kernels instead (slower; backend='torch', trainer.backend=torch on a command line, silences this)",
                      RuntimeWarning, stacklevel=3)
    elif _c_probe(dtype, False):  # (else that probe's warning says it all)
        warnings.warn(f"nas: the C time loop does not work here in {dtype} ({error}); the C kernels run from a "
                      f"Python loop instead (slower; Policy(c_loop=False) or NAS_C_LOOP=0 silences this)",
                      RuntimeWarning, stacklevel=3)
    return False


def _c_trial(dtype: torch.dtype, loop: bool) -> str | None:
    """Build the probe cell's C program (with `loop`) and check it: None when it computes what the
    torch code computes, else what went wrong, in one line."""
    try:
        with warnings.catch_warnings():
            # c_program's warning that the compiler failed: here, the probe's failure.
            warnings.filterwarnings("error", message="nas: could not compile", category=RuntimeWarning)
            spec = probe.probe_cell()
            prog = c_program(spec, dtype, loop)
            if prog is None:
                raise RuntimeError("no C form of the probe cell")
            probe.check(prog, spec, torch.device("cpu"), dtype)
    except Exception as err:  # noqa: BLE001 - any failure means: do not use them
        message = str(err).splitlines()[0] if str(err) else ""
        return f"{type(err).__name__}: {message}"
    return None
