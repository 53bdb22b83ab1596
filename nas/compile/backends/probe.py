"""Whether a backend's program computes what the torch code computes: checked on random tensors.

A backend (nas.compile.backends.base) is used only after its program for the probe cell, a cell
with every built-in op, has run one forward and backward on random inputs here and matched the torch
program (nas.compile.sequence.program.program) of the same cell. A GPU or driver that Triton cannot
compile for, a missing C compiler, a broken install or a compiler that miscompiles the kernels thus
costs a warning and the torch code, not a crash or wrong numbers in the middle of a search.

The probe calls the two programs directly, through their calling convention: no module, no autograd,
no backend selection. It draws its tensors from a generator of its own, so the caller's random
numbers stay as they were, and runs the same in any mode the caller is in (inference_mode, no_grad,
autocast).
"""

from __future__ import annotations

import contextlib
from functools import cache

import torch
from torch import Tensor

from nas.cell.spec import INPUT, CellSpec
from nas.compile.plan import lower
from nas.compile.sequence.program import Program, input_grads, inputs, program, transposed

PROBE = {"state": ["h", "c"], "nodes": {
    "a": {"op": "linear", "in": ["x", "h"]}, "g": {"op": "sigmoid", "in": ["a"]},
    "t": {"op": "tanh", "in": ["c"]}, "r": {"op": "relu", "in": ["a"]},
    "l": {"op": "leaky_relu", "in": ["t"]}, "s": {"op": "sub", "in": ["r", "l"]},
    "m": {"op": "mean", "in": ["s", "g"]}, "b": {"op": "blend", "in": ["g", "m", "h"]},
    "p": {"op": "mul", "in": ["b", "t"]}, "q": {"op": "add", "in": ["p", "c"]},
    "i": {"op": "identity", "in": ["q"]}}, "outputs": {"h": "b", "c": "i"}}

# Relative to the largest value compared (+ 1): float64 and float32 as exact as the torch code's
# rounding allows. The half types are compared with a float32 torch program: the probe cell's torch
# code in bfloat16 differs from it by 0.012 (float16: 0.001), so a bound of 0.1 passes rounding and
# catches a program that computes something else.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4}
HALF_TOLERANCE = 0.1


@cache
def probe_cell() -> CellSpec:
    return CellSpec.from_dict(PROBE)


def check(prog: Program, spec: CellSpec, device: torch.device, dtype: torch.dtype,
          T: int = 5, B: int = 3, H: int = 16) -> None:
    """Raise RuntimeError (one line) unless `prog`, a program of `spec`, gives the torch program's
    outputs and gradients on random inputs in `dtype` on `device` (T steps, batch B, hidden H)."""
    reference_dtype = dtype if dtype in TOLERANCE else torch.float32
    tol = TOLERANCE.get(dtype, HALF_TOLERANCE)
    args = _random_args(spec, T, B, H)
    with _plain_mode(device):
        got = _run(prog, T, H, [None if a is None else _to(a, device, dtype) for a in args])
        want = _run(program(spec), T, H, [None if a is None else _to(a, device, reference_dtype) for a in args])
        worst = max(_error(a, b) for a, b in zip(got, want, strict=True))
    if not worst < tol:
        raise RuntimeError(f"they differ from the torch code's results by {worst:.2g} (relative)")


def _to(t, device: torch.device, dtype: torch.dtype):
    return [_to(u, device, dtype) for u in t] if isinstance(t, list) else t.to(device, dtype)


def _random_args(spec: CellSpec, T: int, B: int, H: int) -> list:
    """[X, xw, biases, init, weights, dout, dfin] for `spec`'s programs, on the CPU in float64."""
    plan = lower(spec)
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    xg = plan.group(INPUT)
    recurrent = [grp for grp in plan.groups if grp.source != INPUT]
    X = rand(T, B, H) if plan.needs_raw_x else None
    xw = rand(T, B, len(xg.bias_rows) * H) if xg else None
    bias = [rand(len(grp.bias_rows) * H) for grp in recurrent]
    init = [rand(B, H) for _ in spec.state]
    weights = [rand(len(grp.bias_rows) * H, H) / H ** 0.5 for grp in recurrent]
    return [X, xw, bias, init, weights, rand(T, B, H), [rand(B, H) for _ in spec.state]]


def _run(prog: Program, T: int, H: int, args: list) -> list[Tensor | None]:
    """One forward (keeping what the backward needs) and one backward: outputs, final states and
    the gradients of every input."""
    X, xw, bias, init, w, dout, dfin = args
    base, xo = inputs(prog, xw, bias, T, init[0])
    out, finals, saved = prog.forward(T, True, X, base, xo, init, transposed(prog, w, T * init[0].shape[0]))
    out, finals = out.clone(), [f.clone() for f in finals]
    dX, dbase, dxo, dinit, dw = prog.backward(T, dout, dfin, X, xo, w, saved)
    dxw, dbias = input_grads(prog, dbase, dxo, None if xw is None else xw.shape, [b.shape for b in bias], H)
    return [out, *finals, dX, dxw, *dbias, *dinit, *dw]


def _error(a: Tensor | None, b: Tensor | None) -> float:
    """|a - b| relative to the largest |b| (+ 1); a missing gradient counts as zeros."""
    if a is None and b is None:
        return 0.0
    a = torch.zeros_like(b) if a is None else a
    b = torch.zeros_like(a) if b is None else b
    a, b = a.double().cpu(), b.double().cpu()
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max() / (b.abs().max() + 1)) if a.numel() else 0.0


@contextlib.contextmanager
def _plain_mode(device: torch.device):
    """Ordinary tensors, no autocast, no autograd recording: whatever mode the caller is in."""
    with torch.inference_mode(False), torch.no_grad(), torch.autocast(device.type, enabled=False):
        yield
