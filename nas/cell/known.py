"""Reference cells as readable literals: the baselines of every search and the fixtures of the tests.

Each cell is written in the JSON layout of `CellSpec.from_dict` with two helpers: `lin(*operands)` is
a `linear` node (W_1 a_1 + ... + W_n a_n + b) and `f(op, *operands)` any other node. Equations and
sources are in each function's docstring; the tests check them against torch.nn.RNN/LSTM/GRU or
against direct transcriptions of the published equations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from nas.cell.spec import CellError, CellSpec

# Jozefowicz et al. (2015) found a forget-gate bias of 1.0 important for the LSTM; it is our
# default, settable with known_cell("lstm", forget_bias=...).
DEFAULT_FORGET_BIAS = 1.0


def lin(*operands: str, bias: bool = True, bias_init: float = 0.0) -> dict[str, Any]:
    return {"op": "linear", "in": list(operands), "bias": bias, "bias_init": bias_init}


def f(op: str, *operands: str) -> dict[str, Any]:
    return {"op": op, "in": list(operands)}


def rnn_tanh() -> dict[str, Any]:
    """Elman RNN: h' = tanh(W x + U h + b)."""
    return {"state": ["h"], "nodes": {"a": lin("x", "h"), "h_new": f("tanh", "a")},
            "outputs": {"h": "h_new"}}


def lstm(forget_bias: float = DEFAULT_FORGET_BIAS) -> dict[str, Any]:
    """LSTM (Hochreiter & Schmidhuber 1997, with forget gate; torch.nn.LSTM's equations):
    i = σ(W_i [x, h] + b_i), f = σ(W_f [x, h] + b_f), g = tanh(W_g [x, h] + b_g),
    o = σ(W_o [x, h] + b_o), c' = f * c + i * g, h' = o * tanh(c').
    b_f is initialised to `forget_bias` (default 1.0)."""
    return {"state": ["h", "c"], "nodes": {
        "i_lin": lin("x", "h"), "f_lin": lin("x", "h", bias_init=forget_bias),
        "g_lin": lin("x", "h"), "o_lin": lin("x", "h"),
        "i": f("sigmoid", "i_lin"), "f": f("sigmoid", "f_lin"), "g": f("tanh", "g_lin"),
        "o": f("sigmoid", "o_lin"),
        "keep": f("mul", "f", "c"), "write": f("mul", "i", "g"), "c_new": f("add", "keep", "write"),
        "c_act": f("tanh", "c_new"), "h_new": f("mul", "o", "c_act"),
    }, "outputs": {"h": "h_new", "c": "c_new"}}


def gru() -> dict[str, Any]:
    """GRU in the PyTorch / cuDNN form (r applied after W_hn h, Cho et al. 2014 variant):
    r = σ(W_r [x, h] + b_r), z = σ(W_z [x, h] + b_z), n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),
    h' = (1 - z) * n + z * h = blend(z, h, n)."""
    return {"state": ["h"], "nodes": {
        "r_lin": lin("x", "h"), "z_lin": lin("x", "h"), "r": f("sigmoid", "r_lin"),
        "z": f("sigmoid", "z_lin"), "xn": lin("x"), "hn": lin("h"), "rhn": f("mul", "r", "hn"),
        "n_pre": f("add", "xn", "rhn"), "n": f("tanh", "n_pre"), "h_new": f("blend", "z", "h", "n"),
    }, "outputs": {"h": "h_new"}}


def mut1() -> dict[str, Any]:
    """MUT1 (Jozefowicz et al. 2015): z = σ(W_xz x + b_z), r = σ(W_xr x + W_hr h + b_r),
    h' = tanh(W_hh (r * h) + tanh(x) + b_h) * z + h * (1 - z). Needs input size = hidden size."""
    return {"state": ["h"], "nodes": {
        "z": f("sigmoid", "z_lin"), "z_lin": lin("x"), "r_lin": lin("x", "h"), "r": f("sigmoid", "r_lin"),
        "rh": f("mul", "r", "h"), "u": lin("rh"), "tx": f("tanh", "x"), "pre": f("add", "u", "tx"),
        "cand": f("tanh", "pre"), "h_new": f("blend", "z", "cand", "h"),
    }, "outputs": {"h": "h_new"}}


def mut2() -> dict[str, Any]:
    """MUT2 (Jozefowicz et al. 2015): z = σ(W_xz x + W_hz h + b_z), r = σ(x + W_hr h + b_r),
    h' = tanh(W_hh (r * h) + W_xh x + b_h) * z + h * (1 - z). Needs input size = hidden size."""
    return {"state": ["h"], "nodes": {
        "z_lin": lin("x", "h"), "z": f("sigmoid", "z_lin"), "r_lin": lin("h"), "r_pre": f("add", "x", "r_lin"),
        "r": f("sigmoid", "r_pre"), "rh": f("mul", "r", "h"), "pre": lin("rh", "x"),
        "cand": f("tanh", "pre"), "h_new": f("blend", "z", "cand", "h"),
    }, "outputs": {"h": "h_new"}}


def mut3() -> dict[str, Any]:
    """MUT3 (Jozefowicz et al. 2015): z = σ(W_xz x + W_hz tanh(h) + b_z), r = σ(W_xr x + W_hr h + b_r),
    h' = tanh(W_hh (r * h) + W_xh x + b_h) * z + h * (1 - z)."""
    return {"state": ["h"], "nodes": {
        "th": f("tanh", "h"), "z_lin": lin("x", "th"), "z": f("sigmoid", "z_lin"), "r_lin": lin("x", "h"),
        "r": f("sigmoid", "r_lin"), "rh": f("mul", "r", "h"), "pre": lin("rh", "x"),
        "cand": f("tanh", "pre"), "h_new": f("blend", "z", "cand", "h"),
    }, "outputs": {"h": "h_new"}}


def nas_cell() -> dict[str, Any]:
    """The NAS cell of Zoph & Le (2017), as TensorFlow's NASCell computes it (no biases, no
    projection). With p_k = W_k x and q_k = U_k h for k = 0..7:
    l1 = [σ(p0+q0), relu(p1+q1), σ(p2+q2), relu(p3*q3), tanh(p4+q4), σ(p5+q5), tanh(p6+q6), σ(p7+q7)]
    a = tanh(l1_0*l1_1), b = tanh(l1_2+l1_3), d = tanh(l1_4*l1_5), e = σ(l1_6+l1_7),
    a' = tanh(a + c), c' = a' * b, h' = tanh(c' * tanh(d + e))."""
    acts = ["sigmoid", "relu", "sigmoid", "relu", "tanh", "sigmoid", "tanh", "sigmoid"]
    nodes: dict[str, Any] = {}
    for k, act in enumerate(acts):
        if k == 3:  # the one multiplicative combination of input and state in the first layer
            nodes["p3"], nodes["q3"] = lin("x", bias=False), lin("h", bias=False)
            nodes["m3"] = f("mul", "p3", "q3")
            nodes["l1_3"] = f(act, "m3")
        else:
            nodes[f"s{k}"] = lin("x", "h", bias=False)
            nodes[f"l1_{k}"] = f(act, f"s{k}")
    nodes.update({
        "m01": f("mul", "l1_0", "l1_1"), "a": f("tanh", "m01"),
        "s23": f("add", "l1_2", "l1_3"), "b": f("tanh", "s23"),
        "m45": f("mul", "l1_4", "l1_5"), "d": f("tanh", "m45"),
        "s67": f("add", "l1_6", "l1_7"), "e": f("sigmoid", "s67"),
        "ac": f("add", "a", "c"), "a_inj": f("tanh", "ac"),
        "c_new": f("mul", "a_inj", "b"),
        "de": f("add", "d", "e"), "l3_1": f("tanh", "de"),
        "m": f("mul", "c_new", "l3_1"), "h_new": f("tanh", "m"),
    })
    return {"state": ["h", "c"], "nodes": nodes, "outputs": {"h": "h_new", "c": "c_new"}}


def highway(genotype: list[tuple[str, int]], concat: list[int]) -> dict[str, Any]:
    """A cell of the ENAS / DARTS recurrent search space (Pham et al. 2018; Liu et al. 2019):
    s_0 = h + σ(c_0) * (tanh(h_0) - h) with [c_0, h_0] = W_0 [x, h]; node i (1-based) picks a
    predecessor s_p and an activation f_i: s_i = s_p + σ(c_i) * (f_i(h_i) - s_p) with
    [c_i, h_i] = W_i s_p; h' = mean of s_j for j in `concat`. No biases, as published."""
    nodes: dict[str, Any] = {
        "c0": lin("x", "h", bias=False), "g0": f("sigmoid", "c0"),
        "h0": lin("x", "h", bias=False), "a0": f("tanh", "h0"), "s0": f("blend", "g0", "a0", "h"),
    }
    for i, (act, pred) in enumerate(genotype, start=1):
        p = f"s{pred}"
        nodes.update({f"c{i}": lin(p, bias=False), f"g{i}": f("sigmoid", f"c{i}"),
                      f"h{i}": lin(p, bias=False), f"a{i}": f(act, f"h{i}"),
                      f"s{i}": f("blend", f"g{i}", f"a{i}", p)})
    nodes["h_new"] = f("mean", *[f"s{j}" for j in concat])
    return {"state": ["h"], "nodes": nodes, "outputs": {"h": "h_new"}}


# Published genotypes (activation, predecessor index), with the nodes averaged into the output.
ENAS_GENOTYPE = ([("tanh", 0), ("tanh", 1), ("relu", 1), ("tanh", 3), ("tanh", 3), ("relu", 3),
                  ("relu", 4), ("relu", 7), ("relu", 8), ("relu", 8), ("relu", 8)],
                 [2, 5, 6, 9, 10, 11])  # Pham et al. 2018, as listed in DARTS' genotypes
DARTS_V2_GENOTYPE = ([("sigmoid", 0), ("relu", 1), ("relu", 1), ("identity", 1), ("tanh", 2),
                      ("sigmoid", 5), ("tanh", 3), ("relu", 5)],
                     list(range(1, 9)))  # Liu et al. 2019, DARTS (second order)


def enas() -> dict[str, Any]:
    """The ENAS recurrent cell (Pham et al. 2018): `highway` with ENAS_GENOTYPE."""
    return highway(*ENAS_GENOTYPE)


def darts_v2() -> dict[str, Any]:
    """The DARTS recurrent cell (Liu et al. 2019, second order): `highway` with DARTS_V2_GENOTYPE."""
    return highway(*DARTS_V2_GENOTYPE)


_BUILDERS: dict[str, Callable[..., dict[str, Any]]] = {
    "rnn_tanh": rnn_tanh, "lstm": lstm, "gru": gru, "mut1": mut1, "mut2": mut2, "mut3": mut3,
    "nas_cell": nas_cell, "enas": enas, "darts_v2": darts_v2,
}
KNOWN_CELLS: tuple[str, ...] = tuple(_BUILDERS)


def load_cell(ref: str) -> CellSpec:
    """A reference cell by name (lstm, gru, ...) or a cell file by path (cell JSON or NAS-Bench-NLP
    recipe); a file's errors name it. What every `cell=` setting and `seed_cells` entry means."""
    from pathlib import Path

    if ref in KNOWN_CELLS:
        return known_cell(ref)
    path = Path(ref)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"cell file {ref!r} does not exist")
        return CellSpec.from_file(path)  # every error of the file names it
    raise ValueError(f"unknown cell {ref!r}: not a reference cell ({', '.join(KNOWN_CELLS)}) "
                     "nor a cell JSON file")


def known_cell(name: str, **options: Any) -> CellSpec:
    """The reference cell called `name` (one of KNOWN_CELLS); options go to its builder
    (e.g. known_cell("lstm", forget_bias=0.0))."""
    builder = _BUILDERS.get(name)
    if builder is None:
        raise CellError(f"unknown reference cell {name!r} (known: {', '.join(KNOWN_CELLS)})")
    try:
        data = builder(**options)
    except TypeError:
        raise CellError(f"reference cell {name!r}: unsupported options {sorted(options)}") from None
    return CellSpec.from_dict({"name": name, **data})


@functools.cache
def _reference_hashes() -> dict[str, str]:
    """Canonical hash -> reference cell name, for the reference cells with default options."""
    return {known_cell(name).canonical_hash(): name for name in KNOWN_CELLS}


def identify(spec: CellSpec) -> str | None:
    """The name of the reference cell (default options) that computes what `spec` computes (equal
    canonical hashes), or None: identify(sampled) == "mut3" says trial 5 re-found MUT3."""
    return _reference_hashes().get(spec.canonical_hash())
