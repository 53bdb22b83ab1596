"""A whole-sequence program and its calling convention, shared by every backend.

A `Program` is the generated forward and backward of one cell for one backend (the torch code of
nas.compile.sequence.forward, C kernels, Triton kernels), with the description of its inputs
(`SeqCode`). All programs of a cell take the same inputs and give the same outputs:

    forward(T, keep, X, base, xo, init, wt) -> (outputs (T, B, H), finals, saved)
    backward(T, dout, dfin, X, xo, w, saved) -> (dX, dbase, dxo, dinit, dw)

`inputs` cuts a layer's x products and biases into `base` and `xo`; `input_grads` sums their
gradients back. The autograd function (nas.compile.fast_path) and the probe
(nas.compile.backends.probe) both call programs through these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from nas.cell.spec import CellSpec
from nas.compile.plan import lower
from nas.compile.sequence.fast_ops import ATEN_BACKWARDS
from nas.compile.sequence.forward import SeqCode, generate

ONE_BACKWARD = ("CellRNN: one backward per forward on the fast path (a second backward through a "
                "retained graph is not supported); use CellRNN(..., fused=False) for that")


@dataclass(frozen=True)
class Program:
    code: SeqCode
    forward: Callable
    backward: Callable
    packs: bool = False  # its forward packs the weights for MKL, from any layout (nas.compile.backends.c.mkl.pack)


def _steps(buf: Tensor, T: int, lo: int | None = None, hi: int | None = None) -> list[Tensor]:
    """Per-step views of columns lo:hi of a (T, B, .) buffer (or of the first T rows of a
    (T + 1, B, .) one: nas.compile.backends.stage_code.hosted); of a (1, B, .) scratch, T times."""
    view = buf if lo is None else buf[:, :, lo:hi]
    if view.shape[0] == T + 1:
        return view.unbind(0)[:T]
    return view.unbind(0) if view.shape[0] == T else [view[0]] * T


def _strided(buf: Tensor, T: int, H: int, lo: int, hi: int, step: int) -> list[Tensor]:
    """Per-step (B, n, H) views of the column blocks lo, lo + step, ... < hi (units of H)."""
    view = buf.unflatten(2, (-1, H))[:, :, lo:hi:step]
    return view.unbind(0) if view.shape[0] == T else [view[0]] * T


def _hist(S: Tensor, T: int) -> list[Tensor]:
    """Per-step slots of a state: (T + 1, B, H) kept, or two (B, H) slots used in turn."""
    if S.shape[0] == T + 1:
        return S.unbind(0)
    return list(S.unbind(0)) * (T // 2 + 1)


def _last(S: Tensor, T: int) -> Tensor:
    return S[T] if S.shape[0] == T + 1 else S[T % 2]


def _raw(overload) -> Callable:
    # The C++ operator behind an OpOverload: calling it skips a Python wrapper (~1 us a call).
    return getattr(overload, "_op", overload)


_ATEN = {f"_{name}{suffix}": _raw(getattr(getattr(torch.ops.aten, name), overload))
         for name in ATEN_BACKWARDS for suffix, overload in (("", "default"), ("_out", "grad_input"))}


# What every generated whole-sequence function may call (each backend adds its own).
HELPERS = {"torch": torch, "_steps": _steps, "_hist": _hist, "_last": _last}


@lru_cache(maxsize=4096)
def program(spec: CellSpec) -> Program:
    """The torch code of `spec` (one call per op; cached: a cell is generated once per process)."""
    code = generate(lower(spec))
    namespace = {**HELPERS, "_strided": _strided, **_ATEN}
    source = code.forward_source + "\n" + code.backward_source
    # The generator's own code: it names variables itself, so no spec text reaches it.
    exec(compile(source, f"<cell sequence {spec.name or 'cell'}>", "exec"), namespace)  # noqa: S102
    return Program(code, namespace["forward"], namespace["backward"])


def inputs(prog: Program, xw: Tensor | None, bias, T: int, like: Tensor) -> tuple[list, list]:
    """The program's `base` (per recurrent group: what its product is added to, see
    SeqCode.bases) and `xo` inputs, as views of xw and bias where they can be."""
    B, H = like.shape

    def piece(kind: str, lo: int, hi: int, b: Tensor | None) -> Tensor:
        if kind == "x":
            return xw if lo == 0 and hi * H == xw.shape[-1] else xw[..., lo * H:hi * H]
        if b is None:
            return like.new_zeros(T, B, (hi - lo) * H)
        return b[lo * H:hi * H].expand(T, B, (hi - lo) * H)

    bases: list[Tensor | None] = []
    for how, b in zip(prog.code.bases, bias):
        if how is None or how == "bias":
            bases.append(None if how is None else b)
        else:
            parts = [piece(kind, lo, hi, b) for kind, lo, hi in how]
            bases.append(parts[0] if len(parts) == 1 else torch.cat(parts, -1))
    return bases, [piece("x", lo, hi, None) for lo, hi in prog.code.xonly]


def input_grads(prog: Program, dbase, dxo, xw_shape, bias_shapes, H: int) -> tuple:
    """The gradients of xw and of each group's bias from those of the program's inputs: the
    x pieces of the bases and the xo cover xw's columns once each."""
    dxw: Tensor | None = None
    covered = 0

    def put(lo: int, hi: int, grad: Tensor) -> None:
        nonlocal dxw, covered
        covered += (hi - lo) * H
        if grad.shape[-1] == xw_shape[-1]:
            dxw = grad  # the whole of xw: no copy
            return
        if dxw is None:
            dxw = grad.new_empty(xw_shape)
        dxw[..., lo * H:hi * H] = grad

    dbias: list[Tensor | None] = []
    for how, d, shape in zip(prog.code.bases, dbase, bias_shapes):
        if how is None or how == "bias":
            dbias.append(None if how is None else d)
            continue
        db, col = None, 0
        for kind, lo, hi in how:
            block = d[..., col:col + (hi - lo) * H]
            col += (hi - lo) * H
            if kind == "x":
                put(lo, hi, block)
            elif shape is not None:  # a bias piece, expanded over (T, B) in the forward
                db = d.new_zeros(shape) if db is None else db
                db[lo * H:hi * H] = block.sum((0, 1))
        dbias.append(db)
    for (lo, hi), d in zip(prog.code.xonly, dxo):
        put(lo, hi, d)
    if xw_shape is not None and covered != xw_shape[-1]:
        raise AssertionError(f"fused: the inputs cover {covered} of xw's {xw_shape[-1]} columns")
    return dxw, dbias


def transposed(prog: Program, weights, rows: int) -> list[Tensor]:
    """The weights as the forward takes them (W^T)."""
    # W^T made contiguous once per sequence: the per-step (B, H) @ (H, n) product is ~20% faster
    # than on the transposed view at B = 32, and the copy costs about one step's product; so only
    # when the sequence has enough rows (T * B) to pay for it. Not where MKL packs the weights: it
    # packs from the transposed view 3-8x faster than a copy and a pack (darts_v2's six weights
    # at hidden 256: about 2% of a training step).
    return [w.t().contiguous() if rows >= 256 and not prog.packs else w.t() for w in weights]
