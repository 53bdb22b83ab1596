"""The fast path of CompiledCell.sequence: one autograd node per layer and sequence.

`sequence(cell, xs, state)` computes what the reference path (the step code of nas.compile.plan under
autograd) computes, with whole-sequence code (`select` picks it per call): on the CPU, fused C
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
forward's buffers, nas.compile.sequence.layout.Layout.hosts and nas.compile.backends.triton.hosted, and so may a CUDA
graph's): it raises ONE_BACKWARD. `fused=False` supports both.
"""

from __future__ import annotations

import importlib.util
import linecache
import os
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from nas.cell.ops import is_user_op
from nas.cell.spec import INPUT, CellSpec
from nas.compile.backends import triton as gpugen
from nas.compile.backends.c import codegen as cgen
from nas.compile.backends.c import loop as cloop
from nas.compile.backends.c import mkl
from nas.compile.backends.probe import c_works, triton_works
from nas.compile.plan import lower
from nas.compile.sequence.fast_ops import ATEN_BACKWARDS
from nas.compile.sequence.forward import SeqCode, generate


def _steps(buf: Tensor, T: int, lo: int | None = None, hi: int | None = None) -> list[Tensor]:
    """Per-step views of columns lo:hi of a (T, B, .) buffer (or of the first T rows of a
    (T + 1, B, .) one: nas.compile.backends.triton.hosted); of a (1, B, .) scratch, T times."""
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


# What every generated whole-sequence function may call (each generator adds its own).
_HELPERS = {"torch": torch, "_steps": _steps, "_hist": _hist, "_last": _last}


@dataclass(frozen=True)
class Program:
    code: SeqCode
    forward: Callable
    backward: Callable
    packs: bool = False  # its forward packs the weights for MKL, from any layout (nas.compile.backends.c.mkl.pack)


@lru_cache(maxsize=1024)
def gpu_program(spec: CellSpec) -> Program | None:
    """The GPU form of `program` (nas.compile.backends.triton: one fused Triton kernel per stage of a step),
    or None when Triton is missing or an op has no Triton form. (Under TRITON_INTERPRET=1 the
    kernels run in Triton's CPU interpreter: how the tests run it without a GPU.)"""
    plan = lower(spec)
    if importlib.util.find_spec("triton") is None or not gpugen.supported(plan):
        return None
    import triton
    import triton.language as tl

    code, kernels = gpugen.generate(plan)
    namespace = {**_HELPERS, "triton": triton, "tl": tl, "BLOCK": gpugen.BLOCK}
    # Triton reads a kernel's source back (inspect.getsource): the generated text goes into
    # linecache under a name of its own, as if it were a file.
    source = kernels + "\n\n" + code.forward_source + "\n" + code.backward_source
    name = f"<cell gpu {spec.canonical_hash()}>"
    linecache.cache[name] = (len(source), None, source.splitlines(keepends=True), name)
    exec(compile(source, name, "exec"), namespace)  # noqa: S102 - generated: no spec text in it
    if os.environ.get("TRITON_INTERPRET") != "1":  # (the interpreter reads it again at each call)
        del linecache.cache[name]  # Triton read it when the kernels were defined; searches make thousands
    return Program(code, namespace["forward"], namespace["backward"])


def c_program(spec: CellSpec, dtype: torch.dtype, loop: bool = True) -> Program | None:
    """The CPU form of `program` with one fused C kernel per stage (nas.compile.backends.c.codegen), for float32 or
    float64, and the time loop in C (nas.compile.backends.c.loop) where MKL can be called from it and `loop`;
    None (after a warning) when an op has no C form or the compiler fails. Cached: each form of a
    cell is compiled once per process (where the loop cannot run in C, `loop` changes nothing)."""
    return _c_program(spec, dtype, loop and cloop.available(dtype))


@lru_cache(maxsize=1024)
def _c_program(spec: CellSpec, dtype: torch.dtype, loop: bool) -> Program | None:
    plan = lower(spec)
    if not cgen.supported(plan):
        return None
    # Else the loop runs in Python, with MKL's packed GEMM for float32 where there is one; and so it
    # does where the C loop fails to compile but the kernels alone do.
    kernels = [cgen.PackedCKernel if dtype == torch.float32 and mkl.available() else cgen.CKernel]
    if loop and cloop.available(dtype):
        kernels.insert(0, cloop.LoopCKernel)
    errors = []
    for kernel in kernels:
        try:
            prog = build_c_program(spec, dtype, kernel)
        except cgen.CompileError as err:
            errors.append(err)
            continue
        if errors:
            warnings.warn(f"nas: could not compile the C time loop of cell {spec.canonical_hash()[:12]} "
                          f"({errors[0]}); it runs its C kernels from a Python loop", RuntimeWarning, stacklevel=3)
        return prog
    warnings.warn(f"nas: could not compile the C kernels of cell {spec.canonical_hash()[:12]} ({errors[-1]}); "
                  f"it runs the torch kernels", RuntimeWarning, stacklevel=3)
    return None


def build_c_program(spec: CellSpec, dtype: torch.dtype, kernel: type[cgen.CKernel]) -> Program:
    """`spec`'s C program with the given kernel class (c_program chooses it; benchmarks/cells.py's
    --floor passes its own), compiled now and not cached; cgen.CompileError if that fails."""
    if issubclass(kernel, cloop.LoopCKernel) and not cloop.available(dtype):
        raise ValueError(f"build_c_program: no MKL to call from a C loop in {dtype} here")
    if issubclass(kernel, cgen.PackedCKernel) and not (dtype == torch.float32 and mkl.available()):
        raise ValueError(f"build_c_program: MKL's packed GEMM is for float32 where torch exports it, not {dtype}")
    code, source = cgen.generate(lower(spec), kernel)
    kernels = cgen.build(source, dtype)
    namespace = {**_HELPERS, "_unit_columns": cgen._unit_columns, "_strides": cgen._strides,
                 "_take": cgen.POOL.take, **kernels}
    if issubclass(kernel, cloop.LoopCKernel):
        namespace.update(cloop.namespace(dtype))
    elif issubclass(kernel, cgen.PackedCKernel):
        namespace.update(_pack=mkl.pack, _mm=mkl.compute())
    source = code.forward_source + "\n" + code.backward_source
    exec(compile(source, f"<cell c {spec.name or 'cell'}>", "exec"), namespace)  # noqa: S102 - generated: no spec text in it
    packs = issubclass(kernel, cgen.PackedCKernel) or (issubclass(kernel, cloop.LoopCKernel) and dtype == torch.float32)
    return Program(code, namespace["forward"], namespace["backward"], packs)


c_program.cache_clear = _c_program.cache_clear  # (as on the other cached program functions)


# Programs that a caller chose for particular cells, whatever their switches and the environment say:
# the C probe's cells (it must test the C code it was asked about) and benchmarks/cells.py --floor.
_FORCED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def force(cell, prog: Program | None, dtype: torch.dtype | None = None) -> None:
    """From now on, `select` gives `cell` (a CompiledCell) the CPU program `prog` for its CPU calls
    in `dtype` (any, if None; a C program is made for one); None undoes it. The cell itself: a copy
    or a pickle of it is not forced."""
    if prog is None:
        _FORCED.pop(cell, None)
    else:
        _FORCED[cell] = (prog, dtype)


def select(cell, xs: Tensor, dtype: torch.dtype) -> Program:
    """The program for this call: the GPU kernels for a CUDA float32/16 run, the C kernels for a
    CPU float32/64 run (when they work here), else the torch code."""
    if xs.numel() == 0:  # (an empty batch: autograd's expanded gradient of it has stride 0 everywhere)
        return program(cell.spec)
    if _FORCED and not xs.is_cuda:
        prog, forced_dtype = _FORCED.get(cell, (None, None))
        if prog is not None and forced_dtype in (None, dtype):
            return prog
    if too_large(cell.spec):
        return program(cell.spec)
    if xs.is_cuda:
        if dtype in (torch.float32, torch.bfloat16, torch.float16) and cell.triton and \
                os.environ.get("NAS_TRITON", "1") != "0" and triton_works(xs.device, dtype):
            prog = gpu_program(cell.spec)
            if prog is not None:
                return prog
    elif dtype in cgen.DTYPES and cell.c_kernels and os.environ.get("NAS_C_KERNELS", "1") != "0":
        prog = c_choice(cell.spec, dtype, cell.c_loop and os.environ.get("NAS_C_LOOP", "1") != "0")
        if prog is not None:
            return prog
    return program(cell.spec)


# Cells with more nodes than this run the torch code (one call per op) instead of generated C or
# Triton kernels. The kernels' compile time grows with their source, about 1 KB of C per node: gcc
# -O3 took 1.1 s of CPU for a 60-node chain with a linear node every 4th, 3.2 s at 128 nodes, 8 s at
# 300 (20-100 s of wall time under heavy load), per dtype; the torch code of a 1000-node cell is made
# in under a second. Its steps are slower (~4x for that 300-node chain at hidden size 32), so a
# long run of a large cell may raise the cap with $NAS_MAX_KERNEL_NODES. Every cell of
# nas.cell.known and of the default search spaces is far below it (enas: 61 nodes).
MAX_KERNEL_NODES = 128


def kernel_node_cap() -> int:
    """$NAS_MAX_KERNEL_NODES where it is set, else MAX_KERNEL_NODES."""
    text = os.environ.get("NAS_MAX_KERNEL_NODES")
    if text is None:
        return MAX_KERNEL_NODES
    if not text.strip().isdigit():
        raise ValueError(f"NAS_MAX_KERNEL_NODES: expected a non-negative integer, got {text!r}")
    return int(text)


@lru_cache(maxsize=1024)
def too_large(spec: CellSpec) -> bool:
    """Whether `spec` has more nodes than `kernel_node_cap()`; if so, warns (once per cell) that it
    runs the torch code. Cached per cell: `too_large.cache_clear()` forgets the answers."""
    cap = kernel_node_cap()
    if len(spec.nodes) <= cap:
        return False
    warnings.warn(f"nas: cell {spec.name or spec.canonical_hash()[:12]} has {len(spec.nodes)} nodes, more than "
                  f"the {cap} for which C or Triton kernels are compiled (their compile time grows with the "
                  f"cell; NAS_MAX_KERNEL_NODES raises the cap): it runs the torch code, one call per op",
                  RuntimeWarning, stacklevel=5)
    return True


def c_choice(spec: CellSpec, dtype: torch.dtype, loop: bool) -> Program | None:
    """The C program that `select` runs for `spec` in `dtype`: with the time loop in C where `loop`
    and its probe passed, else with the Python loop where the kernels' probe passed; else None."""
    loop = loop and c_works(dtype, loop=True)
    return c_program(spec, dtype, loop) if loop or c_works(dtype) else None


@lru_cache(maxsize=4096)
def program(spec: CellSpec) -> Program:
    """The compiled whole-sequence code of `spec` (cached: a cell is generated once per process)."""
    code = generate(lower(spec))
    namespace = {**_HELPERS, "_strided": _strided, **_ATEN}
    source = code.forward_source + "\n" + code.backward_source
    # The generator's own code: it names variables itself, so no spec text reaches it.
    exec(compile(source, f"<cell sequence {spec.name or 'cell'}>", "exec"), namespace)  # noqa: S102
    return Program(code, namespace["forward"], namespace["backward"])


ONE_BACKWARD = ("CellRNN: one backward per forward on the fast path (a second backward through a "
                "retained graph is not supported); use CellRNN(..., fused=False) for that")


class _Sequence(torch.autograd.Function):
    """apply(program, T, K, graphs, X, xw, *bias, *init, *w) -> (outputs, *final states).

    xw: the x products of the whole sequence (or None), bias: per recurrent group its bias vector
    (or None); the Function cuts both into the program's inputs (`_inputs`) and sends the
    gradients back as one tensor each (`_input_grads`): autograd would otherwise record a slice
    per piece and add up full-size zero-padded gradients. graphs: the cell's GraphCache on a GPU
    (nas.compile.backends.cudagraphs), else None."""

    @staticmethod
    def forward(ctx, prog: Program, T: int, K: int, graphs, X, xw, *tensors):
        nb = len(prog.code.bases)
        bias, init, w = tensors[:nb], tensors[nb:nb + K], tensors[nb + K:]
        base, xo = _inputs(prog, xw, bias, T, init[0])
        rows = T * init[0].shape[0]
        runner = None if graphs is None else graphs.runner(
            prog, T, True, lambda ws: _transposed(prog, ws, rows), X, base, xo, init, w)
        ctx.prog, ctx.T, ctx.n_xo, ctx.runner = prog, T, len(xo), runner
        ctx.xw_shape = None if xw is None else xw.shape
        ctx.bias_shapes = [None if b is None else b.shape for b in bias]
        if runner is not None:
            out, finals, ctx.held = runner.forward(X, base, xo, init, w)
            ctx.n_saved = 0
            ctx.save_for_backward(X, *xo, *w)
            return (out, *finals)
        out, finals, saved = prog.forward(T, True, X, base, xo, init, _transposed(prog, w, rows))
        ctx.n_saved = len(saved)
        ctx.save_for_backward(X, *xo, *w, *saved)
        return (out, *(f.clone() for f in finals))

    @staticmethod
    @torch.autograd.function.once_differentiable  # the generated backward is not differentiable
    def backward(ctx, dout, *dfin):
        # A second backward would read buffers the first overwrote (Layout.hosts, gpugen.hosted,
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
        dxw, dbias = _input_grads(ctx.prog, dbase, dxo, ctx.xw_shape, ctx.bias_shapes, dout.shape[-1])
        return (None, None, None, None, dX, dxw, *dbias, *dinit, *dw)


def _inputs(prog: Program, xw: Tensor | None, bias, T: int, like: Tensor) -> tuple[list, list]:
    """The program's `base` (per recurrent group: what its product is added to, see
    seqgen.SeqCode.bases) and `xo` inputs, as views of xw and bias where they can be."""
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


def _input_grads(prog: Program, dbase, dxo, xw_shape, bias_shapes, H: int) -> tuple:
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


def _transposed(prog: Program, weights, rows: int) -> list[Tensor]:
    # W^T made contiguous once per sequence: the per-step (B, H) @ (H, n) product is ~20% faster
    # than on the transposed view at B = 32, and the copy costs about one step's product; so only
    # when the sequence has enough rows (T * B) to pay for it. Not where MKL packs the weights: it
    # packs from the transposed view 3-8x faster than a copy and a pack (darts_v2's six weights
    # at hidden 256: about 2% of a training step).
    return [w.t().contiguous() if rows >= 256 and not prog.packs else w.t() for w in weights]


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
    graphs = cell._graphs if cell.cuda_graphs and (xs.is_cuda or cell._graphs.emulated) else None
    tensors = [X, xw, *bias, *state, *weights]
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        out, *finals = _Sequence.apply(prog, T, len(state), graphs, *tensors)
        return out, tuple(finals)
    bases, xo = _inputs(prog, xw, bias, T, state[0])
    runner = None if graphs is None else graphs.runner(
        prog, T, False, lambda ws: _transposed(prog, ws, T * B), X, bases, xo, state, weights)
    if runner is not None:
        out, finals, _ = runner.forward(X, bases, xo, state, weights)
        return out, finals
    out, finals, _ = prog.forward(T, False, X, bases, xo, state, _transposed(prog, weights, T * B))
    return out, tuple(finals)
