"""The CPU's C kernels (nas.compile.backends.c.codegen: one fused C function per stage of a step) against the torch
code of the fast path and the registry. tests/compile/test_fast_path.py runs its whole suite (float64,
against the reference path) with them and without them; here: the ops' C forms on awkward values,
float32, and what happens when the compiler fails. (The backend setting: test_policy.py; the probe:
test_probe.py; MKL: test_c_mkl.py; the buffer pool: test_c_pool.py.)"""

import copy
import math

import pytest
import torch
from random_cells import ALL_OPS, marked_names, outputs_and_grads, random_cells, random_inputs

from nas.cell import KNOWN_CELLS, OPS, CellSpec, known_cell
from nas.cell.ops import render
from nas.compile import CellRNN
from nas.compile.backends import stage_code
from nas.compile.backends.c import codegen
from nas.compile.backends.c.backend import c_program, c_works
from nas.compile.backends.c.ops import C_OPS, PRELUDE
from nas.compile.backends.driver import StageDriver, activations
from nas.compile.backends.select import select
from nas.compile.backends.stages import Stages
from nas.compile.backends.triton import TritonKernel
from nas.compile.plan import lower

pytestmark = pytest.mark.skipif(codegen.compiler() is None, reason="no C compiler")

SPECIAL = [0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 1e-3, -1e-3, 0.05, -0.05, 0.0999, -0.0999, 0.1, -0.1,
           0.1001, -0.1001, 0.3, -0.3, 0.5, -0.5, 1.0, -1.0, 2.5, -2.5, 9.0, -9.0, 20.0, -20.0, 44.0,
           -44.0, 87.5, -87.5, 88.5, -88.5, 100.0, -100.0, 800.0, -800.0, 1e30, -1e30,
           math.inf, -math.inf, math.nan]
OPTIONS = {"leaky_relu": {"negative_slope": 0.2}}


def _values(dtype):
    special = torch.tensor(SPECIAL, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    spread = torch.randn(2000, generator=gen, dtype=torch.float64) * torch.logspace(-3, 1.5, 2000, dtype=torch.float64)
    return torch.cat([special, spread.to(dtype)])


def _arity(name):
    return 2 if name == "mean" else OPS[name].arity[0]


def _harness(name):
    """C functions computing op `name`'s value and each operand's gradient over arrays."""
    expr, grads = C_OPS[name]
    n, opts = _arity(name), OPTIONS.get(name, {})
    operands = [f"a{i}[i]" for i in range(n)]
    params = "".join(f", intptr_t p{i}" for i in range(n))
    lines = [f"void _value(int64_t N, intptr_t y_{params}) {{",
             "    T *y = (T *)y_;", *[f"    T *a{i} = (T *)p{i};" for i in range(n)],
             f"    for (int64_t i = 0; i < N; i++) y[i] = {render(expr, operands, opts)};", "}"]
    for j in range(n):
        template = grads[min(j, len(grads) - 1)]
        lines += [f"void _grad{j}(int64_t N, intptr_t d_, intptr_t y_, intptr_t g_{params}) {{",
                  "    T *d = (T *)d_, *y = (T *)y_, *g = (T *)g_;",
                  *[f"    T *a{i} = (T *)p{i};" for i in range(n)],
                  "#pragma GCC ivdep",
                  f"    for (int64_t i = 0; i < N; i++) d[i] = {render(template, operands, opts, y='y[i]', g='g[i]')};",
                  "}"]
    return PRELUDE + "\n".join(lines) + "\n"


def _torch_op(name, operands, dtype):
    """The registry's value, an incoming gradient, and torch autograd's operand gradients (autograd,
    not the registry's templates: its relu passes the gradient at NaN, as the kernels do)."""
    op = OPS[name]
    names = [f"a{i}" for i in range(len(operands))]
    leaves = [a.clone().requires_grad_() for a in operands]
    env = {"torch": torch, **dict(zip(names, leaves))}
    y = eval(render(op.expr, names, {**op.options, **OPTIONS.get(name, {})}), env)
    g = torch.linspace(-2, 2, y.numel(), dtype=dtype)
    grads = torch.autograd.grad(y, leaves, g, allow_unused=True)
    return y.detach(), g, [torch.zeros_like(g) if d is None else d for d in grads]


def assert_near(got, want, scale, rtol):
    """Equal NaNs and infinities; elsewhere within rtol of |want| + scale (the magnitude of what
    went in: a few units in the last place of the inputs, for sums that cancel) and 1e-30 (exp of
    a very negative number is the smallest normal number here, 0 in torch)."""
    assert torch.equal(got.isnan(), want.isnan())
    finite = want.isfinite()
    assert torch.equal(got[~finite & ~want.isnan()], want[~finite & ~want.isnan()])
    bound = rtol * (want.abs() + scale.nan_to_num(posinf=0.0)) + 1e-30
    err = (got - want).abs()
    bad = finite & ~(err <= bound)
    assert not bad.any(), f"{int(bad.sum())} values off, e.g. got {got[bad][:3]}, want {want[bad][:3]}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(C_OPS))
def test_op_matches_the_registry_on_awkward_values(name, dtype):
    assert set(C_OPS) == set(OPS) - {"linear"}
    values = _values(dtype)
    operands = [values.roll(17 * i) for i in range(_arity(name))]
    y, g, grads = _torch_op(name, operands, dtype)
    lib = codegen.build(_harness(name), dtype)
    got = torch.empty_like(values)
    lib["_value"](values.numel(), got.data_ptr(), *(a.data_ptr() for a in operands))
    magnitude = torch.stack([1 + a.abs() for a in operands]).prod(0)
    rtol = 4e-7 if dtype == torch.float32 else 1e-15  # a few units in the last place
    assert_near(got, y, magnitude - 1, rtol)
    for j, want in enumerate(grads):
        d = torch.empty_like(values)
        lib[f"_grad{j}"](values.numel(), d.data_ptr(), y.data_ptr(), g.data_ptr(), *(a.data_ptr() for a in operands))
        assert_near(d, want, g.abs() * magnitude, rtol)


def pair(spec, size=8, layers=2, dtype=torch.float32):
    torch.manual_seed(0)
    model = CellRNN(spec, size, size, num_layers=layers).to(dtype=dtype)
    ref = copy.deepcopy(model)
    for layer in ref.layers:
        layer.backend = "torch"
    return model, ref


def relative_error(model, ref, T=5, B=3):
    x, state, dout = random_inputs(model, T, B, "cpu")
    got, want = outputs_and_grads(model, x, state, dout), outputs_and_grads(ref, x, state, dout)
    return max(float((a - b).abs().max() / (b.abs().max() + 1)) for a, b in zip(got, want))


@pytest.mark.parametrize("name", KNOWN_CELLS)
def test_known_cells_in_float32_match_the_torch_code(name):
    model, ref = pair(known_cell(name))
    assert select(model.layers[0], torch.zeros(1), torch.float32) is c_program(model.layers[0].spec,
                                                                                        torch.float32)
    assert relative_error(model, ref) < 1e-5


def test_random_cells_and_every_op_in_float32():
    compared = 0
    for spec in [ALL_OPS, *random_cells(12, 12)]:
        err = relative_error(*pair(spec, size=6), T=4, B=2)
        if math.isnan(err):
            continue  # an unbounded random cell overflowed in both
        assert err < 1e-4, spec.to_json()
        compared += 1
    assert compared >= 10


def test_strided_input_and_output_gradient():
    # batch_first transposes x; an expanded output gradient has stride 0: the C kernels need unit
    # column strides, which the driver makes.
    torch.manual_seed(0)
    model = CellRNN(known_cell("mut1"), 6, 6, batch_first=True)  # mut1 reads x elementwise
    ref = copy.deepcopy(model)
    for layer in ref.layers:
        layer.backend = "torch"
    x = torch.randn(3, 4, 6).transpose(0, 1)  # (B=4, T=3, 6), not contiguous
    got, want = [], []
    for m, out in ((model, got), (ref, want)):
        xi = x.clone().requires_grad_()
        y, _ = m(xi)
        y.sum().backward()  # dout: ones expanded, stride 0
        out += [y.detach(), xi.grad, *(p.grad for p in m.parameters())]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_cell_that_fails_to_compile_runs_the_torch_code(monkeypatch):
    assert c_works(torch.float32) and c_works(torch.float32, loop=True)  # (before it breaks)

    def broken(source, dtype):
        raise codegen.CompileError("cc failed (1): error: out of memory")

    monkeypatch.setattr(codegen, "build", broken)
    spec = known_cell("enas")
    c_program.cache_clear()
    try:
        model = CellRNN(spec, 4, 4)
        with pytest.warns(RuntimeWarning, match="could not compile the C kernels.*out of memory"):
            out, _ = model(torch.randn(3, 2, 4))
        assert torch.isfinite(out).all()
    finally:
        c_program.cache_clear()


def test_a_full_temporary_directory_means_the_torch_code(monkeypatch):
    assert c_works(torch.float32) and c_works(torch.float32, loop=True)  # (before the directory fills up)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(codegen.tempfile, "TemporaryDirectory", full)
    c_program.cache_clear()
    try:
        model = CellRNN(known_cell("mut2"), 4, 4)
        with pytest.warns(RuntimeWarning, match="could not compile the C kernels.*No space left"):
            out, _ = model(torch.randn(3, 2, 4))
        assert torch.isfinite(out).all()
    finally:
        c_program.cache_clear()


def test_generated_code_names_nothing_from_the_spec():
    code, source = codegen.generate(lower(marked_names(known_cell("nas_cell"))))
    for text in (source, code.forward_source, code.backward_source):
        assert "NODE_" not in text and "STATE_" not in text


LINEAR_OF_LINEAR = CellSpec.from_dict({"state": ["h"], "nodes": {
    "a": {"op": "linear", "in": ["x", "h"]}, "b": {"op": "linear", "in": ["a"]},
    "t": {"op": "tanh", "in": ["b"]}}, "outputs": {"h": "t"}})


def test_gradients_written_into_the_forward_buffers():
    def hosted(spec):
        st = Stages(lower(spec))
        return stage_code.hosted(st, StageDriver(st, codegen.CKernel))

    assert hosted(known_cell("darts_v2")) == [1, 2, 3, 4, 5, 6]
    assert hosted(LINEAR_OF_LINEAR) == [2]  # a's values, in G1, are read again for W_b's gradient
    for spec in (LINEAR_OF_LINEAR, known_cell("darts_v2")):
        model, ref = pair(spec, dtype=torch.float64)
        assert relative_error(model, ref) < 1e-12


@pytest.mark.parametrize(("hidden", "batch"), [(1, 1), (1, 3), (3, 1)])
@pytest.mark.parametrize("name", ["lstm", "darts_v2", "mut1"])
def test_size_one_dimensions(name, hidden, batch):
    # torch may report any stride for a size-1 dimension: MKL rejected the leading dimension of an
    # H = 1 weight (and the packed product then crashed), and the unit-column check failed.
    model, ref = pair(known_cell(name), size=hidden)
    assert relative_error(model, ref, T=4, B=batch) < 1e-5
    x = torch.randn(4, batch, hidden)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)


def test_kept_activations_change_no_bit():
    # The forward writes a sigmoid / tanh / relu of a linear value read nowhere else over its G
    # column, and the backward loads it instead of recomputing it: the same numbers either way.
    specs = [known_cell(n) for n in KNOWN_CELLS] + random_cells(8, 10)
    st = Stages(lower(known_cell("lstm")))
    assert activations(st, codegen.CKernel) == {"i": "i_lin", "f": "f_lin", "g": "g_lin",
                                                                         "o": "o_lin"}
    assert activations(st, TritonKernel) == {}
    kept = 0
    for spec in specs:
        st = Stages(lower(spec))
        kept += len(activations(st, codegen.CKernel))
        got = outputs_of(*pair(spec, size=5))
        c_program.cache_clear()
        codegen.CKernel.ACTIVATIONS = False
        try:
            want = outputs_of(*pair(spec, size=5))
        finally:
            codegen.CKernel.ACTIVATIONS = True
            c_program.cache_clear()
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a.nan_to_num(), b.nan_to_num()) and torch.equal(a.isnan(), b.isnan()), spec.to_json()
    assert kept >= 20


def outputs_of(model, ref):
    torch.manual_seed(1)
    x, state, dout = random_inputs(model, 4, 3, "cpu")
    return outputs_and_grads(model, x, state, dout)
