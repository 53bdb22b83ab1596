"""CUDA graphs of the fast path (nas.compile.backends.cudagraphs): the same numbers as the eager kernels,
gradients included (tests/cell/test_known.py compares them with torch.nn.LSTM / GRU on a GPU).

Each test runs on a GPU with real graphs ("cuda", skipped without one) and on the CPU with
emulated capture ("emulated": replays rerun the code into the static buffers), which checks the
bookkeeping (static inputs, cloned outputs, saved values evicted and restored) everywhere."""

import copy

import pytest
import torch
from random_cells import outputs_and_grads as _step
from random_cells import random_cells
from random_cells import random_inputs as _inputs

from nas.cell import known_cell
from nas.compile import CellRNN
from nas.compile.backends import cudagraphs
from nas.compile.backends.cudagraphs import GraphCache, capture_emulated, side_stream

CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))
MODES = pytest.mark.parametrize("mode", [CUDA, "emulated"])
CELLS = ["lstm", "gru", "nas_cell", "darts_v2", "mut2"]


def _pair(spec, mode, size=24, layers=1):
    """The same CellRNN twice: with graphs (real or emulated) and eager."""
    torch.manual_seed(0)
    graphed = CellRNN(spec, size, size, num_layers=layers).to("cuda" if mode == "cuda" else "cpu")
    eager = copy.deepcopy(graphed)
    eager.cuda_graphs = "off"
    if mode == "emulated":
        for layer in graphed.layers:
            layer._graphs = GraphCache(capture_emulated)
    return graphed, eager


def _close(a, b, tol):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=tol, atol=tol)


@MODES
@pytest.mark.parametrize("name", CELLS)
def test_graphs_match_eager_over_repeated_calls(name, mode):
    graphed, eager = _pair(known_cell(name), mode, layers=2)
    # Call 1 runs eagerly, call 2 captures, calls 3 and 4 replay: fresh data each time.
    for _ in range(4):
        x, state, dout = _inputs(graphed, 7, 5)
        _close(_step(graphed, x, state, dout), _step(eager, x, state, dout), 1e-5)
    assert all(r is not None for layer in graphed.layers for r in layer._graphs.runners.values())
    assert sum(len(layer._graphs.runners) for layer in graphed.layers) == 2


@MODES
def test_random_graph_cells_match_eager(mode):
    compared = 0
    for spec in random_cells(5, 12):
        graphed, eager = _pair(spec, mode, size=16)
        for _ in range(3):
            x, state, dout = _inputs(graphed, 6, 3)
            want = _step(eager, x, state, dout)
            if not all(torch.isfinite(t).all() for t in want):
                break  # unbounded random cells can overflow: nothing to compare
            _close(_step(graphed, x, state, dout), want, 1e-5)
        else:
            compared += 1
    assert compared >= 8


@MODES
@pytest.mark.parametrize("order", ["second first", "first first"])
def test_two_forwards_then_two_backwards(mode, order):
    """The second forward replays over the first's saved values; either backward may come first:
    whatever sits in the buffers and is still needed is copied out first."""
    graphed, eager = _pair(known_cell("lstm"), mode)
    x, state, dout = _inputs(graphed, 5, 4)
    graphed(x, state), graphed(x, state)  # the shape is captured
    xs = [torch.randn_like(x) for _ in range(2)]
    results = []
    for model in (graphed, eager):
        leaves = [x_.clone().requires_grad_(True) for x_ in xs]
        outs = [model(x_, state)[0] for x_ in leaves]
        pairs = list(zip(outs, leaves))
        pairs = pairs[::-1] if order == "second first" else pairs
        grads = [torch.autograd.grad((o * dout).sum(), [x_, *model.parameters()]) for o, x_ in pairs]
        results.append([*outs, *(g for gs in grads for g in gs)])
    _close(*results, 1e-5)


@MODES
def test_a_training_loop_copies_nothing(mode):
    graphed, _ = _pair(known_cell("gru"), mode)
    x, state, _ = _inputs(graphed, 5, 2)
    for _ in range(6):
        out, _ = graphed(x, state)  # the previous step's `out` is still alive here
        out.sum().backward()
    runner = next(iter(graphed.layers[0]._graphs.runners.values()))
    assert runner.evictions == 0


@MODES
def test_no_grad_and_one_off_shapes(mode):
    graphed, eager = _pair(known_cell("darts_v2"), mode)
    with torch.no_grad():
        for T in (9, 9, 9, 4):  # 9: eager, captured, replayed; 4: seen once, eager
            x, state, _ = _inputs(graphed, T, 3)
            (out, final), (want, want_final) = graphed(x, state), eager(x, state)
            _close([out, *final], [want, *want_final], 1e-5)
    keys = list(graphed.layers[0]._graphs.runners)
    assert [k[1:3] for k in keys] == [(9, False)]


@pytest.mark.parametrize("mode", [CUDA])
def test_bf16_autocast_step_runs_on_graphs(mode):
    graphed, eager = _pair(known_cell("lstm"), mode, size=32)
    for _ in range(3):
        x, state, dout = _inputs(graphed, 8, 4)
        with torch.autocast("cuda", torch.bfloat16):
            a = _step(graphed, x, state, dout)
            b = _step(eager, x, state, dout)
        _close(a, b, 1e-2)


def test_graph_cache_is_not_copied():
    model = CellRNN(known_cell("lstm"), 8, 8)
    cache = model.layers[0]._graphs
    cache.runners[("k",)] = None
    assert isinstance(cache, GraphCache)
    assert copy.deepcopy(model).layers[0]._graphs.runners == {}
    assert cache.runners  # the original keeps its own


def test_cpu_runs_without_graphs():
    for setting in ("auto", "on"):  # (graphs are for GPUs: "on" does not make the CPU capture)
        model = CellRNN(known_cell("lstm"), 8, 8, cuda_graphs=setting)
        for _ in range(3):
            model(torch.randn(4, 2, 8))[0].sum().backward()
        assert not model.layers[0]._graphs.runners and not model.layers[0]._graphs.seen


def test_graphs_off_never_capture():
    graphed, _ = _pair(known_cell("lstm"), "emulated")
    graphed.cuda_graphs = "off"
    for _ in range(3):
        x, state, dout = _inputs(graphed, 7, 5)
        _step(graphed, x, state, dout)
    assert not graphed.layers[0]._graphs.runners and not graphed.layers[0]._graphs.seen


def test_the_environment_alias_turns_auto_graphs_off(monkeypatch):
    monkeypatch.setenv("NAS_CUDA_GRAPHS", "0")
    graphed, _ = _pair(known_cell("lstm"), "emulated")
    for _ in range(3):
        x, state, dout = _inputs(graphed, 7, 5)
        _step(graphed, x, state, dout)
    assert not graphed.layers[0]._graphs.runners
    graphed.cuda_graphs = "on"  # an explicit setting is not an alias's to change
    for _ in range(3):
        x, state, dout = _inputs(graphed, 7, 5)
        _step(graphed, x, state, dout)
    assert graphed.layers[0]._graphs.runners


@MODES
def test_second_backward_of_one_call_is_an_error(mode):
    graphed, _ = _pair(known_cell("gru"), mode)
    x, state, _ = _inputs(graphed, 5, 2)
    graphed(x, state), graphed(x, state)  # captured
    out, _ = graphed(x, state)
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        out.sum().backward()


@MODES
def test_runners_share_one_side_stream_per_device(mode):
    """Every runner of the process warms up and captures on one stream per device (a stream per
    runner would keep a cuBLAS workspace and cached memory blocks per runner)."""
    runners = []
    for name in ("lstm", "gru"):
        graphed, _ = _pair(known_cell(name), mode)
        x, state, dout = _inputs(graphed, 5, 2)
        for _ in range(2):
            _step(graphed, x, state, dout)  # captured at (5, 2), with its backward
        with torch.no_grad():
            graphed(x[:3], state), graphed(x[:3], state)  # and at (3, 2), forward only
        runners += [r for layer in graphed.layers for r in layer._graphs.runners.values()]
    assert len(runners) == 4 and all(r is not None for r in runners)
    stream = runners[0].stream
    assert all(r.stream is stream for r in runners)
    want = torch.device("cuda", torch.cuda.current_device()) if mode == "cuda" else torch.device("cpu")
    assert stream.device == want
    assert isinstance(stream, torch.cuda.Stream if mode == "cuda" else cudagraphs.EmulatedStream)


def test_side_stream_is_one_per_device(monkeypatch):
    made = []

    class FakeStream:
        def __init__(self, device):
            made.append(device)
            self.device = device

    monkeypatch.setattr(cudagraphs, "_side_streams", {})
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    first, again = side_stream("cuda:0"), side_stream(torch.device("cuda", 0))
    second, current = side_stream("cuda:1"), side_stream("cuda")  # "cuda": the current device, 1
    assert first is again and second is current and first is not second
    assert made == [torch.device("cuda", 0), torch.device("cuda", 1)]
    emulated = side_stream("cuda:0", emulated=True)  # stand-ins never mix with real streams
    assert isinstance(emulated, cudagraphs.EmulatedStream)
    assert emulated is side_stream("cuda:0", emulated=True)
    assert len(made) == 2
    with pytest.raises(ValueError, match="expected a CUDA device for a real capture, got cpu"):
        side_stream("cpu")
