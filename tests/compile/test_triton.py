"""The GPU code (nas.compile.backends.triton: cuBLAS products and one fused Triton kernel per stage) against
the torch code of the fast path, which tests/compile/test_fast_path.py holds to the reference path.

Without a GPU the kernels run in Triton's CPU interpreter (tests/conftest.py), on CPU tensors:
the generated code is the same, so these tests check it everywhere; with a GPU they run on it."""

import copy
import math

import pytest
import torch
from random_cells import ALL_OPS, SHARED_SOURCE, X_SOURCE, outputs_and_grads, random_cells, random_inputs

from nas.cell import KNOWN_CELLS, CellSpec, known_cell
from nas.cell.ops import OPS
from nas.compile import CellRNN
from nas.compile import fast_path as function
from nas.compile.backends.triton import gpu_program
from nas.compile.backends.triton_ops import TRITON
from nas.compile.sequence.program import program

pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def gpu_code(monkeypatch):
    """Make every CellRNN on any device run the GPU program (the interpreter's, on the CPU)."""
    def select(cell, xs, dtype):
        return gpu_program(cell.spec) if cell.policy.allows("triton") else program(cell.spec)  # not C

    monkeypatch.setattr(function, "select", select)


def pair(spec, size=8, layers=1):
    torch.manual_seed(0)
    model = CellRNN(spec, size, size, num_layers=layers).to(DEVICE)
    ref = copy.deepcopy(model)
    ref.backend = "torch"
    return model, ref


def relative_error(model, ref, T=5, B=3):
    x, state, dout = random_inputs(model, T, B, DEVICE)
    got, want = outputs_and_grads(model, x, state, dout), outputs_and_grads(ref, x, state, dout)
    return max(float((a - b).abs().max() / (b.abs().max() + 1)) for a, b in zip(got, want))


@pytest.mark.parametrize("name", KNOWN_CELLS)
def test_known_cells_match_the_torch_code(gpu_code, name):
    model, ref = pair(known_cell(name), layers=2)
    assert relative_error(model, ref) < 1e-5


def test_every_op_has_a_triton_form_and_matches(gpu_code):
    assert set(TRITON) == set(OPS) - {"linear"}  # the random cells draw the rest of them
    model, ref = pair(ALL_OPS)
    assert relative_error(model, ref) < 1e-5


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy (the interpreter) overflowing
def test_random_cells_match_the_torch_code(gpu_code):
    compared, count = 0, 10 if DEVICE == "cuda" else 30  # on a GPU each cell compiles its kernels
    for spec in random_cells(11, count):
        err = relative_error(*pair(spec, size=6, layers=2), T=4, B=2)
        if math.isnan(err):
            continue  # an unbounded random cell overflowed in both
        assert err < 1e-4, spec.to_json()
        compared += 1
    assert compared >= count * 0.8


@pytest.mark.parametrize("spec", [SHARED_SOURCE, X_SOURCE], ids=["shared source", "x source"])
def test_awkward_products(gpu_code, spec):
    assert relative_error(*pair(spec, layers=2)) < 1e-5


def test_double_backward_raises(gpu_code):
    model, _ = pair(known_cell("lstm"))
    x = torch.randn(4, 2, 8, device=DEVICE, requires_grad=True)
    out, _ = model(x)
    (g,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="marked with @once_differentiable"):
        g.norm().backward()


def test_no_grad_forward_matches(gpu_code):
    model, ref = pair(known_cell("darts_v2"))
    x = torch.randn(6, 2, 8, device=DEVICE)
    with torch.no_grad():
        (out, final), (want, want_final) = model(x), ref(x)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(final, want_final):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_generated_code_names_nothing_from_the_spec():
    spec = CellSpec.from_dict({"state": ["HIDDEN_STATE"], "nodes": {
        "EVIL_NODE": {"op": "linear", "in": ["x", "HIDDEN_STATE"]},
        "OTHER_NODE": {"op": "tanh", "in": ["EVIL_NODE"]}}, "outputs": {"HIDDEN_STATE": "OTHER_NODE"}})
    prog = gpu_program(spec)
    source = prog.code.forward_source + prog.code.backward_source
    assert "EVIL" not in source and "HIDDEN" not in source and "OTHER" not in source


def test_under_emulated_cuda_graphs(gpu_code):
    """The GPU code inside CUDA graphs (their bookkeeping emulated on the CPU: nas.compile.backends.cudagraphs)."""
    from nas.compile.backends.cudagraphs import GraphCache, capture_emulated

    model, ref = pair(known_cell("darts_v2"))
    if DEVICE == "cpu":
        for layer in model.layers:
            layer._graphs = GraphCache(capture_emulated)
    for _ in range(3):  # eager, captured, replayed
        assert relative_error(model, ref) < 1e-5
    assert model.layers[0]._graphs.runners
