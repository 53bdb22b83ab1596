"""Tests for nas.compile.modules and nas.compile.plan: shapes, errors, parameters, generated code.
(Just over 400 lines: the two modules share one public surface, CellRNN, and its tests stay together.)"""

import math

import pytest
import torch
from random_cells import ALL_OPS, random_cells
from torch.nn.functional import linear

from nas.cell import KNOWN_CELLS, OPS, CellError, CellSpec, Node, known_cell
from nas.cell.known import f, lin
from nas.compile import CellRNN, CompiledCell, compile_cell
from nas.compile.plan import lower

B, I, H = 3, 5, 4


def needs_raw_x(spec):
    return lower(spec).needs_raw_x


def sizes(spec):
    """(input_size, hidden_size) the cell accepts: I != H unless it applies elementwise ops to x."""
    return (H, H) if needs_raw_x(spec) else (I, H)


# -- shapes and errors ------------------------------------------------------------------------
def test_cell_forward_shapes():
    cell = compile_cell(known_cell("lstm"), I, H)
    assert isinstance(cell, CompiledCell)
    h, c = cell(torch.randn(B, I))
    assert h.shape == c.shape == (B, H)
    (h,) = compile_cell(known_cell("gru"), I, H)(torch.randn(B, I))
    assert h.shape == (B, H)


def test_rnn_forward_shapes():
    rnn = CellRNN(known_cell("lstm"), I, H, num_layers=2)
    out, (h, c) = rnn(torch.randn(7, B, I))
    assert out.shape == (7, B, H)
    assert h.shape == c.shape == (2, B, H)
    out, (h,) = CellRNN(known_cell("gru"), I, H, batch_first=True)(torch.randn(B, 7, I))
    assert out.shape == (B, 7, H) and h.shape == (1, B, H)


@pytest.mark.parametrize("shape", [(B, I + 1), (I,), (1, B, I)])
def test_cell_wrong_input_shape(shape):
    cell = compile_cell(known_cell("lstm"), I, H)
    with pytest.raises(ValueError) as err:
        cell(torch.randn(*shape))
    assert f"expected input of shape (B, {I})" in str(err.value)
    assert f"got {shape}" in str(err.value)


@pytest.mark.parametrize("batch_first, shape", [
    (False, (7, B, I + 1)), (False, (B, I)), (True, (B, 7, I + 1)), (True, (I,)), (True, (B, I))])
def test_rnn_wrong_input_shape(batch_first, shape):
    rnn = CellRNN(known_cell("lstm"), I, H, batch_first=batch_first)
    want = f"(B, T, {I})" if batch_first else f"(T, B, {I})"
    with pytest.raises(ValueError) as err:
        rnn(torch.randn(*shape))
    assert f"expected input of shape {want}" in str(err.value)
    assert f"got {shape}" in str(err.value)


def test_cell_wrong_state():
    cell = compile_cell(known_cell("lstm"), I, H)
    x, h = torch.randn(B, I), torch.zeros(B, H)
    with pytest.raises(ValueError, match=r"expected state 'c' of shape \(3, 4\), got \(3, 5\)"):
        cell(x, (h, torch.zeros(B, H + 1)))
    with pytest.raises(ValueError, match=r"expected a state of 2 tensors \('h', 'c'\), got 1"):
        cell(x, h)
    with pytest.raises(ValueError, match=r"expected state 'h' of shape \(3, 4\), got \(2, 4\)"):
        cell(x, (torch.zeros(2, H), h))


def test_rnn_wrong_state():
    rnn = CellRNN(known_cell("lstm"), I, H, num_layers=2)
    x = torch.randn(7, B, I)
    with pytest.raises(ValueError) as err:
        rnn(x, (torch.zeros(1, B, H), torch.zeros(1, B, H)))
    assert "expected a state of 2 tensors ('h', 'c') of shape (2, 3, 4)" in str(err.value)
    assert "got [(1, 3, 4), (1, 3, 4)]" in str(err.value)
    with pytest.raises(ValueError, match="expected a state of 2 tensors"):
        rnn(x, torch.zeros(2, B, H))


def test_bad_sizes_and_arguments():
    with pytest.raises(ValueError, match="sizes must be positive"):
        compile_cell(known_cell("gru"), 0, H)
    with pytest.raises(ValueError, match="num_layers must be >= 1, got 0"):
        CellRNN(known_cell("gru"), I, H, num_layers=0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.5"):
        CellRNN(known_cell("gru"), I, H, dropout=1.5)
    with pytest.raises(TypeError, match="expected a CellSpec, got dict"):
        compile_cell({"state": ["h"]}, I, H)


@pytest.mark.parametrize("name", ["mut1", "mut2"])
def test_elementwise_op_on_raw_x_needs_equal_sizes(name):
    with pytest.raises(CellError) as err:
        compile_cell(known_cell(name), I, H)
    assert "elementwise ops to x" in str(err.value)
    assert "input_size == hidden_size" in str(err.value)
    assert f"input_size={I}, hidden_size={H}" in str(err.value)
    with pytest.raises(CellError, match="input_size == hidden_size"):
        CellRNN(known_cell(name), I, H)
    compile_cell(known_cell(name), H, H)


def test_zero_state_default_equals_explicit_zeros():
    torch.manual_seed(0)
    cell = compile_cell(known_cell("lstm"), I, H)
    x = torch.randn(B, I)
    zeros = (torch.zeros(B, H), torch.zeros(B, H))
    for a, b in zip(cell(x), cell(x, zeros)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    rnn = CellRNN(known_cell("lstm"), I, H, num_layers=2)
    xs = torch.randn(6, B, I)
    out, state = rnn(xs)
    out0, state0 = rnn(xs, (torch.zeros(2, B, H), torch.zeros(2, B, H)))
    torch.testing.assert_close(out, out0, rtol=0, atol=0)
    for a, b in zip(state, state0):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_reset_parameters_reinitialises():
    cell = compile_cell(known_cell("lstm"), I, H)
    with torch.no_grad():
        for p in cell.parameters():
            p.fill_(7.0)
    cell.reset_parameters()
    bound = 1 / math.sqrt(H)
    for name, p in cell.named_parameters():
        if name.startswith("weight_"):
            assert p.abs().max() <= bound and p.std() > 0
    assert torch.all(cell.node_bias("f_lin") == 1.0) and torch.all(cell.node_bias("i_lin") == 0.0)
    rnn = CellRNN(known_cell("gru"), I, H, num_layers=2)
    before = [p.clone() for p in rnn.parameters()]
    rnn.reset_parameters()
    assert all(not torch.equal(a, b) for a, b in zip(before, rnn.parameters()) if a.abs().sum() > 0)


def test_bias_init_is_exact_in_float64():
    spec = CellSpec.from_dict({"state": ["h"], "nodes": {"a": lin("x", "h", bias_init=0.1),
                                                          "out": f("tanh", "a")}, "outputs": {"h": "out"}})
    cell = compile_cell(spec, I, H).double()
    cell.reset_parameters()
    assert torch.all(cell.node_bias("a") == 0.1)


def test_parameters_layout():
    cell = compile_cell(known_cell("lstm"), I, H)
    shapes = {name: tuple(p.shape) for name, p in cell.named_parameters()}
    assert shapes == {"weight_x": (4 * H, I), "weight_h": (4 * H, H), "bias": (4 * H,)}
    nas = compile_cell(known_cell("nas_cell"), I, H)
    assert nas.bias is None and nas.node_bias("s0") is None
    assert sum(p.numel() for p in nas.parameters()) == 8 * H * (I + H)


def test_term_weight_and_node_bias_are_views():
    rnn = CellRNN(known_cell("lstm"), I, H, num_layers=2)
    w = rnn.term_weight("f_lin", "x", layer=1)
    assert w.shape == (H, H)
    with torch.no_grad():
        w.fill_(3.0)
    assert torch.all(rnn.layers[1].weight_x[H:2 * H] == 3.0)
    assert torch.all(rnn.layers[0].weight_x[H:2 * H] != 3.0)
    b = rnn.node_bias("o_lin")
    assert b.shape == (H,) and b.data_ptr() == rnn.layers[0].bias[3 * H:].data_ptr()
    with pytest.raises(KeyError, match="'f_lin' does not read 'c'"):
        rnn.term_weight("f_lin", "c")


def test_extra_repr_mentions_sizes():
    cell = compile_cell(known_cell("gru"), I, H)
    text = repr(cell)
    assert f"input_size={I}" in text and f"hidden_size={H}" in text and "gru" in text
    assert known_cell("gru").canonical_hash() in text
    rnn = repr(CellRNN(known_cell("gru"), I, H, num_layers=2, batch_first=True))
    assert f"gru, {I}, {H}, num_layers=2" in rnn and "batch_first=True" in rnn


def test_dropout_only_in_training():
    torch.manual_seed(0)
    rnn = CellRNN(known_cell("lstm"), I, H, num_layers=2, dropout=0.5)
    xs = torch.randn(4, B, I)
    rnn.eval()
    a, b = rnn(xs)[0], rnn(xs)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    rnn.train()
    assert not torch.equal(rnn(xs)[0], a)


# -- every cell compiles and runs -------------------------------------------------------------
def forward_backward(spec, input_size, hidden_size, layers=2):
    torch.manual_seed(0)
    rnn = CellRNN(spec, input_size, hidden_size, num_layers=layers).double()
    xs = torch.randn(4, B, input_size, dtype=torch.float64, requires_grad=True)
    out, state = rnn(xs)
    assert out.shape == (4, B, hidden_size)
    assert len(state) == len(spec.state) and all(s.shape == (layers, B, hidden_size) for s in state)
    (out.sum() + sum(s.sum() for s in state)).backward()
    assert torch.isfinite(out).all() and all(torch.isfinite(s).all() for s in state)
    assert torch.isfinite(xs.grad).all()
    for p in rnn.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", KNOWN_CELLS)
def test_known_cells_run(name):
    spec = known_cell(name)
    forward_backward(spec, *sizes(spec))


RANDOM = random_cells(seed=11, count=50)


def test_random_cells_run():
    for spec in RANDOM:
        forward_backward(spec, *sizes(spec))


def test_random_cells_with_unequal_sizes_run():
    for spec in random_cells(seed=12, count=15, raw_x=False):
        forward_backward(spec, I, H, layers=1)


def one_step_equals_sequence(spec, input_size, hidden_size):
    torch.manual_seed(0)
    rnn = CellRNN(spec, input_size, hidden_size).double()
    cell = compile_cell(spec, input_size, hidden_size).double()
    cell.load_state_dict(rnn.layers[0].state_dict())
    x = torch.randn(B, input_size, dtype=torch.float64)
    state = tuple(torch.randn(B, hidden_size, dtype=torch.float64) for _ in spec.state)
    out, final = rnn(x.unsqueeze(0), tuple(s.unsqueeze(0) for s in state))
    step = cell(x, state)
    torch.testing.assert_close(out[0], step[0], rtol=0, atol=1e-12)
    for a, b in zip(final, step):
        torch.testing.assert_close(a[0], b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", KNOWN_CELLS)
def test_cell_step_equals_rnn_on_one_step(name):
    spec = known_cell(name)
    one_step_equals_sequence(spec, *sizes(spec))


def test_random_cell_step_equals_rnn_on_one_step():
    for spec in RANDOM[:20]:
        one_step_equals_sequence(spec, *sizes(spec))


# The ops written out independently of the templates in ops.py.
REFERENCE_OPS = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "blend": lambda z, a, b: z * a + (1 - z) * b, "mean": lambda *a: sum(a) / len(a),
    "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu, "identity": lambda a: a,
    "leaky_relu": lambda a, negative_slope: torch.where(a > 0, a, negative_slope * a),
}


def interpret(cell, x, state):
    """One step of `cell.spec`, node by node, with the cell's own weights: W_i in_i summed per term."""
    env = {"x": x, **dict(zip(cell.spec.state, state))}
    for n in cell.spec.nodes:
        if n.op == "linear":
            bias = cell.node_bias(n.name)
            env[n.name] = sum(linear(env[i], cell.term_weight(n.name, i)) for i in n.inputs) + (
                0.0 if bias is None else bias)
        else:
            env[n.name] = REFERENCE_OPS[n.op](*(env[i] for i in n.inputs), **dict(n.options))
    return tuple(env[o] for o in cell.spec.outputs)


def test_every_op_in_the_registry_is_covered():
    ops = {n.op for n in ALL_OPS.nodes} | set(REFERENCE_OPS)
    assert ops >= set(OPS)


CASES = [*random_cells(seed=21, count=25), *random_cells(seed=22, count=25, raw_x=False), ALL_OPS,
         *(known_cell(name) for name in KNOWN_CELLS)]


def test_cells_match_a_node_by_node_interpreter():
    # The compiler groups terms into shared matmuls and adds each bias once: check that against
    # the plain reading of the spec, over several steps and with random biases.
    torch.manual_seed(0)
    for spec in CASES:
        input_size, hidden_size = sizes(spec)
        cell = compile_cell(spec, input_size, hidden_size).double()
        with torch.no_grad():
            if cell.bias is not None:
                cell.bias.uniform_(-1, 1)
        xs = torch.randn(4, B, input_size, dtype=torch.float64)
        state = tuple(torch.randn(B, hidden_size, dtype=torch.float64) for _ in spec.state)
        out, final = cell.sequence(xs, state)
        largest = 0.0
        for t in range(len(xs)):
            largest = max(largest, *(s.abs().max().item() for s in state))
            tol = rounding_tolerance(largest)
            state = interpret(cell, xs[t], state)
            torch.testing.assert_close(out[t], state[0], rtol=tol, atol=tol, msg=str(spec))
        for a, b in zip(final, state):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=str(spec))


def rounding_tolerance(largest: float) -> float:
    """rtol and atol for one float64 step whose state vectors so far reached |value| <= `largest`.

    The grouped products and the interpreter round differently, and an op loses accuracy in
    proportion to its operands' size: blend(z, a, b) = z * a + (1 - z) * b with a ~ b keeps only
    about eps * |z| of relative accuracy. A cell whose values grow over the steps (a random cell
    with mul(n2, n2) reaches ~3e20 in 4 steps: step 3's inputs are ~7e6) so differs by ~2e-9
    relatively, a rounding difference and not a wrong result. Hence 10 eps times the largest state
    value, and never less than 1e-9: cells whose values stay below ~5e5 (all ordinary cells) are
    held to 1e-9 as before."""
    return max(1e-9, 10 * torch.finfo(torch.float64).eps * largest)


def test_renamed_reordered_cells_compute_the_same_function():
    # With weights copied node by node (the parameter layout follows node order, so it may
    # differ), a cell with renamed, reversed nodes computes the same outputs.
    for spec in RANDOM[:10]:
        rename = {n.name: f"r_{n.name}" for n in spec.nodes}
        renamed = CellSpec(spec.state, tuple(
            Node(rename[n.name], n.op, tuple(rename.get(i, i) for i in n.inputs), n.options)
            for n in reversed(spec.nodes)), tuple(rename.get(o, o) for o in spec.outputs))
        size = sizes(spec)
        a, b = compile_cell(spec, *size).double(), compile_cell(renamed, *size).double()
        with torch.no_grad():
            for n in spec.nodes:
                if n.op != "linear":
                    continue
                for src in n.inputs:
                    b.term_weight(rename[n.name], rename.get(src, src)).copy_(a.term_weight(n.name, src))
                if a.node_bias(n.name) is not None:
                    b.node_bias(rename[n.name]).copy_(a.node_bias(n.name))
        x = torch.randn(B, size[0], dtype=torch.float64)
        state = tuple(torch.randn(B, H, dtype=torch.float64) for _ in spec.state)
        for u, v in zip(a(x, state), b(x, state)):
            torch.testing.assert_close(u, v, rtol=0, atol=1e-12)


# -- a cell with three state vectors ----------------------------------------------------------
THREE = CellSpec.from_dict({"name": "three", "state": ["h", "c", "m"], "nodes": {
    "ml": lin("x", "m"), "m_new": f("sigmoid", "ml"),
    "al": lin("x", "h"), "a": f("tanh", "al"),
    "keep": f("mul", "m_new", "c"), "c_new": f("add", "keep", "a"),
    "ct": f("tanh", "c_new"), "h_new": f("mul", "ct", "m_new"),
}, "outputs": {"h": "h_new", "c": "c_new", "m": "m_new"}})


def test_three_state_vectors():
    torch.manual_seed(0)
    cell = compile_cell(THREE, I, H).double()
    x = torch.randn(B, I, dtype=torch.float64)
    h, c, m = (torch.randn(B, H, dtype=torch.float64) for _ in range(3))
    W, b = cell.term_weight, cell.node_bias
    m_new = torch.sigmoid(linear(x, W("ml", "x")) + linear(m, W("ml", "m")) + b("ml"))
    c_new = m_new * c + torch.tanh(linear(x, W("al", "x")) + linear(h, W("al", "h")) + b("al"))
    h_new = torch.tanh(c_new) * m_new
    for got, want in zip(cell(x, (h, c, m)), (h_new, c_new, m_new)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    forward_backward(THREE, I, H)


def test_state_passthrough_and_input_outputs():
    # c' = h (a state read straight through) and m' = x (the raw input) are valid outputs.
    spec = CellSpec.from_dict({"state": ["h", "c", "m"], "nodes": {"a": lin("x", "c"), "out": f("tanh", "a")},
                               "outputs": {"h": "out", "c": "h", "m": "x"}})
    cell = compile_cell(spec, H, H)
    x, h, c, m = (torch.randn(B, H) for _ in range(4))
    _, c_new, m_new = cell(x, (h, c, m))
    assert torch.equal(c_new, h) and torch.equal(m_new, x)
    with pytest.raises(CellError, match="input_size == hidden_size"):
        compile_cell(spec, I, H)


# -- the generated code -----------------------------------------------------------------------
def test_compiled_plans_are_cached():
    spec = known_cell("enas")
    assert compile_cell(spec, H, H).plan is compile_cell(spec, I, H).plan


# Identifiers the code generator may write: its own variable names, torch's API and keywords.
@pytest.mark.parametrize("fused", [True, False])
def test_empty_sequence(fused):
    rnn = CellRNN(known_cell("lstm"), 3, 4, num_layers=2, fused=fused)
    state = (torch.randn(2, 5, 4), torch.randn(2, 5, 4))
    out, final = rnn(torch.randn(0, 5, 3), state)
    assert out.shape == (0, 5, 4)
    assert all(torch.equal(a, b) for a, b in zip(final, state))


def test_torch_save_and_load_a_whole_model(tmp_path):
    rnn = CellRNN(known_cell("gru"), 5, 7, num_layers=2)
    x = torch.randn(4, 3, 5)
    rnn(x), rnn(x)  # CUDA graphs (on a GPU) and caches exist: they are rebuilt, not saved
    torch.save(rnn, tmp_path / "rnn.pt")
    loaded = torch.load(tmp_path / "rnn.pt", weights_only=False)
    torch.testing.assert_close(loaded(x)[0], rnn(x)[0])
    assert loaded.layers[0]._graphs.runners == {}
