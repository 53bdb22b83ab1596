"""CUDA graphs of the whole-sequence code: the time loop launched as one graph on the GPU.

On a GPU the generated forward and backward (nas.compile.sequence.forward) are bound by launches, not by math:
each step is a handful of small kernels, each a few microseconds of Python and driver time, while
the GPU finishes it in less. A CUDA graph records the kernels of a whole sequence once and replays
them with one launch. The generated code fits the rules of capture: fixed shapes for a given
(T, B), no host synchronisation, no data-dependent control flow.

`GraphCache` (one per CompiledCell) holds a `Runner` per shape. A shape is captured the second
time it is seen, so one-off shapes (the tail of a validation split) run eagerly and cost nothing.
A runner owns static input buffers (each call copies its inputs in), the captured forward (and,
for training, backward) and their outputs:

- the outputs the caller keeps (the sequence output, final states, gradients that can reach
  leaves) are cloned out, because the next replay overwrites the static buffers;
- the values saved for backward stay in the static buffers while they are valid: the usual
  forward, backward, forward, ... costs no copy. If the runner must replay while the buffers hold
  the values of a call that still awaits its backward (two forwards, then two backwards, in any
  order), that call's values are first copied out (`_Saved.evict`), and copied back in for its
  backward.

All runners of a process warm up and capture on one side stream per device (`side_stream`): a
stream per runner would leave each its own cuBLAS workspace and its own cached allocator blocks,
memory that is never returned while the process lives.

The graph computes what the eager code computes, with the same kernels: tests/compile/test_cudagraphs.py
compares the two on a GPU (skipped where there is none).
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor

from nas.compile.sequence.program import ONE_BACKWARD

# How many shapes one cell keeps graphs for (training T, validation T, sampling ...): each holds
# static buffers about the size of the activations of one sequence.
MAX_SHAPES = 4


class EmulatedStream:
    """What `side_stream` hands to emulated runners: it names a device and is never launched on."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __repr__(self) -> str:
        return f"EmulatedStream({self.device})"


# (emulated, device) -> the side stream. Shared by all runners: warm-up and capture on one stream
# per device is PyTorch's advice for bounded memory (pytorch/pytorch#99196), and torch allows one
# capture at a time per process, so no two runners use it at once.
_side_streams: dict[tuple[bool, torch.device], object] = {}
_side_streams_lock = threading.Lock()


def side_stream(device: torch.device | str, emulated: bool = False):
    """The one stream this process warms up and captures CUDA graphs on for `device`, made on first
    use ("cuda" means the current device). emulated: an EmulatedStream, for capture_emulated."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if not emulated and device.type != "cuda":
        raise ValueError(f"side_stream: expected a CUDA device for a real capture, got {device}")
    with _side_streams_lock:
        stream = _side_streams.get((emulated, device))
        if stream is None:
            stream = EmulatedStream(device) if emulated else torch.cuda.Stream(device)
            _side_streams[(emulated, device)] = stream
    return stream


def capture_cuda(fn: Callable, pool, stream) -> tuple[Callable, object]:
    """Capture fn's kernels as a CUDA graph on `stream`: (replay, fn's outputs, which each replay
    rewrites)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
        out = fn()
    return graph.replay, out


def capture_emulated(fn: Callable, pool, stream) -> tuple[Callable, object]:
    """What capture_cuda does, on any device, for the tests of the bookkeeping on machines without a
    GPU: each replay runs fn again and writes its results over the first call's outputs."""
    out = fn()

    def replay() -> None:
        for dst, src in zip(_leaves(out), _leaves(fn())):
            dst.copy_(src)
    return replay, out


def _leaves(tree) -> list[Tensor]:
    if isinstance(tree, Tensor):
        return [tree]
    if isinstance(tree, (tuple, list)):
        return [leaf for t in tree for leaf in _leaves(t)]
    return []


def _static(t: Tensor | None) -> Tensor | None:
    # Contiguous, whatever the input's strides: an expanded bias (stride 0) becomes a real buffer,
    # which the generated code reads like any other.
    return None if t is None else torch.empty(t.shape, dtype=t.dtype, device=t.device)


def _load(dst: list, src) -> None:
    for d, s in zip(dst, src):
        if d is not None:
            d.copy_(s)


def _clone(ts) -> tuple:
    return tuple(None if t is None else t.clone() for t in ts)


class _Saved:
    """One forward call's saved values: in the runner's static buffers until evicted."""

    __slots__ = ("__weakref__", "copies")

    def __init__(self) -> None:
        self.copies: tuple | None = None

    def evict(self, runner: Runner) -> None:
        self.copies = _clone(runner.saved)


class Runner:
    """The captured forward (keep=False: alone; keep=True: with its backward) at one shape."""

    def __init__(self, prog, T: int, keep: bool, transpose: Callable, X, base, xo, init, w,
                 capture: Callable) -> None:
        self.keep = keep
        self.X, self.base, self.xo = _static(X), [_static(b) for b in base], [_static(t) for t in xo]
        self.init, self.w = [_static(s) for s in init], [_static(t) for t in w]
        self._occupant: weakref.ref | None = None  # the call whose saved values are in the buffers
        self._live: weakref.WeakSet = weakref.WeakSet()  # calls whose backward has not run yet
        self.evictions = 0  # saved values copied out (a plain training loop makes none)
        self._load(X, base, xo, init, w)
        B, H = init[0].shape
        self.dout = init[0].new_empty(T, B, H).normal_()  # the backward's static inputs
        self.dfin = [s.new_empty(B, H).normal_() for s in init]

        def forward():
            return prog.forward(T, keep, self.X, self.base, self.xo, self.init, transpose(self.w))

        def backward():
            return prog.backward(T, self.dout, self.dfin, self.X, self.xo, self.w, self.saved)

        pool = None
        device = init[0].device  # X may be None (its products come precomputed in base)
        self.stream = side_stream(device, emulated=capture is not capture_cuda)
        if capture is capture_cuda:
            pool = torch.cuda.graph_pool_handle()  # one memory pool per runner, shared by its graphs
            # Warm up on the side stream (cuBLAS workspaces, the allocator), then capture on it:
            # torch's recipe, with the process's one stream for this device.
            main = torch.cuda.current_stream(device)
            self.stream.wait_stream(main)
            with torch.cuda.stream(self.stream):
                _, _, self.saved = forward()
                if keep:
                    backward()
            main.wait_stream(self.stream)
        self.replay_forward, (self.out, self.finals, self.saved) = capture(forward, pool, self.stream)
        if keep:
            self.replay_backward, self.grads = capture(backward, pool, self.stream)

    def _load(self, X, base, xo, init, w) -> None:
        _load([self.X, *self.base, *self.xo, *self.init, *self.w], [X, *base, *xo, *init, *w])

    def _vacate(self) -> None:
        """Copy out the saved values now in the static buffers if their backward is still to come."""
        occupant = self._occupant() if self._occupant is not None else None
        if occupant is not None and occupant in self._live and occupant.copies is None:
            occupant.evict(self)
            self.evictions += 1

    def forward(self, X, base, xo, init, w) -> tuple[Tensor, tuple, _Saved | None]:
        self._vacate()
        self._load(X, base, xo, init, w)
        self.replay_forward()
        out, finals = self.out.clone(), _clone(self.finals)
        if not self.keep:
            self._occupant = None
            return out, finals, None
        saved = _Saved()
        self._occupant = weakref.ref(saved)
        self._live.add(saved)
        return out, finals, saved

    def backward(self, saved: _Saved, dout: Tensor, dfin, X, xo, w) -> tuple:
        """The generated backward of the call that returned `saved`; X, xo, w: that call's inputs."""
        if saved not in self._live:  # its backward ran: the static buffers may hold gradients now
            raise RuntimeError(ONE_BACKWARD)
        if saved.copies is not None:  # evicted: put this call's values back, after the occupant's
            self._vacate()
            _load([self.X, *self.xo, *self.w], [X, *xo, *w])
            _load(list(self.saved), saved.copies)
            saved.copies = None
            self._occupant = weakref.ref(saved)
        self.dout.copy_(dout)
        _load(self.dfin, dfin)
        self.replay_backward()
        self._live.discard(saved)
        self._occupant = None  # a backward may write into the saved buffers (nas.compile.sequence.backward)
        dX, dbase, dxo, dinit, dw = self.grads
        # The gradients of x, the initial state and the weights may reach leaves (.grad keeps
        # them): copies. Those of the x products go only into this backward pass's own nodes (the
        # slices and the matmul that made them, inside CompiledCell), which consume them before
        # any other replay, unless another call of this runner awaits its backward in the same
        # pass: then copies too.
        private = not self._live
        dbase, dxo = (dbase, dxo) if private else (_clone(dbase), _clone(dxo))
        return (None if dX is None else dX.clone(), dbase, dxo, _clone(dinit), _clone(dw))


class GraphCache:
    """The runners of one cell, by shape. Not copied or saved with the module (CompiledCell's
    __getstate__): graphs point at the original's buffers; a copy starts with an empty cache."""

    def __init__(self, capture: Callable = capture_cuda) -> None:
        self.capture = capture
        self.runners: OrderedDict[tuple, Runner | None] = OrderedDict()
        self.seen: OrderedDict[tuple, int] = OrderedDict()

    @property
    def emulated(self) -> bool:
        return self.capture is capture_emulated

    def runner(self, prog, T: int, keep: bool, transpose: Callable, X, base, xo, init, w) -> Runner | None:
        """The runner for this call's shape, or None: run eagerly (first sight of the shape, a
        capture in progress, or a shape whose capture failed; the caller asks only where the
        setting allows graphs: nas.compile.backends.select.graphs_for)."""
        if not self.emulated and torch.cuda.is_current_stream_capturing():
            return None
        key = (prog, T, keep, *(None if t is None else (t.shape, t.dtype, t.device)
                                for t in (X, *base, *xo, *init, *w)))
        if key in self.runners:
            self.runners.move_to_end(key)
            return self.runners[key]
        self.seen[key] = self.seen.get(key, 0) + 1
        if len(self.seen) > 4 * MAX_SHAPES:
            self.seen.popitem(last=False)
        if self.seen[key] < 2:
            return None
        try:
            runner = Runner(prog, T, keep, transpose, X, base, xo, init, w, self.capture)
        except Exception as err:  # noqa: BLE001 - whatever stops a capture: this shape stays eager
            warnings.warn(f"CUDA graph capture failed, running eagerly: {err}", RuntimeWarning, stacklevel=3)
            runner = None
        self.runners[key] = runner
        if len(self.runners) > MAX_SHAPES:
            self.runners.popitem(last=False)
        return runner
