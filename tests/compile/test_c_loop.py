"""The CPU's time loop in C (nas.compile.backends.c.loop) against the same kernels driven from Python.

tests/compile/test_fast_path.py runs its whole suite (float64, against the reference path) with the loop in
C, and tests/compile/test_c_codegen.py checks float32 against the torch code; here: that the C loop computes
what the Python loop computes (same kernels; in float32 the same products too: bit for bit), on every known
cell and random cells, at the sizes and lengths where its pointer arithmetic could slip (T = 1, 2,
3, odd and even for the swapped carries; B = 1, H = 1; the two-slot states of a no-grad call), and
the setting that chooses it (tests/compile/test_policy.py)."""

import copy
import re

import pytest
import torch
from random_cells import ALL_OPS, outputs_and_grads, random_cells, random_inputs

from nas.cell import KNOWN_CELLS, known_cell
from nas.compile import CellRNN
from nas.compile.backends.c import codegen
from nas.compile.backends.c import loop as c_loop
from nas.compile.backends.c.backend import c_program, c_works
from nas.compile.backends.select import select
from nas.compile.sequence.program import program

pytestmark = pytest.mark.skipif(codegen.compiler() is None or not c_loop.available(torch.float32),
                                reason="no C compiler, or no MKL in this torch")


def pair(spec, size=6, layers=2, dtype=torch.float32, batch_first=False):
    """The same model twice: time loop in C, and in Python (Policy(c_loop=False))."""
    torch.manual_seed(0)
    model = CellRNN(spec, size, size, num_layers=layers, batch_first=batch_first).to(dtype=dtype)
    ref = copy.deepcopy(model)
    ref.policy = ref.policy.replace(c_loop=False)
    return model, ref


def same(model, ref, T=5, B=3):
    """Outputs and gradients equal: bit for bit in float32 (both loops call MKL's packed GEMM);
    in float64 the Python loop's products are torch.mm's, which may block the sums differently."""
    x, state, dout = random_inputs(model, T, B, "cpu")
    got, want = outputs_and_grads(model, x, state, dout), outputs_and_grads(ref, x, state, dout)
    for a, b in zip(got, want, strict=True):
        if a.dtype == torch.float32:
            assert torch.equal(a.nan_to_num(), b.nan_to_num()) and torch.equal(a.isnan(), b.isnan()), \
                f"C loop differs by {(a - b).abs().max().item()}"
        else:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13, equal_nan=True)


def test_the_loop_is_in_c():
    model, ref = pair(known_cell("lstm"))
    for dtype in (torch.float32, torch.float64):
        prog = select(model.layers[0], torch.zeros(1), dtype)
        assert "_call(_loop_f" in prog.code.forward_source and "_call(_loop_b" in prog.code.backward_source
        assert "for t in" not in prog.code.forward_source + prog.code.backward_source
        slow = select(ref.layers[0], torch.zeros(1), dtype)
        assert "for t in range(T)" in slow.code.forward_source


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", KNOWN_CELLS)
def test_known_cells_bit_for_bit(name, dtype):
    same(*pair(known_cell(name), dtype=dtype))


@pytest.mark.parametrize("T", [1, 2, 3])
def test_short_sequences_swap_the_carries_right(T):
    # The C code swaps the carries' pointers T times; the driver must name the right buffers after.
    for name in ("lstm", "gru", "mut2"):
        same(*pair(known_cell(name)), T=T)


def test_size_one_dimensions():
    for name in ("lstm", "darts_v2", "mut1"):
        for size, B in ((1, 3), (5, 1), (1, 1)):
            same(*pair(known_cell(name), size=size), B=B)


def test_random_cells_and_every_op():
    for spec in [ALL_OPS, *random_cells(21, 10)]:
        same(*pair(spec, size=5), T=4, B=2)


def test_batch_first_and_strided_output_gradient():
    model, ref = pair(known_cell("mut1"), batch_first=True)  # mut1 reads x elementwise
    x = torch.randn(3, 4, 6).transpose(0, 1)  # (B=4, T=3, 6), not contiguous
    got = []
    for m in (model, ref):
        xi = x.clone().requires_grad_()
        y, _ = m(xi)
        y.sum().backward()  # dout: ones expanded, stride 0
        got.append([y.detach(), xi.grad, *(p.grad for p in m.parameters())])
    for a, b in zip(*got, strict=True):
        assert torch.equal(a, b)


def test_no_grad_uses_two_state_slots_in_turn():
    # Without autograd the states keep two slots, used in turn (a period of 2 in the C code).
    model, ref = pair(known_cell("nas_cell"))
    x = torch.randn(7, 3, 6)
    with torch.no_grad():
        out, state = model(x)
        want, want_state = ref(x)
    grad_out, _ = model(x)
    assert torch.equal(out, want) and torch.equal(out, grad_out.detach())
    for a, b in zip(state, want_state, strict=True):
        assert torch.equal(a, b)


def test_an_empty_batch():
    # Autograd's gradient of y.sum() for an empty y is expanded with stride 0 everywhere (and torch
    # calls it contiguous): the kernels' unit-column check rejected it. An empty call runs the torch code.
    for name in ("lstm", "darts_v2"):
        model = CellRNN(known_cell(name), 6, 6)
        x = torch.randn(5, 0, 6, requires_grad=True)
        y, _ = model(x)
        y.sum().backward()
        assert y.shape == (5, 0, 6) and x.grad.shape == x.shape
        assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_kernels_split_between_threads():
    # From ~2048 elements (by a stage's work) the kernels run their rows on several threads: at
    # batch 24 and hidden 130 every stage of these cells does, with an odd number of rows per thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        for name in ("lstm", "nas_cell", "darts_v2"):
            torch.manual_seed(0)
            model = CellRNN(known_cell(name), 130, 130).double()
            ref = CellRNN(known_cell(name), 130, 130, fused=False).double()
            ref.load_state_dict(model.state_dict())
            x, state, dout = (t.double() if isinstance(t, torch.Tensor) else t for t in random_inputs(model, 3, 24, "cpu"))
            state = tuple(s.double() for s in state)
            for a, b in zip(outputs_and_grads(model, x, state, dout), outputs_and_grads(ref, x, state, dout), strict=True):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    finally:
        torch.set_num_threads(threads)


def test_a_cell_whose_loop_fails_to_compile_runs_its_kernels_from_python(monkeypatch):
    assert c_works(torch.float32, loop=True)  # (before the compiler breaks)
    build = codegen.build

    def no_loops(source, dtype):
        if "_loop_f" in source:
            raise codegen.CompileError("cc failed (1): internal compiler error")
        return build(source, dtype)

    monkeypatch.setattr(codegen, "build", no_loops)
    c_program.cache_clear()
    try:
        model, _ = pair(known_cell("enas"))
        torch_code = copy.deepcopy(model)
        torch_code.backend = "torch"
        with pytest.warns(RuntimeWarning) as caught:
            prog = select(model.layers[0], torch.zeros(3, 2, 6), torch.float32)
        assert len(caught) == 1
        assert re.search("could not compile the C time loop.*internal compiler error.*runs its C kernels from a "
                         "Python loop", str(caught[0].message))
        assert "_loop_f" not in prog.code.forward_source and "_mm(" in prog.code.forward_source
        x, state, dout = random_inputs(model, 5, 3, "cpu")
        for a, b in zip(outputs_and_grads(model, x, state, dout), outputs_and_grads(torch_code, x, state, dout),
                        strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    finally:
        c_program.cache_clear()


def test_a_cell_that_compiles_in_no_form_warns_once(monkeypatch):
    assert c_works(torch.float32, loop=True)

    def broken(source, dtype):
        raise codegen.CompileError("cc failed (1): out of memory")

    monkeypatch.setattr(codegen, "build", broken)
    c_program.cache_clear()
    try:
        layer = CellRNN(known_cell("mut1"), 4, 4).layers[0]
        with pytest.warns(RuntimeWarning) as caught:
            assert select(layer, torch.zeros(3, 2, 4), torch.float32) is program(layer.spec)
        assert len(caught) == 1 and "could not compile the C kernels" in str(caught[0].message)
    finally:
        c_program.cache_clear()
