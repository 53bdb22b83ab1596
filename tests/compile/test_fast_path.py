"""The fast path (nas.compile.fast_path: whole-sequence code, one autograd node) against the reference path
(the step code under autograd, `fused=False`): same outputs, final states and gradients, in float64,
for every known cell and random cells; and the fast forms of the ops against the registry templates."""

import contextlib

import pytest
import torch
from random_cells import ALL_OPS, SHARED_SOURCE, SOURCE_IN_SLAB, X_SOURCE, random_cells

from nas.cell import KNOWN_CELLS, known_cell
from nas.compile import CellRNN, compile_cell
from nas.compile.backends.c import codegen
from nas.compile.plan import lower
from nas.compile.sequence import fast_ops
from nas.compile.sequence import program as programs

B, I, H = 3, 5, 4
TOL = {"rtol": 1e-10, "atol": 1e-12}


BACKEND = {"name": "auto"}  # the fast models' backend setting in this test (the fixture's)


@pytest.fixture(autouse=True, params=["c", "torch"])
def kernels(request, monkeypatch):
    """Every test runs twice: with the CPU's C kernels (nas.compile.backends.c.codegen, the default where a C compiler
    is found) and with the torch kernels (nas.compile.sequence.forward, the fallback): backend="c" / "torch"."""
    if request.param == "c" and codegen.compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setitem(BACKEND, "name", request.param)
    return request.param


def sizes(spec):
    return (H, H) if lower(spec).needs_raw_x else (I, H)


def pair(spec, layers=1, batch_first=False):
    """A fast and a reference CellRNN with the same (float64) weights and non-zero biases."""
    torch.manual_seed(0)
    fast = CellRNN(spec, *sizes(spec), num_layers=layers, batch_first=batch_first, backend=BACKEND["name"]).double()
    with torch.no_grad():
        for layer in fast.layers:
            if layer.bias is not None:
                layer.bias.uniform_(-1, 1)
    ref = CellRNN(spec, *sizes(spec), num_layers=layers, batch_first=batch_first, fused=False).double()
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def run(model, x, state):
    """Outputs, final states and the gradients of one loss reading all of them."""
    x = x.clone().requires_grad_()
    state = None if state is None else tuple(s.clone().requires_grad_() for s in state)
    out, final = model(x, state)
    gen = torch.Generator().manual_seed(1)
    loss = sum((torch.randn(v.shape, generator=gen, dtype=v.dtype) * v).sum() for v in (out, *final))
    loss.backward()
    # The reference leaves the gradient of a state no node reads as None; the fast path gives zeros.
    state_grads = [torch.zeros_like(s) if s.grad is None else s.grad for s in state or ()]
    return [out, *final, x.grad, *state_grads, *(p.grad for p in model.parameters())]


def assert_same(spec, layers=1, batch_first=False, with_state=True, T=5):
    fast, ref = pair(spec, layers, batch_first)
    shape = (B, T, fast.input_size) if batch_first else (T, B, fast.input_size)
    x = torch.randn(*shape, dtype=torch.float64)
    state = tuple(torch.randn(layers, B, H, dtype=torch.float64) for _ in spec.state) if with_state else None
    got, want = run(fast, x, state), run(ref, x, state)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"{spec}: {m}")
    with torch.no_grad():
        out, final = fast(x, state)
        ref_out, ref_final = ref(x, state)
    for a, b in zip((out, *final), (ref_out, *ref_final)):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("name", KNOWN_CELLS)
@pytest.mark.parametrize("with_state", [True, False])
def test_known_cells_match_the_reference(name, with_state):
    assert_same(known_cell(name), with_state=with_state)


@pytest.mark.parametrize("name", ["lstm", "gru", "nas_cell", "darts_v2"])
def test_multi_layer_batch_first(name):
    assert_same(known_cell(name), layers=2, batch_first=True)


RANDOM = random_cells(seed=31, count=20) + random_cells(seed=32, count=10, raw_x=False)


@pytest.mark.parametrize("k", range(len(RANDOM)))
def test_random_cells_match_the_reference(k):
    assert_same(RANDOM[k], layers=2, with_state=k % 2 == 0)


@pytest.mark.parametrize("T", [1, 2, 3])
def test_short_sequences(T):
    # T = 1 and 2 exercise the two alternating state slots of the no_grad path.
    for name in ("lstm", "gru", "darts_v2"):
        assert_same(known_cell(name), T=T)


def test_every_op():
    assert_same(ALL_OPS, layers=2)


@pytest.mark.parametrize("spec", [SHARED_SOURCE, X_SOURCE], ids=["shared source", "x source"])
def test_awkward_products(spec):
    assert_same(spec, layers=2)


def test_gradients_written_into_the_forward_buffers():
    # (which buffers host them: tests/compile/test_sequence.py)
    assert_same(SOURCE_IN_SLAB, layers=2)


@pytest.mark.parametrize("hooks", [False, True], ids=["plain", "saved-tensor hooks"])
def test_second_backward_through_a_retained_graph_is_an_error(hooks):
    # The backward writes its gradients into saved buffers: a second one must fail (autograd's
    # version check, as after any in-place change; under saved-tensor hooks, which bypass that
    # check, the Function's own flag), never give wrong gradients.
    rnn = CellRNN(known_cell("darts_v2"), I, H, backend=BACKEND["name"])
    context = torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t) if hooks else \
        contextlib.nullcontext()
    with context:
        out, _ = rnn(torch.randn(4, B, I))
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        out.sum().backward()


def test_a_weight_changed_in_place_before_backward_is_autograds_error():
    # Not "one backward per forward": the caller changed a saved tensor, and autograd says so.
    rnn = CellRNN(known_cell("lstm"), I, H, backend=BACKEND["name"])
    out, _ = rnn(torch.randn(4, B, I))
    with torch.no_grad():
        rnn.layers[0].weight_h.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_without_any_fast_form(monkeypatch):
    # With the kernel table empty, every op runs from the registry's templates (as an op added to
    # the registry without a fast form would).
    monkeypatch.setattr(fast_ops, "KERNELS", {})
    for module in ("forward", "backward", "layout"):
        monkeypatch.setattr(f"nas.compile.sequence.{module}.KERNELS", {})
    programs.program.cache_clear()
    try:
        for spec in (known_cell("lstm"), known_cell("darts_v2"), ALL_OPS, *RANDOM[:5]):
            assert_same(spec)
    finally:
        monkeypatch.undo()
        programs.program.cache_clear()


# -- the kernels against the registry --------------------------------------------------------
# -- the fast path is the default, and cheap to prepare -----------------------------------------
def test_default_path_records_one_node_per_layer():
    rnn = CellRNN(known_cell("darts_v2"), I, H, num_layers=2, backend=BACKEND["name"])
    out, _ = rnn(torch.randn(6, B, I))
    assert type(out.grad_fn).__name__ == "_SequenceBackward"
    assert not CellRNN(known_cell("lstm"), I, H, fused=False)(torch.randn(6, B, I))[0].grad_fn.name(
    ).startswith("_Sequence")


def test_no_grad_keeps_nothing():
    rnn = CellRNN(known_cell("lstm"), I, H, backend=BACKEND["name"])
    with torch.no_grad():
        out, (h, c) = rnn(torch.randn(6, B, I))
    assert out.grad_fn is None and h.grad_fn is None and c.grad_fn is None
    x = torch.randn(6, B, I, requires_grad=True)
    for p in rnn.parameters():
        p.requires_grad_(False)
    out, _ = rnn(x)  # only the input needs a gradient
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_in_place_change_of_the_output_is_an_error():
    out, _ = CellRNN(known_cell("lstm"), I, H, backend=BACKEND["name"])(torch.randn(4, B, I))
    with pytest.raises(RuntimeError, match="inplace"):
        out.mul_(2)


def test_single_step_cell_uses_the_fast_path():
    cell = compile_cell(known_cell("gru"), I, H, backend=BACKEND["name"]).double()
    ref = compile_cell(known_cell("gru"), I, H, fused=False).double()
    ref.load_state_dict(cell.state_dict())
    x, h = torch.randn(B, I, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    torch.testing.assert_close(cell(x, (h,))[0], ref(x, (h,))[0], **TOL)


def test_autocast_runs_the_recurrence_in_the_autocast_dtype():
    fast, ref = pair(known_cell("lstm"))
    fast, ref = fast.float(), ref.float()
    x = torch.randn(6, B, I)
    with torch.autocast("cpu", torch.bfloat16):
        out, (h, c) = fast(x)
        ref_out, _ = ref(x)
    assert out.dtype == h.dtype == c.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref_out.float(), rtol=0, atol=0.05)
    out.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fast.parameters())


def test_mixed_dtypes_are_promoted():
    # (The reference path needs one dtype; the fast path promotes, as torch's ops would.)
    fast, ref = pair(known_cell("gru"))  # float64 parameters
    x, state = torch.randn(5, B, I), (torch.randn(1, B, H),)  # float32 input and state
    out, _ = fast(x, state)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref(x.double(), (state[0].double(),))[0], **TOL)
