"""The fast path (nas.compile.sequence.function: whole-sequence code, one autograd node) against the reference path
(the step code under autograd, `fused=False`): same outputs, final states and gradients, in float64,
for every known cell and random cells; and the fast forms of the ops against the registry templates."""

import contextlib
import re
import statistics
import time

import pytest
import torch
from random_cells import ALL_OPS, SHARED_SOURCE, X_SOURCE, marked_names, random_cells

from nas.cell import KNOWN_CELLS, OPS, CellSpec, known_cell
from nas.cell.known import f, lin
from nas.cell.ops import render
from nas.compile import CellRNN, compile_cell
from nas.compile.backends.c import codegen as cgen
from nas.compile.plan import lower
from nas.compile.sequence import fast_ops as fast_kernels
from nas.compile.sequence import function as fused_module
from nas.compile.sequence.forward import generate
from nas.compile.sequence.layout import Layout

B, I, H = 3, 5, 4
TOL = {"rtol": 1e-10, "atol": 1e-12}


@pytest.fixture(autouse=True, params=["c", "torch"])
def kernels(request, monkeypatch):
    """Every test runs twice: with the CPU's C kernels (nas.compile.backends.c.codegen, the default where a C compiler
    is found) and with the torch kernels (nas.compile.sequence.forward, the fallback)."""
    if request.param == "torch":
        monkeypatch.setenv("NAS_C_KERNELS", "0")
    elif cgen.compiler() is None:
        pytest.skip("no C compiler")
    return request.param


def sizes(spec):
    return (H, H) if lower(spec).needs_raw_x else (I, H)


def pair(spec, layers=1, batch_first=False):
    """A fast and a reference CellRNN with the same (float64) weights and non-zero biases."""
    torch.manual_seed(0)
    fast = CellRNN(spec, *sizes(spec), num_layers=layers, batch_first=batch_first).double()
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


# A product's source in the columns of another product (b = tanh(W [x, h]) is activated in place):
# that G buffer must keep its values for the weight gradients after the loop, so it cannot also
# hold the backward's gradient (seqlayout.Layout._hosts).
SOURCE_IN_SLAB = CellSpec.from_dict({"state": ["h"], "nodes": {
    "a": lin("x", "h"), "b": f("tanh", "a"), "c": lin("b"), "h_new": f("sigmoid", "c")},
    "outputs": {"h": "h_new"}})


@pytest.mark.parametrize("spec", [SHARED_SOURCE, X_SOURCE], ids=["shared source", "x source"])
def test_awkward_products(spec):
    assert_same(spec, layers=2)


def test_gradients_written_into_the_forward_buffers():
    assert Layout(lower(known_cell("lstm"))).hosts == {"G1": "dG1"}
    assert Layout(lower(SOURCE_IN_SLAB)).hosts == {"G2": "dG2"}
    assert Layout(lower(known_cell("nas_cell"))).hosts == {"G1": "dG1", "V9": "dxo0"}
    assert_same(SOURCE_IN_SLAB, layers=2)


@pytest.mark.parametrize("hooks", [False, True], ids=["plain", "saved-tensor hooks"])
def test_second_backward_through_a_retained_graph_is_an_error(hooks):
    # The backward writes its gradients into saved buffers: a second one must fail (autograd's
    # version check, as after any in-place change; under saved-tensor hooks, which bypass that
    # check, the Function's own flag), never give wrong gradients.
    rnn = CellRNN(known_cell("darts_v2"), I, H)
    context = torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t) if hooks else \
        contextlib.nullcontext()
    with context:
        out, _ = rnn(torch.randn(4, B, I))
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        out.sum().backward()


def test_a_weight_changed_in_place_before_backward_is_autograds_error():
    # Not "one backward per forward": the caller changed a saved tensor, and autograd says so.
    rnn = CellRNN(known_cell("lstm"), I, H)
    out, _ = rnn(torch.randn(4, B, I))
    with torch.no_grad():
        rnn.layers[0].weight_h.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_without_any_fast_form(monkeypatch):
    # With the kernel table empty, every op runs from the registry's templates (as an op added to
    # the registry without a fast form would).
    monkeypatch.setattr(fast_kernels, "KERNELS", {})
    for module in ("seqgen", "seqgrad", "seqlayout"):
        monkeypatch.setattr(f"nas.cell.{module}.KERNELS", {})
    fused_module.program.cache_clear()
    try:
        for spec in (known_cell("lstm"), known_cell("darts_v2"), ALL_OPS, *RANDOM[:5]):
            assert_same(spec)
    finally:
        monkeypatch.undo()
        fused_module.program.cache_clear()


# -- the kernels against the registry --------------------------------------------------------
OPERANDS = {"add": 2, "sub": 2, "mul": 2, "blend": 3, "mean": 3, "tanh": 1, "sigmoid": 1, "relu": 1,
            "leaky_relu": 1}


@pytest.mark.parametrize("name", sorted(fast_kernels.KERNELS))
def test_kernel_matches_registry(name):
    op, kernel = OPS[name], fast_kernels.KERNELS[name]
    n = OPERANDS[name]
    torch.manual_seed(0)
    xs = [torch.randn(B, H, dtype=torch.float64) for _ in range(n)]
    names = [f"a{j}" for j in range(n)]
    env = {"torch": torch, **dict(zip(names, xs)), **fused_module._ATEN}
    options = dict(op.options)
    want = eval(render(op.expr, names, options), env)
    got = eval(render(kernel.value, names, options, out=""), env)
    torch.testing.assert_close(got, want, **TOL)
    env.update(g=torch.randn(B, H, dtype=torch.float64), y=want)
    if kernel.shared:
        env["s"] = eval(render(kernel.shared, names, options, g="g", y="y"), env)
    for j in range(n):
        template = op.grad[min(j, len(op.grad) - 1)]
        want_grad = eval(render(template, names, options, g="g", y="y"), env)
        terms = kernel.grads[min(j, len(kernel.grads) - 1)]
        total = sum(_term_value(t, names, options, env) for t in terms)
        torch.testing.assert_close(total, want_grad, **TOL)


def _term_value(term, names, options, env):
    fill = lambda s: eval(render(s, names, options, g="g", y="y", s="s"), env)
    if isinstance(term, fast_kernels.Alias):
        return fill(term.src) * float(render(term.alpha, names, options))
    if isinstance(term, fast_kernels.Mul):
        return fill(term.p) * fill(term.q) * float(term.value)
    return fill(term.value)


# -- the fast path is the default, and cheap to prepare -----------------------------------------
def test_default_path_records_one_node_per_layer():
    rnn = CellRNN(known_cell("darts_v2"), I, H, num_layers=2)
    out, _ = rnn(torch.randn(6, B, I))
    assert type(out.grad_fn).__name__ == "_SequenceBackward"
    assert not CellRNN(known_cell("lstm"), I, H, fused=False)(torch.randn(6, B, I))[0].grad_fn.name(
    ).startswith("_Sequence")


def test_no_grad_keeps_nothing():
    rnn = CellRNN(known_cell("lstm"), I, H)
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
    out, _ = CellRNN(known_cell("lstm"), I, H)(torch.randn(4, B, I))
    with pytest.raises(RuntimeError, match="inplace"):
        out.mul_(2)


def test_single_step_cell_uses_the_fast_path():
    cell = compile_cell(known_cell("gru"), I, H).double()
    ref = compile_cell(known_cell("gru"), I, H, fused=False).double()
    ref.load_state_dict(cell.state_dict())
    x, h = torch.randn(B, I, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    torch.testing.assert_close(cell(x, (h,))[0], ref(x, (h,))[0], **TOL)


@pytest.mark.parametrize("name", KNOWN_CELLS)
def test_sequence_code_has_no_names_from_the_spec(name):
    marked = marked_names(known_cell(name))
    code = generate(lower(marked))
    for source in (code.forward_source, code.backward_source):
        assert "NODE_" not in source and "STATE_" not in source
        compile(source, "<sequence>", "exec")
        assert not re.search(r"\bexec\b|\beval\b|__", source)


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


def test_sequence_code_is_generated_fast():
    # Paid once per cell and process (fused.program is cached by spec); well under a second.
    times = []
    for spec in random_cells(seed=33, count=20) + [known_cell("darts_v2"), known_cell("nas_cell")]:
        fused_module.program.cache_clear()
        start = time.perf_counter()
        fused_module.program(spec)
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 0.2 and max(times) < 1.0
