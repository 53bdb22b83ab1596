"""The probe (nas.compile.backends.probe): a backend's program checked against the torch program on
random tensors, and what the C and Triton backends do with its verdict (one warning, the torch code
or the Python loop, never wrong numbers)."""

import dataclasses

import pytest
import torch

from nas.cell import CellSpec, known_cell
from nas.compile import CellRNN
from nas.compile.backends import probe
from nas.compile.backends.c import backend as c_backend
from nas.compile.backends.c import codegen
from nas.compile.backends.c import loop as c_loop
from nas.compile.backends.c.backend import c_program, c_works
from nas.compile.backends.c.ops import C_OPS
from nas.compile.backends.select import select
from nas.compile.sequence.program import program

CPU = torch.device("cpu")
needs_c = pytest.mark.skipif(codegen.compiler() is None, reason="no C compiler")
needs_c_loop = pytest.mark.skipif(codegen.compiler() is None or not c_loop.available(torch.float32),
                                  reason="no C compiler, or no MKL in this torch")


# -- the check itself -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_the_torch_program_passes_in_every_dtype(dtype):
    spec = probe.probe_cell()
    probe.check(program(spec), spec, CPU, dtype)


def _off(fn, which: int, scale: float):
    """fn with its result's element `which` (a tensor or a list of them) scaled."""
    def wrapped(*args):
        result = list(fn(*args))
        part = result[which]
        result[which] = [t if t is None else t * scale for t in part] if isinstance(part, (list, tuple)) \
            else part * scale
        return tuple(result)
    return wrapped


@pytest.mark.parametrize(("half", "which"), [("forward", 0), ("forward", 1), ("backward", 4), ("backward", 3)],
                         ids=["outputs", "final states", "weight gradients", "initial state gradients"])
def test_a_program_that_computes_something_else_is_rejected(half, which):
    spec = probe.probe_cell()
    right = program(spec)
    wrong = dataclasses.replace(right, **{half: _off(getattr(right, half), which, 1.001)})
    with pytest.raises(RuntimeError, match=r"^they differ from the torch code's results by \S+ \(relative\)$"):
        probe.check(wrong, spec, CPU, torch.float64)


def test_another_cells_program_is_rejected():
    # A program of another cell with the same inputs computes another function.
    spec = probe.probe_cell()
    swapped = CellSpec.from_dict({**probe.PROBE, "nodes": {**probe.PROBE["nodes"],
                                                                 "s": {"op": "sub", "in": ["l", "r"]}}})
    with pytest.raises(RuntimeError, match="differ from the torch code"):
        probe.check(program(swapped), spec, CPU, torch.float32)


def test_the_check_keeps_the_callers_random_state_and_mode():
    spec = probe.probe_cell()
    torch.manual_seed(5)
    with torch.inference_mode():
        probe.check(program(spec), spec, CPU, torch.float32)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))


# -- the C backend's probes -----------------------------------------------------------------------
@pytest.fixture
def fresh_probes():
    """The probes' verdicts and the compiled programs forgotten before and after the test."""
    c_backend._c_probe.cache_clear()
    c_program.cache_clear()
    yield
    c_backend._c_probe.cache_clear()
    c_program.cache_clear()


@needs_c
def test_no_compiler_means_the_torch_code_and_one_warning(monkeypatch, fresh_probes):
    monkeypatch.setattr(codegen, "compiler", lambda: None)
    with pytest.warns(RuntimeWarning, match="C kernels do not work here.*no C compiler"):
        assert not c_works(torch.float32)
    layer = CellRNN(known_cell("lstm"), 4, 4).layers[0]
    assert select(layer, torch.zeros(2, 1, 4), torch.float32) is program(layer.spec)


@needs_c
def test_wrong_results_are_caught_by_the_probe(monkeypatch, fresh_probes):
    # A compiler that miscompiled the kernels: here, a sigmoid that is off by 1%.
    wrong = {**C_OPS, "sigmoid": ("0.99 * nas_sigmoid({a})", C_OPS["sigmoid"][1])}
    monkeypatch.setattr(codegen.CKernel, "OPS", wrong)
    with pytest.warns(RuntimeWarning, match="C kernels do not work here.*differ from the torch code"):
        assert not c_works(torch.float64)


@needs_c_loop
def test_a_failing_loop_keeps_the_kernels(monkeypatch, fresh_probes):
    # A loop whose sigmoid is off by 1% (as a miscompiled loop would be): its probe fails with one
    # warning, and cells run the same C kernels from the Python loop, not the torch kernels.
    wrong = {**C_OPS, "sigmoid": ("0.99 * nas_sigmoid({a})", C_OPS["sigmoid"][1])}
    monkeypatch.setattr(c_loop.LoopCKernel, "OPS", wrong)
    # (the probe runs the C code it is asked about, whatever the setting's aliases say)
    monkeypatch.setenv("NAS_C_LOOP", "0")
    monkeypatch.setenv("NAS_C_KERNELS", "0")
    with pytest.warns(RuntimeWarning) as caught:
        assert not c_works(torch.float64, loop=True)
    monkeypatch.delenv("NAS_C_LOOP")
    monkeypatch.delenv("NAS_C_KERNELS")
    assert len(caught) == 1 and "C time loop does not work here" in str(caught[0].message)
    assert "differ from the torch code" in str(caught[0].message)
    assert c_works(torch.float64)  # (silently: its verdict came with the loop's)
    model = CellRNN(known_cell("lstm"), 5, 5).double()
    ref = CellRNN(known_cell("lstm"), 5, 5, fused=False).double()
    ref.load_state_dict(model.state_dict())
    xs = torch.randn(4, 2, 5, dtype=torch.float64)
    assert select(model.layers[0], xs, torch.float64) is c_program(model.layers[0].spec, torch.float64, False)
    torch.testing.assert_close(model(xs)[0], ref(xs)[0], rtol=1e-12, atol=1e-12)


@needs_c_loop
@pytest.mark.parametrize("loop_first", [True, False])
def test_failing_kernels_warn_once_whichever_probe_runs_first(monkeypatch, fresh_probes, loop_first):
    monkeypatch.setattr(codegen, "compiler", lambda: None)
    with pytest.warns(RuntimeWarning) as caught:
        works = [c_works(torch.float32, loop=loop) for loop in (loop_first, not loop_first)]
    assert works == [False, False]
    assert len(caught) == 1 and "C kernels do not work here" in str(caught[0].message)
    layer = CellRNN(known_cell("gru"), 4, 4).layers[0]
    assert select(layer, torch.zeros(2, 1, 4), torch.float32) is program(layer.spec)


@needs_c_loop
@pytest.mark.parametrize("how", ["setting", "alias"])
def test_without_the_c_loop_nothing_compiles_it(monkeypatch, fresh_probes, how):
    # c_loop=False (or its alias NAS_C_LOOP=0): neither the probe nor the cell compiles a loop it will not run.
    sources = []
    build = codegen.build
    monkeypatch.setattr(codegen, "build", lambda source, dtype: sources.append(source) or build(source, dtype))
    if how == "alias":
        monkeypatch.setenv("NAS_C_LOOP", "0")
    model = CellRNN(known_cell("gru"), 4, 4)
    model.policy = model.policy.replace(c_loop=how == "alias")
    model(torch.randn(3, 2, 4))
    assert len(sources) == 2  # the probe cell's and the GRU's
    assert not any("_loop_f" in s for s in sources)
    monkeypatch.delenv("NAS_C_LOOP", raising=False)
    CellRNN(known_cell("gru"), 4, 4)(torch.randn(3, 2, 4))
    assert len(sources) == 4 and all("_loop_f" in s for s in sources[2:])


# -- the Triton backend's probe (in Triton's CPU interpreter where there is no GPU) ---------------
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def triton_backend():
    pytest.importorskip("triton")
    from nas.compile.backends import triton

    triton._probe.cache_clear()
    yield triton
    triton._probe.cache_clear()


def test_probe_runs_the_kernels_once_per_device(triton_backend):
    assert triton_backend.triton_works(DEVICE)
    assert triton_backend.triton_works(DEVICE)
    assert triton_backend._probe.cache_info().currsize == 1


def test_probe_trains_in_any_mode_and_keeps_the_random_state(triton_backend):
    torch.manual_seed(5)
    with torch.inference_mode():
        assert triton_backend.triton_works(DEVICE)
    after_probe = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after_probe, torch.rand(3))


def test_kernels_that_fail_fall_back_with_a_warning(triton_backend, monkeypatch):
    def broken(spec):
        raise RuntimeError("no compiler for this GPU")

    monkeypatch.setattr(triton_backend, "gpu_program", broken)
    with pytest.warns(RuntimeWarning, match="Triton kernels do not run.*no compiler"):
        assert not triton_backend.triton_works(DEVICE)


def test_triton_kernels_that_compute_something_else_are_refused(triton_backend, monkeypatch):
    wrong = {**triton_backend.TritonKernel.OPS, "tanh": ("0.99 * (2.0 * tl.sigmoid(2.0 * {a}) - 1.0)",
                                                         triton_backend.TritonKernel.OPS["tanh"][1])}
    monkeypatch.setattr(triton_backend.TritonKernel, "OPS", wrong)
    triton_backend.gpu_program.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="Triton kernels do not run.*differ from the torch code"):
            assert not triton_backend.triton_works(DEVICE)
    finally:
        triton_backend.gpu_program.cache_clear()
