"""MKL from the C backend (nas.compile.backends.c.mkl): its packed GEMM, weights packed from their
transposed views, the float64 loop's DGEMM, the kernel classes that need MKL, and MKL's 32-bit sizes."""

import dataclasses

import pytest
import torch
from random_cells import outputs_and_grads, random_inputs

from nas.cell import known_cell
from nas.compile import CellRNN
from nas.compile import fast_path as function
from nas.compile.backends.c import codegen, mkl
from nas.compile.backends.c import loop as c_loop
from nas.compile.backends.c.backend import build_c_program, c_program
from nas.compile.backends.select import select

pytestmark = pytest.mark.skipif(codegen.compiler() is None or not c_loop.available(torch.float32),
                                reason="no C compiler, or no MKL in this torch")


@pytest.mark.skipif(not mkl.available(), reason="this torch exports no MKL packed GEMM")
def test_packed_products_match_torch():
    a, w = torch.randn(5, 7), torch.randn(6, 7)
    for b in (w.t(), w.t().contiguous(), torch.randn(7, 12)[:, ::2]):  # W^T, contiguous, strided
        c = torch.randn(5, b.shape[1])
        want = c + a @ b
        packed = mkl.pack(b, 5)
        mkl.compute()(mkl.ROW_MAJOR, mkl.NO_TRANS, mkl.PACKED, 5, b.shape[1], 7, a.data_ptr(), 7,
                      packed.data_ptr(), 0, 1.0, c.data_ptr(), b.shape[1])
        torch.testing.assert_close(c, want)
    # The Python loop's products (the C loop's: tests/compile/test_c_loop.py)
    assert "_mm(" in c_program(known_cell("lstm"), torch.float32, False).code.forward_source
    assert "_mm(" not in c_program(known_cell("lstm"), torch.float64, False).code.forward_source  # torch's

def test_packed_weights_are_packed_from_the_transposed_view(monkeypatch):
    # A training call hands the packing program views of the weights' own storage (MKL packs W^T
    # from W: no contiguous copy first), and the results are the same bit for bit as from a copy.
    model = CellRNN(known_cell("darts_v2"), 8, 8)
    layer = model.layers[0]
    x = torch.randn(16, 16, 8)  # 256 rows: where the torch products would get a copy
    prog = select(layer, x, torch.float32)
    assert prog.packs
    results, given = [], []

    def spy(forward):
        def run(T, keep, X, base, xo, init, wt):
            given.append([w.data_ptr() for w in wt])
            return forward(T, keep, X, base, xo, init, wt)
        return run

    for packs in (True, False):  # the layer's program, spied on, as if it packed or not
        spied = dataclasses.replace(prog, forward=spy(prog.forward), packs=packs)
        monkeypatch.setattr(function, "select", lambda cell, xs, dtype, spied=spied: spied)
        model.zero_grad()
        out, _ = model(x)
        out.pow(2).sum().backward()
        results.append([out.detach(), *(p.grad.clone() for p in model.parameters())])
    monkeypatch.undo()
    weights = {p.data_ptr() for p in layer.parameters()}
    assert given[0] and set(given[0]) <= weights  # views of the parameters themselves
    assert not set(given[1]) & weights  # copies
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
    assert function.select(layer, x, torch.float32) is prog  # (the spy is gone)


def test_build_c_program_refuses_a_kernel_class_that_cannot_run(monkeypatch):
    spec = known_cell("gru")
    with pytest.raises(ValueError, match="packed GEMM is for float32"):
        build_c_program(spec, torch.float64, codegen.PackedCKernel)
    monkeypatch.setenv("NAS_MKL_PACKED", "0")  # no MKL to call
    with pytest.raises(ValueError, match="no MKL to call from a C loop"):
        build_c_program(spec, torch.float32, c_loop.LoopCKernel)


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
        c_loop._each(Huge(), 4)
    assert c_loop._each(torch.zeros(4, 3, 5), 4)[1:] == (60, 5, 4)  # distance in bytes, row stride, period
