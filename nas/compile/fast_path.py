"""The fast path of CompiledCell.sequence: one autograd node per layer and sequence.

`sequence(cell, xs, state)` computes what the reference path (the step code of nas.compile.plan under
autograd) computes, with whole-sequence code that nas.compile.backends.select picks per call by the
cell's backend setting (nas.compile.backends.policy): on the CPU, fused C
kernels per stage of a step (nas.compile.backends.c.codegen, float32/64, where a C compiler works), else one torch
call per op (nas.compile.sequence.forward); on a GPU, fused Triton kernels (nas.compile.backends.triton), else the torch code.
A cell with a user op (nas.cell.ops.register_op), which none of these generators knows, runs the
reference path (`uses_user_ops`).

- the x products, xw = x @ W_x^T + b_x over all steps, stay an ordinary autograd op (one GEMM
  forward, two backward), and so do the slices and concatenations that make each recurrent group's
  `base` out of them (nas.compile.sequence.forward.SeqCode.bases);
- `_Sequence`, a torch.autograd.Function, runs the time loop forward and, with the generated
  backward, in reverse; autograd sees one node where the reference path records dozens per step;
- under torch.no_grad (or when nothing requires a gradient) the forward runs alone, keeping nothing:
  every step reuses one scratch buffer per value;
- on a GPU, a shape seen twice runs as CUDA graphs (nas.compile.backends.cudagraphs): one launch per sequence
  instead of several per step.

Double backward is not supported (the generated backward is not itself differentiable: it raises),
nor a second backward through a retained graph (the CPU backward writes its gradients into the
forward's buffers, nas.compile.sequence.layout.Layout.hosts and nas.compile.backends.stage_code.hosted, and so may a CUDA
graph's): it raises ONE_BACKWARD. `fused=False` supports both.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import torch
from torch import Tensor

from nas.cell.ops import is_user_op
from nas.cell.spec import INPUT, CellSpec
from nas.compile.backends.select import graphs_for, select
from nas.compile.sequence.program import ONE_BACKWARD, Program, input_grads, inputs, transposed

__all__ = ["sequence", "uses_user_ops"]


class _Sequence(torch.autograd.Function):
    """apply(program, T, K, graphs, X, xw, *bias, *init, *w) -> (outputs, *final states).

    xw: the x products of the whole sequence (or None), bias: per recurrent group its bias vector
    (or None); the Function cuts both into the program's inputs (nas.compile.sequence.program.inputs)
    and sends the gradients back as one tensor each (`input_grads`): autograd would otherwise record a slice
    per piece and add up full-size zero-padded gradients. graphs: the cell's GraphCache on a GPU
    (nas.compile.backends.cudagraphs), else None."""

    @staticmethod
    def forward(ctx, prog: Program, T: int, K: int, graphs, X, xw, *tensors):
        nb = len(prog.code.bases)
        bias, init, w = tensors[:nb], tensors[nb:nb + K], tensors[nb + K:]
        base, xo = inputs(prog, xw, bias, T, init[0])
        rows = T * init[0].shape[0]
        runner = None if graphs is None else graphs.runner(
            prog, T, True, lambda ws: transposed(prog, ws, rows), X, base, xo, init, w)
        ctx.prog, ctx.T, ctx.n_xo, ctx.runner = prog, T, len(xo), runner
        ctx.xw_shape = None if xw is None else xw.shape
        ctx.bias_shapes = [None if b is None else b.shape for b in bias]
        if runner is not None:
            out, finals, ctx.held = runner.forward(X, base, xo, init, w)
            ctx.n_saved = 0
            ctx.save_for_backward(X, *xo, *w)
            return (out, *finals)
        out, finals, saved = prog.forward(T, True, X, base, xo, init, transposed(prog, w, rows))
        ctx.n_saved = len(saved)
        ctx.save_for_backward(X, *xo, *w, *saved)
        return (out, *(f.clone() for f in finals))

    @staticmethod
    @torch.autograd.function.once_differentiable  # the generated backward is not differentiable
    def backward(ctx, dout, *dfin):
        # A second backward would read buffers the first overwrote (Layout.hosts, stage_code.hosted,
        # CUDA graphs): this flag stops it. (Autograd's version check would not, under saved-tensor
        # hooks such as save_on_cpu, and the C kernels' writes do not bump versions.)
        if getattr(ctx, "backward_ran", False):
            raise RuntimeError(ONE_BACKWARD)
        ctx.backward_ran = True
        X, *rest = ctx.saved_tensors  # (autograd's own error if the caller changed one in place)
        nxo = ctx.n_xo
        xo, w, saved = rest[:nxo], rest[nxo:len(rest) - ctx.n_saved], rest[len(rest) - ctx.n_saved:]
        if ctx.runner is not None:
            dX, dbase, dxo, dinit, dw = ctx.runner.backward(ctx.held, dout, dfin, X, xo, w)
        else:
            dX, dbase, dxo, dinit, dw = ctx.prog.backward(ctx.T, dout, dfin, X, xo, w, saved)
            dinit = [d.clone() for d in dinit]  # the initial states' gradients may alias (zeros)
        dxw, dbias = input_grads(ctx.prog, dbase, dxo, ctx.xw_shape, ctx.bias_shapes, dout.shape[-1])
        return (None, None, None, None, dX, dxw, *dbias, *dinit, *dw)


def sequence(cell, xs: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, tuple[Tensor, ...]]:
    """CompiledCell.sequence on the fast path: xs (T, B, I), state K x (B, H) ->
    (outputs (T, B, H), final state).

    The buffers are written with out=, so every tensor must have one dtype: the promoted dtype of
    input, state and parameters, or under autocast the autocast dtype, for the whole recurrence (as
    autocast runs torch.nn.LSTM), with autocast off inside."""
    if uses_user_ops(cell.spec):
        return cell.reference_sequence(xs, state)
    if xs.is_cuda and xs.device.index != torch.cuda.current_device():
        # Triton kernels and CUDA graph capture use the current device's stream: make it xs's
        # (a search worker on cuda:1 does not call set_device).
        with torch.cuda.device(xs.device):
            return sequence(cell, xs, state)
    device = xs.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        with torch.autocast(device, enabled=False):
            return _run(cell, xs.to(dtype), tuple(s.to(dtype) for s in state), dtype)
    dtype = xs.dtype
    for t in (*state, *cell.parameters()):
        dtype = torch.promote_types(dtype, t.dtype)
    return _run(cell, xs.to(dtype), tuple(s.to(dtype) for s in state), dtype)


@lru_cache(maxsize=1024)
def uses_user_ops(spec: CellSpec) -> bool:
    """Whether `spec` has an op of nas.cell.ops.register_op: no generated code (C, Triton, the
    whole-sequence torch code) knows it, so the cell runs the reference path, the step code under
    autograd (warned once per op and process: it is slower)."""
    user = sorted({n.op for n in spec.nodes if is_user_op(n.op)})
    for name in user:
        if name not in _WARNED_USER_OPS:
            _WARNED_USER_OPS.add(name)
            warnings.warn(f"nas: op {name!r} is a user op (nas.cell.ops.register_op): cells that use it run "
                          "the reference torch path, step by step under autograd, not the fused kernels",
                          RuntimeWarning, stacklevel=4)
    return bool(user)


_WARNED_USER_OPS: set[str] = set()


def _run(cell, xs: Tensor, state: tuple[Tensor, ...], dtype: torch.dtype):
    prog = select(cell, xs, dtype)
    x_bias, flat = cell._group_params()
    flat = [None if t is None else t.to(dtype) for t in flat]
    T, B = xs.shape[0], xs.shape[1]
    xw = None
    if cell.plan.group(INPUT):
        xw = torch.nn.functional.linear(xs, cell.weight_x.to(dtype), None if x_bias is None else x_bias.to(dtype))

    bias = flat[1::2]
    X = xs if prog.code.raw_x else None
    weights = flat[0::2]
    graphs = graphs_for(cell, xs)
    tensors = [X, xw, *bias, *state, *weights]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        out, *finals = _Sequence.apply(prog, T, len(state), graphs, *tensors)
        return out, tuple(finals)
    bases, xo = inputs(prog, xw, bias, T, state[0])
    runner = None if graphs is None else graphs.runner(
        prog, T, False, lambda ws: transposed(prog, ws, T * B), X, bases, xo, state, weights)
    if runner is not None:
        out, finals, _ = runner.forward(X, bases, xo, state, weights)
        return out, finals
    out, finals, _ = prog.forward(T, False, X, bases, xo, state, transposed(prog, weights, T * B))
    return out, tuple(finals)
