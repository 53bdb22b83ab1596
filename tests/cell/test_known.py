"""The reference cells against trusted references (STYLE.md lesson 6).

rnn_tanh, lstm and gru against torch.nn.RNN / LSTM / GRU with copied weights; the others against
direct transcriptions of their published equations, written here independently of known.py and
reading their weights from the compiled cell. All in float64.
"""

import copy

import pytest
import torch
from torch import nn
from torch.nn.functional import linear

from nas.cell import known_cell
from nas.cell.known import DARTS_V2_GENOTYPE, ENAS_GENOTYPE
from nas.compile import CellRNN, compile_cell

ATOL = 1e-5
T, B, I, H = 5, 3, 4, 6


def close(a, b):
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def grads_of(module):
    """A copy of `module` whose parameters hold the gradients of `module`'s (so term_weight /
    node_bias on the copy give gradient views)."""
    out = copy.deepcopy(module)
    with torch.no_grad():
        for p, g in zip(out.parameters(), module.parameters()):
            p.copy_(g.grad)
    return out


# -- against torch.nn -------------------------------------------------------------------------
# Per torch module: its class, our cell, and for each torch gate (row block of weight_ih/hh, in
# torch's order) the linear node that computes it. torch adds two biases (b_ih + b_hh) where we
# have one per linear node, except the GRU candidate, split into xn (W_in x + b_in) and
# hn (W_hn h + b_hn) because r multiplies only the second.
TORCH_CELLS = {
    "rnn_tanh": (nn.RNN, ["a"], None),
    "lstm": (nn.LSTM, ["i_lin", "f_lin", "g_lin", "o_lin"], None),
    "gru": (nn.GRU, ["r_lin", "z_lin", "n"], ("xn", "hn")),
}


def weight_map(name):
    """[(our node, our source, torch param prefix, gate index)] and {our node: [(bias prefix, gate)]}."""
    _, gates, split = TORCH_CELLS[name]
    weights, biases = [], {}
    for k, node in enumerate(gates):
        if split and node == "n":
            xn, hn = split
            weights += [(xn, "x", "weight_ih", k), (hn, "h", "weight_hh", k)]
            biases[xn], biases[hn] = [("bias_ih", k)], [("bias_hh", k)]
        else:
            weights += [(node, "x", "weight_ih", k), (node, "h", "weight_hh", k)]
            biases[node] = [("bias_ih", k), ("bias_hh", k)]
    return weights, biases


def torch_param(ref, prefix, layer, gate, gates):
    return getattr(ref, f"{prefix}_l{layer}").chunk(gates, 0)[gate]


def copy_from_torch(ours, ref, name):
    weights, biases = weight_map(name)
    gates = len(TORCH_CELLS[name][1])
    with torch.no_grad():
        for layer in range(ref.num_layers):
            for node, src, prefix, k in weights:
                ours.term_weight(node, src, layer).copy_(torch_param(ref, prefix, layer, k, gates))
            for node, parts in biases.items():
                ours.node_bias(node, layer).copy_(sum(torch_param(ref, p, layer, k, gates) for p, k in parts))


def pair(name, num_layers=1, batch_first=False):
    torch.manual_seed(0)
    cls = TORCH_CELLS[name][0]
    ref = cls(I, H, num_layers=num_layers, batch_first=batch_first).double()
    ours = CellRNN(known_cell(name), I, H, num_layers=num_layers, batch_first=batch_first).double()
    copy_from_torch(ours, ref, name)
    return ours, ref


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("name, num_layers, batch_first", [
    ("rnn_tanh", 1, False), ("rnn_tanh", 2, True), ("lstm", 1, False), ("lstm", 2, False),
    ("lstm", 2, True), ("gru", 1, False), ("gru", 2, True),
])
def test_matches_torch(name, num_layers, batch_first, device):
    ours, ref = pair(name, num_layers, batch_first)
    ours, ref = ours.to(device), ref.to(device)
    # On a GPU the third call replays the CUDA graphs captured by the second (nas.compile.backends.cudagraphs).
    for _ in range(3 if device == "cuda" else 1):
        ours.zero_grad(set_to_none=True)
        ref.zero_grad(set_to_none=True)
        check_against_torch(ours, ref, name, num_layers, batch_first, device)


def check_against_torch(ours, ref, name, num_layers, batch_first, device):
    shape = (B, T, I) if batch_first else (T, B, I)
    x = torch.randn(*shape, dtype=torch.float64, device=device)
    state0 = tuple(torch.randn(num_layers, B, H, dtype=torch.float64, device=device)
                   for _ in ours.spec.state)
    ref_state0 = state0 if len(state0) > 1 else state0[0]

    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, state = ours(xa, state0)
    ref_out, ref_state = ref(xb, ref_state0)
    ref_state = as_tuple(ref_state)
    close(out, ref_out)
    assert len(state) == len(ref_state)
    for s, r in zip(state, ref_state):
        close(s, r)

    # One loss that reads every output, so every gradient path is exercised.
    weights = [torch.randn_like(out)] + [torch.randn_like(s) for s in state]
    loss = sum((w * v).sum() for w, v in zip(weights, (out, *state)))
    ref_loss = sum((w * v).sum() for w, v in zip(weights, (ref_out, *ref_state)))
    loss.backward()
    ref_loss.backward()
    close(xa.grad, xb.grad)

    grads, ref_grads = grads_of(ours), grads_of(ref)
    w_map, b_map = weight_map(name)
    gates = len(TORCH_CELLS[name][1])
    for layer in range(num_layers):
        for node, src, prefix, k in w_map:
            close(grads.term_weight(node, src, layer), torch_param(ref_grads, prefix, layer, k, gates))
        for node, parts in b_map.items():
            for prefix, k in parts:  # d loss / d b_ih = d loss / d b_hh = d loss / d (our bias)
                close(grads.node_bias(node, layer), torch_param(ref_grads, prefix, layer, k, gates))


def test_zero_state_matches_torch():
    ours, ref = pair("lstm")
    x = torch.randn(T, B, I, dtype=torch.float64)
    close(ours(x)[0], ref(x)[0])


def test_lstm_forget_bias_init():
    default = compile_cell(known_cell("lstm"), I, H)
    zero = compile_cell(known_cell("lstm", forget_bias=0.0), I, H)
    with torch.no_grad():
        default.bias.fill_(5.0)
        zero.bias.fill_(5.0)
    default.reset_parameters()
    zero.reset_parameters()
    assert torch.all(default.node_bias("f_lin") == 1.0)
    assert torch.all(zero.node_bias("f_lin") == 0.0)
    for gate in ("i_lin", "g_lin", "o_lin"):
        assert torch.all(default.node_bias(gate) == 0.0)


# -- against the published equations ----------------------------------------------------------
class Weights:
    """W(node, source) and b(node) of a compiled cell, as used by the reference equations."""

    def __init__(self, cell):
        self.cell = cell

    def W(self, node, source):
        return self.cell.term_weight(node, source)

    def b(self, node):
        bias = self.cell.node_bias(node)
        return 0.0 if bias is None else bias


def mut1_step(p, x, h):
    """Jozefowicz et al. 2015, MUT1:
    z = σ(W_xz x + b_z); r = σ(W_xr x + W_hr h + b_r);
    h' = tanh(W_hh (r ⊙ h) + tanh(x) + b_h) ⊙ z + h ⊙ (1 - z)."""
    z = torch.sigmoid(linear(x, p.W("z_lin", "x")) + p.b("z_lin"))
    r = torch.sigmoid(linear(x, p.W("r_lin", "x")) + linear(h, p.W("r_lin", "h")) + p.b("r_lin"))
    cand = torch.tanh(linear(r * h, p.W("u", "rh")) + torch.tanh(x) + p.b("u"))
    return (cand * z + h * (1 - z),)


def mut2_step(p, x, h):
    """MUT2: z = σ(W_xz x + W_hz h + b_z); r = σ(x + W_hr h + b_r);
    h' = tanh(W_hh (r ⊙ h) + W_xh x + b_h) ⊙ z + h ⊙ (1 - z)."""
    z = torch.sigmoid(linear(x, p.W("z_lin", "x")) + linear(h, p.W("z_lin", "h")) + p.b("z_lin"))
    r = torch.sigmoid(x + linear(h, p.W("r_lin", "h")) + p.b("r_lin"))
    cand = torch.tanh(linear(r * h, p.W("pre", "rh")) + linear(x, p.W("pre", "x")) + p.b("pre"))
    return (cand * z + h * (1 - z),)


def mut3_step(p, x, h):
    """MUT3: z = σ(W_xz x + W_hz tanh(h) + b_z); r = σ(W_xr x + W_hr h + b_r);
    h' = tanh(W_hh (r ⊙ h) + W_xh x + b_h) ⊙ z + h ⊙ (1 - z)."""
    z = torch.sigmoid(linear(x, p.W("z_lin", "x")) + linear(torch.tanh(h), p.W("z_lin", "th"))
                      + p.b("z_lin"))
    r = torch.sigmoid(linear(x, p.W("r_lin", "x")) + linear(h, p.W("r_lin", "h")) + p.b("r_lin"))
    cand = torch.tanh(linear(r * h, p.W("pre", "rh")) + linear(x, p.W("pre", "x")) + p.b("pre"))
    return (cand * z + h * (1 - z),)


def nas_cell_step(p, x, h, c):
    """TensorFlow's NASCell (Zoph & Le 2017), use_biases=False, no projection: the input and the
    hidden state each go through one (8H)-wide matrix, split into 8."""
    # Our linear node per split: s_k reads [x, h], except split 3 (p3 reads x, q3 reads h).
    kernel = torch.cat([p.W("p3" if k == 3 else f"s{k}", "x") for k in range(8)])
    recurrent_kernel = torch.cat([p.W("q3" if k == 3 else f"s{k}", "h") for k in range(8)])
    i = linear(x, kernel).split(H, 1)
    m = linear(h, recurrent_kernel).split(H, 1)
    layer1_0 = torch.sigmoid(i[0] + m[0])
    layer1_1 = torch.relu(i[1] + m[1])
    layer1_2 = torch.sigmoid(i[2] + m[2])
    layer1_3 = torch.relu(i[3] * m[3])
    layer1_4 = torch.tanh(i[4] + m[4])
    layer1_5 = torch.sigmoid(i[5] + m[5])
    layer1_6 = torch.tanh(i[6] + m[6])
    layer1_7 = torch.sigmoid(i[7] + m[7])
    l2_0 = torch.tanh(layer1_0 * layer1_1)
    l2_1 = torch.tanh(layer1_2 + layer1_3)
    l2_2 = torch.tanh(layer1_4 * layer1_5)
    l2_3 = torch.sigmoid(layer1_6 + layer1_7)
    l2_0 = torch.tanh(l2_0 + c)  # inject the cell state
    new_c = l2_0 * l2_1
    l3_1 = torch.tanh(l2_2 + l2_3)
    new_h = torch.tanh(new_c * l3_1)
    return new_h, new_c


ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda v: v}
# The published genotypes (DARTS' genotypes.py): (activation, predecessor) per node, then concat.
ENAS = ([("tanh", 0), ("tanh", 1), ("relu", 1), ("tanh", 3), ("tanh", 3), ("relu", 3), ("relu", 4),
         ("relu", 7), ("relu", 8), ("relu", 8), ("relu", 8)], [2, 5, 6, 9, 10, 11])
DARTS_V2 = ([("sigmoid", 0), ("relu", 1), ("relu", 1), ("identity", 1), ("tanh", 2), ("sigmoid", 5),
             ("tanh", 3), ("relu", 5)], list(range(1, 9)))


def highway_step(genotype, p, x, h):
    """The ENAS / DARTS recurrent cell (DARTS' model.py, evaluation mode, no masks):
    [c_0, h_0] = W_0 [x, h]; s_0 = h + σ(c_0) (tanh(h_0) - h);
    [c_i, h_i] = W_i s_p;    s_i = s_p + σ(c_i) (f_i(h_i) - s_p);   h' = mean of s_j, j in concat.
    W_0 / W_i are read as one matrix each: our c_i and h_i rows, stacked."""
    steps, concat = genotype
    W0 = torch.cat([torch.cat([p.W(n, "x"), p.W(n, "h")], 1) for n in ("c0", "h0")])
    c0, h0 = linear(torch.cat([x, h], 1), W0).split(H, 1)
    states = [h + torch.sigmoid(c0) * (torch.tanh(h0) - h)]
    for i, (act, pred) in enumerate(steps, start=1):
        s_prev = states[pred]
        Wi = torch.cat([p.W(f"c{i}", f"s{pred}"), p.W(f"h{i}", f"s{pred}")])
        c, hh = linear(s_prev, Wi).split(H, 1)
        states.append(s_prev + torch.sigmoid(c) * (ACTIVATIONS[act](hh) - s_prev))
    return (torch.stack([states[i] for i in concat], -1).mean(-1),)


PUBLISHED = {
    "mut1": mut1_step, "mut2": mut2_step, "mut3": mut3_step, "nas_cell": nas_cell_step,
    "enas": lambda p, x, h: highway_step(ENAS, p, x, h),
    "darts_v2": lambda p, x, h: highway_step(DARTS_V2, p, x, h),
}


def test_known_genotypes_are_the_published_ones():
    assert (list(ENAS_GENOTYPE[0]), list(ENAS_GENOTYPE[1])) == ENAS
    assert (list(DARTS_V2_GENOTYPE[0]), list(DARTS_V2_GENOTYPE[1])) == DARTS_V2


def run_reference(step, cell, xs, state):
    p, outs = Weights(cell), []
    for x in xs:
        state = step(p, x, *state)
        outs.append(state[0])
    return torch.stack(outs), state


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_matches_published_equations(name):
    torch.manual_seed(1)
    size = H  # MUT1 / MUT2 apply elementwise ops to x, so I = H for all
    cell = compile_cell(known_cell(name), size, H).double()
    with torch.no_grad():  # non-zero biases, so that a misplaced bias shows
        if cell.bias is not None:
            cell.bias.uniform_(-0.5, 0.5)
    xs = torch.randn(T, B, size, dtype=torch.float64)
    state0 = tuple(torch.randn(B, H, dtype=torch.float64) for _ in cell.spec.state)
    xa, xb = xs.clone().requires_grad_(), xs.clone().requires_grad_()

    out, state = cell.sequence(xa, state0)
    ref_out, ref_state = run_reference(PUBLISHED[name], cell, xb, state0)
    close(out, ref_out)
    for s, r in zip(state, ref_state):
        close(s, r)

    # Gradients w.r.t. the input and every parameter (the reference reads views of the same ones).
    weight = torch.randn_like(out)
    params = list(cell.parameters())
    ours = torch.autograd.grad((weight * out).sum(), [xa, *params])
    theirs = torch.autograd.grad((weight * ref_out).sum(), [xb, *params], allow_unused=True)
    for g, r in zip(ours, theirs):
        close(g, torch.zeros_like(g) if r is None else r)


def test_compiled_step_matches_published_mut1_step():
    cell = compile_cell(known_cell("mut1"), H, H).double()
    x, h = torch.randn(B, H, dtype=torch.float64), torch.randn(B, H, dtype=torch.float64)
    close(cell(x, (h,))[0], mut1_step(Weights(cell), x, h)[0])
