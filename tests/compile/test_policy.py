"""The backend setting (nas.compile.backends.policy) and what it selects (nas.compile.backends.select):
typed values with one-line errors, the same two keywords on every module that takes them, the
environment variables as aliases of "auto", and the program each setting picks per call."""

import pickle

import pytest
import torch

from nas.cell import known_cell
from nas.compile import CellRNN, Policy, compile_cell
from nas.compile.backends import policy as settings
from nas.compile.backends.c import backend as c_backend
from nas.compile.backends.c import codegen, mkl
from nas.compile.backends.c import loop as c_loop
from nas.compile.backends.c.backend import c_program
from nas.compile.backends.select import select
from nas.compile.sequence.program import program
from nas.lm import CharLM

needs_c = pytest.mark.skipif(codegen.compiler() is None, reason="no C compiler")
needs_c_loop = pytest.mark.skipif(codegen.compiler() is None or not c_loop.available(torch.float32),
                                  reason="no C compiler, or no MKL in this torch")


# -- the values ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"backend": "gpu"}, "backend: expected one of auto, torch, c, triton, got 'gpu'"),
    ({"backend": None}, "backend: expected one of auto, torch, c, triton, got None"),
    ({"cuda_graphs": True}, "cuda_graphs: expected one of auto, on, off, got True"),
    ({"c_loop": "no"}, "c_loop: expected True or False, got 'no'"),
])
def test_a_bad_value_is_a_one_line_error(kwargs, message):
    with pytest.raises(ValueError) as caught:
        Policy(**kwargs)
    assert str(caught.value) == message


@pytest.mark.parametrize("make", [
    lambda **kw: CellRNN(known_cell("gru"), 4, 4, **kw),
    lambda **kw: compile_cell(known_cell("gru"), 4, 4, **kw),
    lambda **kw: CharLM(known_cell("gru"), 10, 4, **kw),
], ids=["CellRNN", "compile_cell", "CharLM"])
def test_every_module_takes_the_two_keywords(make):
    model = make(backend="torch", cuda_graphs="off")
    cells = model.rnn.layers if isinstance(model, CharLM) else getattr(model, "layers", [model])
    assert all(c.policy == Policy("torch", "off") for c in cells)
    with pytest.raises(ValueError, match="^backend: expected one of auto, torch, c, triton, got 'C'$"):
        make(backend="C")
    with pytest.raises(ValueError, match="^cuda_graphs: expected one of auto, on, off, got 'yes'$"):
        make(cuda_graphs="yes")


def test_setting_a_built_model_sets_every_layer():
    rnn = CellRNN(known_cell("lstm"), 4, 4, num_layers=3)
    assert rnn.backend == "auto" and rnn.cuda_graphs == "auto"
    rnn.backend = "torch"
    rnn.cuda_graphs = "off"
    assert all(layer.policy == Policy("torch", "off") for layer in rnn.layers)
    with pytest.raises(ValueError, match="backend: expected"):
        rnn.backend = "fast"
    assert rnn.backend == "torch"  # (a refused value changes nothing)
    rnn.c_loop = False  # the C backend's sub-option, the same way
    assert rnn.c_loop is False and all(layer.policy == Policy("torch", "off", False) for layer in rnn.layers)


def test_the_aliases_apply_to_auto_only(monkeypatch):
    auto, c, triton = Policy(), Policy("c"), Policy("triton")
    assert auto.allows("c") and auto.allows("triton") and not c.allows("triton") and not triton.allows("c")
    assert not Policy("torch").allows("c") and not Policy("torch").allows("triton")
    monkeypatch.setenv("NAS_C_KERNELS", "0")
    monkeypatch.setenv("NAS_TRITON", "0")
    assert not auto.allows("c") and not auto.allows("triton")
    assert c.allows("c") and triton.allows("triton")  # an explicit choice wins
    monkeypatch.setenv("NAS_CUDA_GRAPHS", "0")
    assert not auto.graphs() and Policy(cuda_graphs="on").graphs() and not Policy(cuda_graphs="off").graphs()
    monkeypatch.setenv("NAS_C_LOOP", "0")
    assert not auto.loop() and not Policy(c_loop=False).loop()
    monkeypatch.delenv("NAS_C_LOOP")
    assert auto.loop() and not Policy(c_loop=False).loop()


@pytest.mark.parametrize(("switches", "setting"), [
    ({}, Policy()),
    ({"c_kernels": False}, Policy("triton")),
    ({"triton": False}, Policy("c")),
    ({"triton": False, "c_kernels": False}, Policy("torch")),
    ({"cuda_graphs": False, "c_loop": False}, Policy(cuda_graphs="off", c_loop=False)),
])
def test_the_old_switches_map_to_the_setting(switches, setting):
    assert settings.from_switches(**switches) == setting


# -- what each setting selects ------------------------------------------------------------------
@needs_c
def test_switches_pick_the_torch_code(monkeypatch):
    layer = CellRNN(known_cell("lstm"), 4, 4).layers[0]
    xs = torch.zeros(2, 1, 4)
    assert select(layer, xs, torch.float32) is c_program(layer.spec, torch.float32)
    assert select(layer, xs, torch.float64) is c_program(layer.spec, torch.float64)
    assert select(layer, xs, torch.bfloat16) is program(layer.spec)
    layer.backend = "torch"
    assert select(layer, xs, torch.float32) is program(layer.spec)
    layer.backend = "auto"
    monkeypatch.setenv("NAS_C_KERNELS", "0")  # the alias
    assert select(layer, xs, torch.float32) is program(layer.spec)
    layer.backend = "c"
    assert select(layer, xs, torch.float32) is c_program(layer.spec, torch.float32)


def test_the_cpu_never_runs_the_triton_code():
    cell = CellRNN(known_cell("lstm"), 4, 4).layers[0]
    cell.backend = "triton"
    assert select(cell, torch.zeros(2, 1, 4), torch.float32) is program(cell.spec)


@needs_c_loop
def test_switches(monkeypatch):
    layer = CellRNN(known_cell("gru"), 4, 4).layers[0]
    xs = torch.zeros(2, 1, 4)
    assert select(layer, xs, torch.float32) is c_program(layer.spec, torch.float32)
    layer.policy = layer.policy.replace(c_loop=False)
    assert select(layer, xs, torch.float32) is c_program(layer.spec, torch.float32, False)
    layer.policy = layer.policy.replace(c_loop=True)
    monkeypatch.setenv("NAS_C_LOOP", "0")
    assert select(layer, xs, torch.float32) is c_program(layer.spec, torch.float32, False)
    monkeypatch.setenv("NAS_C_LOOP", "1")
    monkeypatch.setenv("NAS_MKL_PACKED", "0")  # no MKL: the Python loop with torch.mm
    assert not c_loop.available(torch.float32) and mkl.gemm(torch.float64) is None
    prog = c_backend._c_program.__wrapped__(layer.spec, torch.float32, True)
    assert "for t in range(T)" in prog.code.forward_source and "_mm(" not in prog.code.forward_source


@needs_c_loop
def test_the_setting_is_per_cell(monkeypatch):
    # (it replaced a table of forced programs per cell and dtype)
    monkeypatch.delenv("NAS_C_LOOP", raising=False)
    a, b = CellRNN(known_cell("gru"), 4, 4).layers[0], CellRNN(known_cell("gru"), 4, 4).layers[0]
    xs = torch.zeros(2, 1, 4)
    python_loop = c_program(a.spec, torch.float32, False)
    a.policy = Policy(c_loop=False)
    assert select(a, xs, torch.float32) is python_loop
    assert select(b, xs, torch.float32) is c_program(b.spec, torch.float32)
    assert select(a, xs.double(), torch.float64) is c_program(a.spec, torch.float64, False)
    a.policy = Policy()
    assert select(a, xs, torch.float32) is c_program(a.spec, torch.float32)


@pytest.mark.parametrize("setting", [Policy("torch"), Policy("c", "off"), Policy(c_loop=False)])
def test_a_pickled_cell_keeps_its_setting(setting):
    rnn = CellRNN(known_cell("gru"), 4, 4)
    rnn.policy = setting
    back = pickle.loads(pickle.dumps(rnn))
    assert back.layers[0].policy == setting


@pytest.mark.parametrize("switch", ["c_kernels", "c_loop"])
def test_a_cell_pickled_with_the_old_switches_keeps_them(switch):
    # Cells pickled before the setting held four booleans (and, before those existed, fewer).
    layer = CellRNN(known_cell("gru"), 4, 4).layers[0]
    state = layer.__dict__.copy()
    del state["policy"]
    state.update(triton=True, cuda_graphs=True, **{switch: False})
    old = type(layer).__new__(type(layer))
    old.__setstate__(dict(state))
    assert old.policy == settings.from_switches(**{switch: False})
    assert old.policy != Policy()
    del state[switch]  # a cell pickled before the switch existed
    older = type(layer).__new__(type(layer))
    older.__setstate__(state)
    assert older.policy == Policy()
