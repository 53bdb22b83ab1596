"""The CPU's C kernels (nas.compile.backends.c.codegen: one fused C function per stage of a step) against the torch
code of the fast path and the registry. tests/compile/test_fast_path.py runs its whole suite (float64,
against the reference path) with them and without them; here: the ops' C forms on awkward values,
float32, the switches, and what happens when the compiler is missing or wrong."""

import copy
import math
import pickle

import pytest
import torch
from random_cells import ALL_OPS, marked_names, outputs_and_grads, random_cells, random_inputs

from nas.cell import KNOWN_CELLS, OPS, CellSpec, known_cell
from nas.cell.ops import render
from nas.compile import CellRNN
from nas.compile.backends import probe
from nas.compile.backends import triton as gpugen
from nas.compile.backends.c import codegen as cgen
from nas.compile.backends.c import mkl
from nas.compile.backends.c.ops import C_OPS, PRELUDE
from nas.compile.backends.stages import Stages
from nas.compile.plan import lower
from nas.compile.sequence import function as fused

pytestmark = pytest.mark.skipif(cgen.compiler() is None, reason="no C compiler")

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
    lib = cgen.build(_harness(name), dtype)
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
        layer.c_kernels = False
    return model, ref


def relative_error(model, ref, T=5, B=3):
    x, state, dout = random_inputs(model, T, B, "cpu")
    got, want = outputs_and_grads(model, x, state, dout), outputs_and_grads(ref, x, state, dout)
    return max(float((a - b).abs().max() / (b.abs().max() + 1)) for a, b in zip(got, want))


@pytest.mark.parametrize("name", KNOWN_CELLS)
def test_known_cells_in_float32_match_the_torch_code(name):
    model, ref = pair(known_cell(name))
    assert fused.select(model.layers[0], torch.zeros(1), torch.float32) is fused.c_program(model.layers[0].spec,
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
        layer.c_kernels = False
    x = torch.randn(3, 4, 6).transpose(0, 1)  # (B=4, T=3, 6), not contiguous
    got, want = [], []
    for m, out in ((model, got), (ref, want)):
        xi = x.clone().requires_grad_()
        y, _ = m(xi)
        y.sum().backward()  # dout: ones expanded, stride 0
        out += [y.detach(), xi.grad, *(p.grad for p in m.parameters())]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_switches_pick_the_torch_code(monkeypatch):
    layer = CellRNN(known_cell("lstm"), 4, 4).layers[0]
    xs = torch.zeros(2, 1, 4)
    assert fused.select(layer, xs, torch.float32) is fused.c_program(layer.spec, torch.float32)
    assert fused.select(layer, xs, torch.float64) is fused.c_program(layer.spec, torch.float64)
    assert fused.select(layer, xs, torch.bfloat16) is fused.program(layer.spec)
    layer.c_kernels = False
    assert fused.select(layer, xs, torch.float32) is fused.program(layer.spec)
    layer.c_kernels = True
    monkeypatch.setenv("NAS_C_KERNELS", "0")
    assert fused.select(layer, xs, torch.float32) is fused.program(layer.spec)


@pytest.mark.parametrize("switch", ["c_kernels", "c_loop"])
def test_a_pickled_cell_keeps_its_switch(switch):
    rnn = CellRNN(known_cell("gru"), 4, 4)
    setattr(rnn.layers[0], switch, False)
    back = pickle.loads(pickle.dumps(rnn))
    assert getattr(back.layers[0], switch) is False
    state = back.layers[0].__dict__.copy()
    del state[switch]  # a cell pickled before the switch existed
    old = type(back.layers[0]).__new__(type(back.layers[0]))
    old.__setstate__(state)
    assert getattr(old, switch) is True


def test_no_compiler_means_the_torch_code_and_one_warning(monkeypatch):
    monkeypatch.setattr(cgen, "compiler", lambda: None)
    probe._c_probe.cache_clear()
    fused.c_program.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="C kernels do not work here.*no C compiler"):
            assert not probe.c_works(torch.float32)
        layer = CellRNN(known_cell("lstm"), 4, 4).layers[0]
        assert fused.select(layer, torch.zeros(2, 1, 4), torch.float32) is fused.program(layer.spec)
    finally:
        probe._c_probe.cache_clear()
        fused.c_program.cache_clear()


def test_wrong_results_are_caught_by_the_probe(monkeypatch):
    # A compiler that miscompiled the kernels: here, a sigmoid that is off by 1%.
    wrong = {**C_OPS, "sigmoid": ("0.99 * nas_sigmoid({a})", C_OPS["sigmoid"][1])}
    monkeypatch.setattr(cgen.CKernel, "OPS", wrong)
    probe._c_probe.cache_clear()
    fused.c_program.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="C kernels do not work here.*differ from the torch code"):
            assert not probe.c_works(torch.float64)
    finally:
        probe._c_probe.cache_clear()
        fused.c_program.cache_clear()


def test_a_cell_that_fails_to_compile_runs_the_torch_code(monkeypatch):
    assert probe.c_works(torch.float32) and probe.c_works(torch.float32, loop=True)  # (before it breaks)

    def broken(source, dtype):
        raise cgen.CompileError("cc failed (1): error: out of memory")

    monkeypatch.setattr(cgen, "build", broken)
    spec = known_cell("enas")
    fused.c_program.cache_clear()
    try:
        model = CellRNN(spec, 4, 4)
        with pytest.warns(RuntimeWarning, match="could not compile the C kernels.*out of memory"):
            out, _ = model(torch.randn(3, 2, 4))
        assert torch.isfinite(out).all()
    finally:
        fused.c_program.cache_clear()


def test_a_full_temporary_directory_means_the_torch_code(monkeypatch):
    assert probe.c_works(torch.float32) and probe.c_works(torch.float32, loop=True)  # (before the directory fills up)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cgen.tempfile, "TemporaryDirectory", full)
    fused.c_program.cache_clear()
    try:
        model = CellRNN(known_cell("mut2"), 4, 4)
        with pytest.warns(RuntimeWarning, match="could not compile the C kernels.*No space left"):
            out, _ = model(torch.randn(3, 2, 4))
        assert torch.isfinite(out).all()
    finally:
        fused.c_program.cache_clear()


def test_generated_code_names_nothing_from_the_spec():
    code, source = cgen.generate(lower(marked_names(known_cell("nas_cell"))))
    for text in (source, code.forward_source, code.backward_source):
        assert "NODE_" not in text and "STATE_" not in text



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
    assert "_mm(" in fused.c_program(known_cell("lstm"), torch.float32, False).code.forward_source
    assert "_mm(" not in fused.c_program(known_cell("lstm"), torch.float64, False).code.forward_source  # torch's


def test_pool_reuses_idle_blocks_and_never_one_in_use():
    pool = cgen.Pool(minimum=0)
    like = torch.empty(0)
    a = pool.take(like, (4, 8))
    a.fill_(1.0)
    b = pool.take(like, (4, 8))  # a is in use: another block
    assert a.data_ptr() != b.data_ptr()
    view = a[1:]
    del a
    c = pool.take(like, (4, 8))  # a's block is still referenced by a view
    assert c.data_ptr() not in (view.data_ptr() - 32, b.data_ptr()) and bool((view == 1).all())
    kept = view.data_ptr() - 32
    del view
    assert pool.take(like, (4, 8)).data_ptr() == kept  # now idle: reused
    assert pool.take(like, (2, 3)).shape == (2, 3)


def test_pool_lets_unused_blocks_go():
    pool = cgen.Pool(minimum=0)
    like = torch.empty(0)
    burst = [pool.take(like, (16,)) for _ in range(10)]  # e.g. outputs kept in a list
    del burst
    for _ in range(200):
        pool.take(like, (8,))
    assert [e[0] for e in pool.blocks] == [32]  # before allocating, the idle burst went


def test_pool_stays_bounded_when_sizes_vary():
    pool = cgen.Pool(minimum=0)
    like = torch.empty(0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):  # a training loop over sequences of random length: 3 buffers a step
        step = [pool.take(like, (int(torch.randint(20, 200, (), generator=gen)), 64)) for _ in range(3)]
        del step
    assert sum(e[0] for e in pool.blocks) <= 2 * 3 * 200 * 64 * 4 * 1.125


def test_pool_never_reuses_a_block_held_by_its_storage_or_shared():
    pool = cgen.Pool(minimum=0)
    like = torch.empty(0)
    a = pool.take(like, (8,))
    storage = a.untyped_storage()  # the caller keeps only the storage
    ptr = a.data_ptr()
    del a
    assert pool.take(like, (8,)).data_ptr() != ptr
    b = pool.take(like, (8,))
    b.share_memory_()  # (what sending it through torch.multiprocessing does)
    ptr_b = b.data_ptr()
    del b
    assert all(pool.take(like, (8,)).data_ptr() != ptr_b for _ in range(3))
    del storage


def test_pool_is_thread_safe():
    import threading

    pool = cgen.Pool(minimum=0)
    like = torch.empty(0)
    wrong = []

    def work(k):
        for i in range(2000):
            t = pool.take(like, (64,))
            t.fill_(k * 10000 + i)
            if not bool((t == k * 10000 + i).all()):
                wrong.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


def test_training_steps_reuse_the_pooled_buffers():
    cgen.POOL.clear()
    rnn = CellRNN(known_cell("darts_v2"), 128, 128)
    x = torch.randn(64, 64, 128)  # buffers of 64 x 64 x 128 floats and more: pooled (>= 1 MiB)
    for step in range(6):
        out, _ = rnn(x)
        out.sum().backward()
        if step == 2:
            blocks = [id(e) for e in cgen.POOL.blocks]
    assert blocks and [id(e) for e in cgen.POOL.blocks] == blocks  # none new, none gone
    with torch.no_grad():
        kept = [rnn(x)[0] for _ in range(3)]  # outputs held by the caller across calls
        want = rnn(x)[0]
    for o in kept:
        assert torch.equal(o, want)



LINEAR_OF_LINEAR = CellSpec.from_dict({"state": ["h"], "nodes": {
    "a": {"op": "linear", "in": ["x", "h"]}, "b": {"op": "linear", "in": ["a"]},
    "t": {"op": "tanh", "in": ["b"]}}, "outputs": {"h": "t"}})


def test_gradients_written_into_the_forward_buffers():
    def hosted(spec):
        st = Stages(lower(spec))
        return gpugen.hosted(st, gpugen._Driver(st, cgen.CKernel))

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
    assert gpugen.activations(st, cgen.CKernel) == {"i": "i_lin", "f": "f_lin", "g": "g_lin",
                                                                         "o": "o_lin"}
    assert gpugen.activations(st, gpugen.TritonKernel) == {}
    kept = 0
    for spec in specs:
        st = Stages(lower(spec))
        kept += len(gpugen.activations(st, cgen.CKernel))
        got = outputs_of(*pair(spec, size=5))
        fused.c_program.cache_clear()
        cgen.CKernel.ACTIVATIONS = False
        try:
            want = outputs_of(*pair(spec, size=5))
        finally:
            cgen.CKernel.ACTIVATIONS = True
            fused.c_program.cache_clear()
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a.nan_to_num(), b.nan_to_num()) and torch.equal(a.isnan(), b.isnan()), spec.to_json()
    assert kept >= 20


def outputs_of(model, ref):
    torch.manual_seed(1)
    x, state, dout = random_inputs(model, 4, 3, "cpu")
    return outputs_and_grads(model, x, state, dout)
