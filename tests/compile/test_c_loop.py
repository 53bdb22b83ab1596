"""The CPU's time loop in C (nas.compile.backends.c.loop) against the same kernels driven from Python.

tests/compile/test_fast_path.py runs its whole suite (float64, against the reference path) with the loop in
C, and tests/compile/test_c_codegen.py checks float32 against the torch code; here: that the C loop computes
what the Python loop computes (same kernels; in float32 the same products too: bit for bit), on every known
cell and random cells, at the sizes and lengths where its pointer arithmetic could slip (T = 1, 2,
3, odd and even for the swapped carries; B = 1, H = 1; the two-slot states of a no-grad call), and
the switches (pickling them: tests/compile/test_c_codegen.py)."""

import copy
import re

import pytest
import torch
from random_cells import ALL_OPS, outputs_and_grads, random_cells, random_inputs

from nas.cell import KNOWN_CELLS, known_cell
from nas.compile import CellRNN
from nas.compile.backends import probe
from nas.compile.backends.c import codegen as cgen
from nas.compile.backends.c import loop as cloop
from nas.compile.backends.c import mkl
from nas.compile.backends.c.ops import C_OPS
from nas.compile.sequence import function as fused

pytestmark = pytest.mark.skipif(cgen.compiler() is None or not cloop.available(torch.float32),
                                reason="no C compiler, or no MKL in this torch")


def pair(spec, size=6, layers=2, dtype=torch.float32, batch_first=False):
    """The same model twice: time loop in C, and in Python (c_loop=False)."""
    torch.manual_seed(0)
    model = CellRNN(spec, size, size, num_layers=layers, batch_first=batch_first).to(dtype=dtype)
    ref = copy.deepcopy(model)
    for layer in ref.layers:
        layer.c_loop = False
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
        prog = fused.select(model.layers[0], torch.zeros(1), dtype)
        assert "_call(_loop_f" in prog.code.forward_source and "_call(_loop_b" in prog.code.backward_source
        assert "for t in" not in prog.code.forward_source + prog.code.backward_source
        slow = fused.select(ref.layers[0], torch.zeros(1), dtype)
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


def test_switches(monkeypatch):
    layer = CellRNN(known_cell("gru"), 4, 4).layers[0]
    xs = torch.zeros(2, 1, 4)
    assert fused.select(layer, xs, torch.float32) is fused.c_program(layer.spec, torch.float32)
    layer.c_loop = False
    assert fused.select(layer, xs, torch.float32) is fused.c_program(layer.spec, torch.float32, False)
    layer.c_loop = True
    monkeypatch.setenv("NAS_C_LOOP", "0")
    assert fused.select(layer, xs, torch.float32) is fused.c_program(layer.spec, torch.float32, False)
    monkeypatch.setenv("NAS_C_LOOP", "1")
    monkeypatch.setenv("NAS_MKL_PACKED", "0")  # no MKL: the Python loop with torch.mm
    assert not cloop.available(torch.float32) and mkl.gemm(torch.float64) is None
    prog = fused._c_program.__wrapped__(layer.spec, torch.float32, True)
    assert "for t in range(T)" in prog.code.forward_source and "_mm(" not in prog.code.forward_source


@pytest.fixture
def fresh_probes():
    """The probes' verdicts and the compiled programs forgotten before and after the test."""
    probe._c_probe.cache_clear()
    fused.c_program.cache_clear()
    yield
    probe._c_probe.cache_clear()
    fused.c_program.cache_clear()


def test_a_failing_loop_keeps_the_kernels(monkeypatch, fresh_probes):
    # A loop whose sigmoid is off by 1% (as a miscompiled loop would be): its probe fails with one
    # warning, and cells run the same C kernels from the Python loop, not the torch kernels.
    wrong = {**C_OPS, "sigmoid": ("0.99 * nas_sigmoid({a})", C_OPS["sigmoid"][1])}
    monkeypatch.setattr(cloop.LoopCKernel, "OPS", wrong)
    # (the probe runs the C code it is asked about, whatever the switches in the environment say)
    monkeypatch.setenv("NAS_C_LOOP", "0")
    monkeypatch.setenv("NAS_C_KERNELS", "0")
    with pytest.warns(RuntimeWarning) as caught:
        assert not probe.c_works(torch.float64, loop=True)
    monkeypatch.delenv("NAS_C_LOOP")
    monkeypatch.delenv("NAS_C_KERNELS")
    assert len(caught) == 1 and "C time loop does not work here" in str(caught[0].message)
    assert "differ from the torch code" in str(caught[0].message)
    assert probe.c_works(torch.float64)  # (silently: its verdict came with the loop's)
    model = CellRNN(known_cell("lstm"), 5, 5).double()
    ref = CellRNN(known_cell("lstm"), 5, 5, fused=False).double()
    ref.load_state_dict(model.state_dict())
    xs = torch.randn(4, 2, 5, dtype=torch.float64)
    assert fused.select(model.layers[0], xs, torch.float64) is fused.c_program(model.layers[0].spec,
                                                                               torch.float64, False)
    torch.testing.assert_close(model(xs)[0], ref(xs)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loop_first", [True, False])
def test_failing_kernels_warn_once_whichever_probe_runs_first(monkeypatch, fresh_probes, loop_first):
    monkeypatch.setattr(cgen, "compiler", lambda: None)
    with pytest.warns(RuntimeWarning) as caught:
        works = [probe.c_works(torch.float32, loop=loop) for loop in (loop_first, not loop_first)]
    assert works == [False, False]
    assert len(caught) == 1 and "C kernels do not work here" in str(caught[0].message)
    layer = CellRNN(known_cell("gru"), 4, 4).layers[0]
    assert fused.select(layer, torch.zeros(2, 1, 4), torch.float32) is fused.program(layer.spec)


def test_without_the_c_loop_nothing_compiles_it(monkeypatch, fresh_probes):
    # NAS_C_LOOP=0: neither the probe nor the cell compiles a loop it will not run.
    sources = []
    build = cgen.build
    monkeypatch.setattr(cgen, "build", lambda source, dtype: sources.append(source) or build(source, dtype))
    monkeypatch.setenv("NAS_C_LOOP", "0")
    CellRNN(known_cell("gru"), 4, 4)(torch.randn(3, 2, 4))
    assert len(sources) == 2  # the probe cell's and the GRU's
    assert not any("_loop_f" in s for s in sources)
    monkeypatch.delenv("NAS_C_LOOP")
    CellRNN(known_cell("gru"), 4, 4)(torch.randn(3, 2, 4))
    assert len(sources) == 4 and all("_loop_f" in s for s in sources[2:])


def test_packed_weights_are_packed_from_the_transposed_view():
    # A training call hands the packing program views of the weights' own storage (MKL packs W^T
    # from W: no contiguous copy first), and the results are the same bit for bit as from a copy.
    import dataclasses

    model = CellRNN(known_cell("darts_v2"), 8, 8)
    layer = model.layers[0]
    x = torch.randn(16, 16, 8)  # 256 rows: where the torch products would get a copy
    prog = fused.select(layer, x, torch.float32)
    assert prog.packs
    results, given = [], []

    def spy(forward):
        def run(T, keep, X, base, xo, init, wt):
            given.append([w.data_ptr() for w in wt])
            return forward(T, keep, X, base, xo, init, wt)
        return run

    try:
        for packs in (True, False):
            fused.force(layer, dataclasses.replace(prog, forward=spy(prog.forward), packs=packs), torch.float32)
            model.zero_grad()
            out, _ = model(x)
            out.pow(2).sum().backward()
            results.append([out.detach(), *(p.grad.clone() for p in model.parameters())])
    finally:
        fused.force(layer, None)
    weights = {p.data_ptr() for p in layer.parameters()}
    assert given[0] and set(given[0]) <= weights  # views of the parameters themselves
    assert not set(given[1]) & weights  # copies
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
    assert fused.select(layer, x, torch.float32) is prog  # (force(layer, None) undid it)


def test_forced_programs_are_per_cell_and_dtype(monkeypatch):
    monkeypatch.delenv("NAS_C_LOOP", raising=False)
    a, b = CellRNN(known_cell("gru"), 4, 4).layers[0], CellRNN(known_cell("gru"), 4, 4).layers[0]
    xs = torch.zeros(2, 1, 4)
    python_loop = fused.c_program(a.spec, torch.float32, False)
    fused.force(a, python_loop, torch.float32)
    try:
        assert fused.select(a, xs, torch.float32) is python_loop
        assert fused.select(b, xs, torch.float32) is fused.c_program(b.spec, torch.float32)
        assert fused.select(a, xs.double(), torch.float64) is fused.c_program(a.spec, torch.float64)
    finally:
        fused.force(a, None)
    assert fused.select(a, xs, torch.float32) is fused.c_program(a.spec, torch.float32)


def test_build_c_program_refuses_a_kernel_class_that_cannot_run(monkeypatch):
    spec = known_cell("gru")
    with pytest.raises(ValueError, match="packed GEMM is for float32"):
        fused.build_c_program(spec, torch.float64, cgen.PackedCKernel)
    monkeypatch.setenv("NAS_MKL_PACKED", "0")  # no MKL to call
    with pytest.raises(ValueError, match="no MKL to call from a C loop"):
        fused.build_c_program(spec, torch.float32, cloop.LoopCKernel)


def test_float64_products_are_dgemms_right():
    # The float64 loop calls the Fortran-interface DGEMM (column-major, arguments swapped): an
    # uneven shape, so that a swapped dimension or leading dimension could not pass.
    torch.manual_seed(0)
    model = CellRNN(known_cell("lstm"), 3, 7).double()
    ref = CellRNN(known_cell("lstm"), 3, 7, fused=False).double()
    ref.load_state_dict(model.state_dict())
    x, state, dout = random_inputs(model, 4, 5, "cpu")
    x, state, dout = x.double(), tuple(s.double() for s in state), dout.double()
    for a, b in zip(outputs_and_grads(model, x, state, dout), outputs_and_grads(ref, x, state, dout), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


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


def test_sizes_beyond_mkls_32_bit_ints_are_an_error():
    # (a 2^31-element row would take 8 GiB: a stand-in view with such strides, never dereferenced)
    class Huge:
        shape, element_size = (4, 3, 5), staticmethod(lambda: 4)

        @staticmethod
        def stride(dim=None):
            strides = (3 * 2**31, 2**31, 1)
            return strides if dim is None else strides[dim]

        @staticmethod
        def data_ptr():
            return 0

    with pytest.raises(ValueError, match="does not fit MKL's 32-bit ints.*NAS_C_LOOP=0"):
        cloop._each(Huge(), 4)
    assert cloop._each(torch.zeros(4, 3, 5), 4)[1:] == (60, 5, 4)  # distance in bytes, row stride, period


def test_a_cell_whose_loop_fails_to_compile_runs_its_kernels_from_python(monkeypatch):
    assert probe.c_works(torch.float32, loop=True)  # (before the compiler breaks)
    build = cgen.build

    def no_loops(source, dtype):
        if "_loop_f" in source:
            raise cgen.CompileError("cc failed (1): internal compiler error")
        return build(source, dtype)

    monkeypatch.setattr(cgen, "build", no_loops)
    fused.c_program.cache_clear()
    try:
        model, _ = pair(known_cell("enas"))
        torch_code = copy.deepcopy(model)
        for layer in torch_code.layers:
            layer.c_kernels = False
        with pytest.warns(RuntimeWarning) as caught:
            prog = fused.select(model.layers[0], torch.zeros(3, 2, 6), torch.float32)
        assert len(caught) == 1
        assert re.search("could not compile the C time loop.*internal compiler error.*runs its C kernels from a "
                         "Python loop", str(caught[0].message))
        assert "_loop_f" not in prog.code.forward_source and "_mm(" in prog.code.forward_source
        x, state, dout = random_inputs(model, 5, 3, "cpu")
        for a, b in zip(outputs_and_grads(model, x, state, dout), outputs_and_grads(torch_code, x, state, dout),
                        strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    finally:
        fused.c_program.cache_clear()


def test_a_cell_that_compiles_in_no_form_warns_once(monkeypatch):
    assert probe.c_works(torch.float32, loop=True)

    def broken(source, dtype):
        raise cgen.CompileError("cc failed (1): out of memory")

    monkeypatch.setattr(cgen, "build", broken)
    fused.c_program.cache_clear()
    try:
        layer = CellRNN(known_cell("mut1"), 4, 4).layers[0]
        with pytest.warns(RuntimeWarning) as caught:
            assert fused.select(layer, torch.zeros(3, 2, 4), torch.float32) is fused.program(layer.spec)
        assert len(caught) == 1 and "could not compile the C kernels" in str(caught[0].message)
    finally:
        fused.c_program.cache_clear()
