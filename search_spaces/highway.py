"""highway: the ENAS / DARTS recurrent search space (Pham et al. 2018; Liu et al. 2019).

A chain of highway nodes over one state vector h (equations in `nas.cell.known.highway`):
s_0 = h + σ(c_0) * (tanh(h_0) - h) with [c_0, h_0] = W_0 [x, h]; node i = 1..N picks a
predecessor s_p (p < i) and an activation f_i: s_i = s_p + σ(c_i) * (f_i(h_i) - s_p) with
[c_i, h_i] = W_i s_p; h' = the mean of either all of s_1..s_N (DARTS) or of the loose ends, the
nodes no other node picks as predecessor (ENAS). No biases, as published. Every such cell is valid.

Options (keyword arguments of `sample`, e.g. from conf/search_space/highway.yaml):
    min_nodes: int = 8, max_nodes: int = 12   range of N; DARTS has 8 nodes, ENAS 11. Fix N with
                                              min_nodes = max_nodes (e.g. 8 for the DARTS space).

Parameters (define-by-run; each name has one choice set for given options):
    n_nodes        min_nodes .. max_nodes
    node{i}.pred   0 .. i-1 (0 is s_0), categorical: predecessor indices are labels, not magnitudes
    node{i}.act    tanh, relu, sigmoid, identity
    concat         "all" (DARTS) or "loose_ends" (ENAS)
"""

from __future__ import annotations

from typing import Any

from optuna.trial import BaseTrial

from nas.cell import CellSpec
from nas.cell.known import DARTS_V2_GENOTYPE, ENAS_GENOTYPE, highway

NAME = "highway"
ACTIVATIONS = ("tanh", "relu", "sigmoid", "identity")
CONCATS = ("all", "loose_ends")
Genotype = list[tuple[str, int]]


def sample(trial: BaseTrial, *, min_nodes: int = 8, max_nodes: int = 12) -> CellSpec:
    """A cell from the trial's decisions (see the module docstring for the parameters)."""
    check_options(min_nodes, max_nodes)
    n_nodes = trial.suggest_int("n_nodes", min_nodes, max_nodes)
    genotype: Genotype = []
    for i in range(1, n_nodes + 1):
        pred = trial.suggest_categorical(f"node{i}.pred", list(range(i)))
        act = trial.suggest_categorical(f"node{i}.act", ACTIVATIONS)
        genotype.append((act, pred))
    concat = trial.suggest_categorical("concat", CONCATS)
    nodes = list(range(1, n_nodes + 1)) if concat == "all" else loose_ends(genotype)
    return CellSpec.from_dict({"name": NAME, **highway(genotype, nodes)})


def loose_ends(genotype: Genotype) -> list[int]:
    """The nodes 1..N that no node picks as its predecessor (ENAS averages these)."""
    read = {pred for _, pred in genotype}
    return [i for i in range(1, len(genotype) + 1) if i not in read]


def check_options(min_nodes: int, max_nodes: int) -> None:
    """ValueError (never CellError: a bad option is not a bad cell) unless 1 <= min <= max."""
    if not (isinstance(min_nodes, int) and isinstance(max_nodes, int) and 1 <= min_nodes <= max_nodes):
        raise ValueError(f"highway: expected integers 1 <= min_nodes <= max_nodes, got "
                         f"min_nodes={min_nodes!r}, max_nodes={max_nodes!r}")


def params_of(genotype: Genotype, concat: list[int], *, min_nodes: int = 8,
              max_nodes: int = 12) -> dict[str, Any] | None:
    """The parameters with which `sample` builds `highway(genotype, concat)`, or None when the
    space cannot express it (N out of range, or `concat` neither all nodes nor the loose ends)."""
    check_options(min_nodes, max_nodes)
    n = len(genotype)
    if not min_nodes <= n <= max_nodes or any(act not in ACTIVATIONS for act, _ in genotype):
        return None
    if list(concat) == list(range(1, n + 1)):
        how = "all"
    elif list(concat) == loose_ends(genotype):
        how = "loose_ends"
    else:
        return None
    params: dict[str, Any] = {"n_nodes": n}
    for i, (act, pred) in enumerate(genotype, start=1):
        params.update({f"node{i}.pred": pred, f"node{i}.act": act})
    params["concat"] = how
    return params


def known_params(*, min_nodes: int = 8, max_nodes: int = 12) -> dict[str, dict[str, Any]]:
    """Parameters of the published cells (enas, darts_v2) the space can express with these options."""
    found = {"enas": params_of(*ENAS_GENOTYPE, min_nodes=min_nodes, max_nodes=max_nodes),
             "darts_v2": params_of(*DARTS_V2_GENOTYPE, min_nodes=min_nodes, max_nodes=max_nodes)}
    return {name: params for name, params in found.items() if params is not None}
